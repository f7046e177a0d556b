// Notifier: publishes notifications (oslo.messaging's Notifier): one method per priority, each
// message to "<topic>.<priority>" of every configured topic; failures are logged and counted.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/log.h"
#include "messaging/notification.h"
#include "messaging/serializer.h"
#include "transports/transport.h"

namespace switchboard {

// A default-constructed Notifier is the no-op notifier: isEnabled() is false and every method
// returns at once, so code paths can keep one cheaply (check isEnabled() before building a
// costly payload). Copies (and prepare()d variants) share the transport and the counters.
// Thread-safe. Never throws into the caller: a payload the serializer rejects, or a publish the
// transport refuses after the retries, is logged (rate-limited) and counted in stats().failed.
class Notifier {
 public:
  struct Options {
    const Serializer* serializer = nullptr;  // borrowed; null means pass-through
    // Further publish attempts after a failed one, 10 ms apart on the caller's thread.
    int retry = 0;
    LogSink log = stderrLogSink();
  };
  struct Overrides {
    std::optional<std::string> publisherId{};
    std::optional<int> retry{};
  };
  struct Stats {
    uint64_t sent = 0;    // notifications published (once per topic)
    uint64_t failed = 0;  // notifications not published (once per topic)
  };

  Notifier();
  // `transport` must outlive the notifier and its copies.
  Notifier(Transport& transport, std::string publisherId, std::vector<std::string> topics,
           Options options);
  Notifier(Transport& transport, std::string publisherId, std::vector<std::string> topics);

  // A copy with `overrides` applied.
  Notifier prepare(const Overrides& overrides) const;
  bool isEnabled() const { return shared_ != nullptr; }

  void audit(const Context& context, std::string_view eventType, Value payload);
  void debug(const Context& context, std::string_view eventType, Value payload);
  void info(const Context& context, std::string_view eventType, Value payload);
  void warn(const Context& context, std::string_view eventType, Value payload);
  void error(const Context& context, std::string_view eventType, Value payload);
  void critical(const Context& context, std::string_view eventType, Value payload);
  void sample(const Context& context, std::string_view eventType, Value payload);
  void notify(Priority priority, const Context& context, std::string_view eventType,
              Value payload);

  const std::string& publisherId() const { return publisherId_; }
  Stats stats() const;

 private:
  struct Shared;
  // Counts `notifications` not sent; logs `why` with back-off over the failed calls.
  void failed(uint64_t notifications, std::string_view why) const;

  std::shared_ptr<Shared> shared_;  // null for the no-op notifier
  std::string publisherId_;
  int retry_ = 0;
};

}  // namespace switchboard
