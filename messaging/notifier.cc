// Notifier: builds each notification once (unique id, UTC timestamp, serialized payload) and
// publishes it to every topic, retrying a refused publish a bounded number of times.
#include "messaging/notifier.h"

#include <array>
#include <chrono>
#include <ctime>
#include <exception>
#include <random>
#include <thread>

namespace switchboard {

struct Notifier::Shared {
  Shared(Transport& t, const std::vector<std::string>& topics, Options o)
      : transport(t), options(std::move(o)) {
    for (const std::string& topic : topics) {
      for (Priority priority : kAllPriorities) {
        transportTopics[static_cast<size_t>(priority)].push_back(notificationTopic(topic, priority));
      }
    }
  }
  Transport& transport;
  // "<topic>.<priority>" of every configured topic, by priority, made once.
  std::array<std::vector<std::string>, kAllPriorities.size()> transportTopics;
  const Options options;
  const NoOpSerializer noOp;
  // Message ids: a random 64-bit prefix per notifier and a counter: unique without a lock.
  const uint64_t idPrefix = std::random_device{}() * 0x100000000ull + std::random_device{}();
  std::atomic<uint64_t> nextId{0};
  std::atomic<uint64_t> sent{0}, failed{0};
  std::atomic<uint64_t> failures{0};  // failed notify() calls: the log's back-off counts these
};

namespace {

constexpr auto kRetryPause = std::chrono::milliseconds(10);

std::string hex16(uint64_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[i] = kHex[v & 15];
  return out;
}

// "2026-11-22T17:58:00.123456Z"
std::string utcTimestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof out, "%s.%06lldZ", buf, static_cast<long long>(micros));
  return out;
}

}  // namespace

Notifier::Notifier() = default;

Notifier::Notifier(Transport& transport, std::string publisherId, std::vector<std::string> topics)
    : Notifier(transport, std::move(publisherId), std::move(topics), Options{}) {}

Notifier::Notifier(Transport& transport, std::string publisherId, std::vector<std::string> topics,
                   Options options)
    : shared_(std::make_shared<Shared>(transport, std::move(topics), std::move(options))),
      publisherId_(std::move(publisherId)),
      retry_(shared_->options.retry) {}

Notifier Notifier::prepare(const Overrides& overrides) const {
  Notifier copy = *this;
  if (overrides.publisherId) copy.publisherId_ = *overrides.publisherId;
  if (overrides.retry) copy.retry_ = *overrides.retry;
  return copy;
}

void Notifier::audit(const Context& c, std::string_view e, Value p) {
  notify(Priority::kAudit, c, e, std::move(p));
}
void Notifier::debug(const Context& c, std::string_view e, Value p) {
  notify(Priority::kDebug, c, e, std::move(p));
}
void Notifier::info(const Context& c, std::string_view e, Value p) {
  notify(Priority::kInfo, c, e, std::move(p));
}
void Notifier::warn(const Context& c, std::string_view e, Value p) {
  notify(Priority::kWarn, c, e, std::move(p));
}
void Notifier::error(const Context& c, std::string_view e, Value p) {
  notify(Priority::kError, c, e, std::move(p));
}
void Notifier::critical(const Context& c, std::string_view e, Value p) {
  notify(Priority::kCritical, c, e, std::move(p));
}
void Notifier::sample(const Context& c, std::string_view e, Value p) {
  notify(Priority::kSample, c, e, std::move(p));
}

void Notifier::notify(Priority priority, const Context& context, std::string_view eventType,
                      Value payload) {
  if (!shared_) return;
  Shared& s = *shared_;
  const Serializer& serializer = s.options.serializer ? *s.options.serializer : s.noOp;
  Notification n;
  n.publisherId = publisherId_;
  n.eventType = std::string(eventType);
  n.priority = priority;
  n.metadata = Value(Map{
      {Value("message_id"), Value(hex16(s.idPrefix) + "-" + hex16(s.nextId.fetch_add(1)))},
      {Value("timestamp"), Value(utcTimestamp())}});
  try {
    n.context = serializer.serializeContext(context);
    n.payload = serializer.serializeEntity(context, std::move(payload));
  } catch (const std::exception& e) {
    return failed(s.transportTopics[static_cast<size_t>(priority)].size(),
                  std::string("serializer: ") + e.what());
  }
  const std::string body = detail::encodeNotification(n);
  for (const std::string& topic : s.transportTopics[static_cast<size_t>(priority)]) {
    Status published;
    for (int attempt = 0;; ++attempt) {
      published = s.transport.publish(topic, body);
      if (published || attempt >= retry_) break;
      std::this_thread::sleep_for(kRetryPause);
    }
    if (published) {
      s.sent.fetch_add(1, std::memory_order_relaxed);
    } else {
      failed(1, "publish to " + topic + ": " + published.toString());
    }
  }
}

void Notifier::failed(uint64_t notifications, std::string_view why) const {
  const uint64_t total = shared_->failed.fetch_add(notifications, std::memory_order_relaxed) +
                         notifications;
  if (isLoggedOccurrence(shared_->failures.fetch_add(1, std::memory_order_relaxed) + 1)) {
    shared_->options.log(LogLevel::kWarning, "notifier", std::string(why),
                         {{"failed", std::to_string(total)}});
  }
}

Notifier::Stats Notifier::stats() const {
  if (!shared_) return {};
  return Stats{shared_->sent.load(), shared_->failed.load()};
}

}  // namespace switchboard
