// The default LogSink: warnings and errors to stderr, one line each.
// A mutex keeps lines from different threads whole.
#include "base/log.h"

#include <cstdio>
#include <mutex>

namespace switchboard {

std::string_view logLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "unknown";
}

std::string formatLogRecord(const LogRecord& record) {
  std::string text(record.message);
  for (size_t i = 0; i < record.fields.size(); ++i) {
    text += i == 0 ? " (" : ", ";
    text += record.fields[i].key;
    text += '=';
    text += record.fields[i].value;
  }
  if (!record.fields.empty()) text += ')';
  return text;
}

LogSink stderrLogSink() {
  return [](const LogRecord& record) {
    if (record.level < LogLevel::kWarning) return;
    static std::mutex mutex;
    const std::string line = "switchboard[" + std::string(record.component) + "] " +
                             std::string(logLevelName(record.level)) + ": " +
                             formatLogRecord(record) + "\n";
    std::lock_guard<std::mutex> lock(mutex);
    std::fputs(line.c_str(), stderr);
  };
}

}  // namespace switchboard
