// LogSink: where Switchboard's components report what they do, with no logging dependency.
// The default sink writes warnings and errors to stderr; applications pass their own.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

namespace switchboard {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Called from any thread; must be thread-safe and must not call back into the component.
using LogSink = std::function<void(LogLevel level, std::string_view component,
                                   std::string_view message)>;

// Writes kWarning and above to stderr as "switchboard[component] level: message".
LogSink stderrLogSink();

// For events counted on every occurrence but logged with back-off: true for the 1st, 2nd, 4th,
// 8th... occurrence (`count` starts at 1), so a flood of bad input cannot flood the log.
inline bool isLoggedOccurrence(uint64_t count) { return count != 0 && (count & (count - 1)) == 0; }

}  // namespace switchboard
