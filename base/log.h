// LogSink: where Switchboard's components report what they do, with no logging dependency.
// A record has a level, the component, a message and key/value fields (a server URL, a peer, a
// count); the default sink writes warnings and errors to stderr; applications pass their own
// (switchboard-server's forwards to spdlog).
#pragma once

#include <concepts>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace switchboard {

enum class LogLevel { kDebug, kInfo, kWarning, kError };
std::string_view logLevelName(LogLevel level);  // "debug", "info", "warning", "error"

struct LogField {
  std::string_view key;
  std::string value;
};

// Valid only during the sink's call: copy what is kept.
struct LogRecord {
  LogLevel level;
  std::string_view component;
  std::string_view message;
  std::span<const LogField> fields;
};

// Called from any thread; the function must be thread-safe and must not call back into the
// component that logs. Made from a callable taking a LogRecord, or from one taking (level,
// component, message), which then does not see the fields. An empty sink drops everything.
class LogSink {
 public:
  LogSink() = default;
  template <typename F>
    requires std::invocable<F&, const LogRecord&>
  LogSink(F f) : sink_(std::move(f)) {}  // NOLINT: implicit by design
  template <typename F>
    requires std::invocable<F&, LogLevel, std::string_view, std::string_view>
  LogSink(F f)  // NOLINT: implicit by design
      : sink_([f = std::move(f)](const LogRecord& r) mutable { f(r.level, r.component, r.message); }) {}

  void operator()(LogLevel level, std::string_view component, std::string_view message,
                  std::initializer_list<LogField> fields = {}) const {
    if (sink_) sink_(LogRecord{level, component, message, std::span<const LogField>(fields)});
  }
  explicit operator bool() const { return static_cast<bool>(sink_); }

 private:
  std::function<void(const LogRecord&)> sink_;
};

// "message (key=value, key=value)", or the message alone without fields.
std::string formatLogRecord(const LogRecord& record);

// Writes kWarning and above to stderr as "switchboard[component] level: message (k=v, ...)".
LogSink stderrLogSink();

// For events counted on every occurrence but logged with back-off: true for the 1st, 2nd, 4th,
// 8th... occurrence (`count` starts at 1), so a flood of bad input cannot flood the log.
inline bool isLoggedOccurrence(uint64_t count) { return count != 0 && (count & (count - 1)) == 0; }

}  // namespace switchboard
