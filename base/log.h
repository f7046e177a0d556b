// LogSink: where Switchboard's components report what they do, with no logging dependency.
// The default sink writes warnings and errors to stderr; applications pass their own.
#pragma once

#include <functional>
#include <string_view>

namespace switchboard {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Called from any thread; must be thread-safe and must not call back into the component.
using LogSink = std::function<void(LogLevel level, std::string_view component,
                                   std::string_view message)>;

// Writes kWarning and above to stderr as "switchboard[component] level: message".
LogSink stderrLogSink();

}  // namespace switchboard
