// The default LogSink: warnings and errors to stderr, one line each.
// A mutex keeps lines from different threads whole.
#include "base/log.h"

#include <cstdio>
#include <mutex>
#include <string>

namespace switchboard {

LogSink stderrLogSink() {
  return [](LogLevel level, std::string_view component, std::string_view message) {
    if (level < LogLevel::kWarning) return;
    static std::mutex mutex;
    const std::string line = "switchboard[" + std::string(component) + "] " +
                             (level == LogLevel::kWarning ? "warning" : "error") + ": " +
                             std::string(message) + "\n";
    std::lock_guard<std::mutex> lock(mutex);
    std::fputs(line.c_str(), stderr);
  };
}

}  // namespace switchboard
