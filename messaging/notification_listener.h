// NotificationListener: receives notifications for one or more targets and dispatches them to
// endpoints, one by one or in batches, through an Executor (oslo.messaging's listeners).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "executors/executor.h"
#include "messaging/notification.h"
#include "messaging/serializer.h"
#include "messaging/target.h"
#include "transports/transport.h"

namespace switchboard {

namespace detail {
class NotificationCore;
class Serving;
}

// What an endpoint asks of a notification it was given. A handler that throws asks kRequeue.
enum class NotificationResult { kHandled, kRequeue };

// Which notifications an endpoint wants: every rule must match. A rule is an anchored regular
// expression (ECMAScript, matched against the whole string) over a string field; a missing key
// or a value that is not a string does not match.
class NotificationFilter {
 public:
  enum class Field { kPublisherId, kEventType, kContext, kMetadata, kPayload };
  struct Rule {
    Field field = Field::kEventType;
    std::string key;  // the map key for kContext, kMetadata and kPayload; unused otherwise
    std::string pattern;
  };

  NotificationFilter() = default;  // matches everything
  // kBadArguments naming the rule whose pattern does not compile, or a map field without a key.
  static Result<NotificationFilter> make(const std::vector<Rule>& rules);
  bool matches(const Notification& notification) const;

 private:
  struct Compiled {
    Field field;
    std::string key;
    std::regex pattern;
  };
  std::vector<Compiled> rules_;
};

using NotificationHandler = std::function<NotificationResult(const Notification&)>;
// Gets the notifications of one batch that share a priority and pass the endpoint's filter.
using BatchNotificationHandler =
    std::function<NotificationResult(const std::vector<Notification>&)>;

// The priorities an endpoint implements, each with a handler, and its filter. Handlers run on
// executor threads, possibly several at once.
class NotificationEndpoint {
 public:
  NotificationEndpoint& on(Priority priority, NotificationHandler handler);
  NotificationEndpoint& onBatch(Priority priority, BatchNotificationHandler handler);
  NotificationEndpoint& filter(NotificationFilter filter);

  bool implements(Priority priority, bool batch) const;

 private:
  friend class detail::NotificationCore;
  std::map<Priority, NotificationHandler> handlers_;
  std::map<Priority, BatchNotificationHandler> batchHandlers_;
  NotificationFilter filter_;
};

// Subscribes to "<topic>.<priority>" of every target's topic for every priority an endpoint
// implements, and dispatches each notification in endpoint order: an endpoint is skipped unless
// it implements the priority and its filter matches; dispatch stops at the first endpoint that
// answers kRequeue. A requeued notification goes back to the transport (for another delivery,
// to this listener or another of its pool) only when Options::allowRequeue; otherwise it is
// acknowledged, dropped and counted (Stats::requeueRefused). Undecodable messages are
// acknowledged, logged and counted (Stats::malformed).
// Batch variant (Options::batchSize > 0): batch handlers get up to batchSize notifications at a
// time, grouped by priority; with a batchTimeout a smaller batch goes once its first message
// waited that long; without one only full batches go. A partial batch still held at stop()
// returns to the transport.
// Lifecycle: as MessageHandlingServer's (start, execute for the blocking executor, stop, wait,
// destructor); every executor applies. Thread-safe.
class NotificationListener final {
 public:
  struct Options {
    std::string pool{};         // listeners of one pool share the notifications
    bool allowRequeue = false;  // honour kRequeue
    size_t batchSize = 0;       // 0: one notification at a time (NotificationHandler)
    Duration batchTimeout = Duration::zero();  // zero: no timeout (full batches only)
    size_t pollBatch = 64;      // messages taken from the transport per poll
    const Serializer* serializer = nullptr;  // borrowed; null means pass-through
    LogSink log = stderrLogSink();
    Duration hangWarningAfter = std::chrono::seconds(10);
  };
  struct Stats {
    uint64_t received = 0;        // messages taken from the transport
    uint64_t handled = 0;         // notifications acknowledged after dispatch
    uint64_t requeued = 0;        // given back to the transport (kRequeue allowed, or refused by the executor)
    uint64_t requeueRefused = 0;  // kRequeue without allowRequeue: acknowledged and dropped
    uint64_t unhandled = 0;       // no endpoint implemented the priority or matched the filter
    uint64_t malformed = 0;       // undecodable: acknowledged and dropped
    uint64_t batches = 0;         // batch handler calls
    uint64_t refused = 0;         // refused by the executor (overloaded, stopping): given back
  };

  // `transport` must outlive the listener. Each target needs a topic.
  NotificationListener(Transport& transport, std::vector<Target> targets,
                       std::vector<NotificationEndpoint> endpoints,
                       std::unique_ptr<Executor> executor, Options options);
  NotificationListener(Transport& transport, std::vector<Target> targets,
                       std::vector<NotificationEndpoint> endpoints,
                       std::unique_ptr<Executor> executor);
  ~NotificationListener();
  NotificationListener(const NotificationListener&) = delete;
  NotificationListener& operator=(const NotificationListener&) = delete;

  // kInvalidTarget without a target topic or an endpoint priority; else as the server's.
  Status start();
  Status execute();
  void stop();
  Status wait(Deadline deadline = kNoDeadline);
  bool isRunning() const;
  Stats stats() const;

 private:
  std::unique_ptr<detail::NotificationCore> core_;
  std::unique_ptr<detail::Serving> serving_;  // after core_: stopped and waited for first
};

}  // namespace switchboard
