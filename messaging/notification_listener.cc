// NotificationListener: the TaskSource that decodes notifications and forms batches, the
// dispatch rules (endpoint order, filters, requeue), and the lifecycle hooks.
#include "messaging/notification_listener.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <utility>

#include "messaging/detail/serving.h"

namespace switchboard {

// ----- NotificationFilter -------------------------------------------------------------------

Result<NotificationFilter> NotificationFilter::make(const std::vector<Rule>& rules) {
  NotificationFilter filter;
  for (const Rule& rule : rules) {
    const bool keyed = rule.field == Field::kContext || rule.field == Field::kMetadata ||
                       rule.field == Field::kPayload;
    if (keyed && rule.key.empty()) {
      return Status(StatusCode::kBadArguments,
                    "filter rule '" + rule.pattern + "' needs the key of its map field");
    }
    try {
      filter.rules_.push_back({rule.field, rule.key, std::regex(rule.pattern)});
    } catch (const std::regex_error& e) {
      return Status(StatusCode::kBadArguments,
                    "filter pattern '" + rule.pattern + "' does not compile: " + e.what());
    }
  }
  return filter;
}

bool NotificationFilter::matches(const Notification& n) const {
  for (const Compiled& rule : rules_) {
    const Value* value = nullptr;
    Value scalar;
    switch (rule.field) {
      case Field::kPublisherId:
        scalar = Value(n.publisherId);
        value = &scalar;
        break;
      case Field::kEventType:
        scalar = Value(n.eventType);
        value = &scalar;
        break;
      case Field::kContext:
        value = n.context.isMap() ? n.context.find(rule.key) : nullptr;
        break;
      case Field::kMetadata:
        value = n.metadata.isMap() ? n.metadata.find(rule.key) : nullptr;
        break;
      case Field::kPayload:
        value = n.payload.isMap() ? n.payload.find(rule.key) : nullptr;
        break;
    }
    if (value == nullptr || !value->isString()) return false;
    if (!std::regex_match(value->asString(), rule.pattern)) return false;
  }
  return true;
}

// ----- NotificationEndpoint -----------------------------------------------------------------

NotificationEndpoint& NotificationEndpoint::on(Priority priority, NotificationHandler handler) {
  handlers_[priority] = std::move(handler);
  return *this;
}

NotificationEndpoint& NotificationEndpoint::onBatch(Priority priority,
                                                    BatchNotificationHandler handler) {
  batchHandlers_[priority] = std::move(handler);
  return *this;
}

NotificationEndpoint& NotificationEndpoint::filter(NotificationFilter filter) {
  filter_ = std::move(filter);
  return *this;
}

bool NotificationEndpoint::implements(Priority priority, bool batch) const {
  return batch ? batchHandlers_.count(priority) != 0 : handlers_.count(priority) != 0;
}

// ----- the core -----------------------------------------------------------------------------

namespace detail {

// A message taken from the transport and its decoded notification.
struct ReceivedNotification {
  IncomingPtr message;
  Notification notification;
};

class NotificationCore final : public TaskSource {
 public:
  NotificationCore(Transport& transport, std::vector<Target> targets,
                   std::vector<NotificationEndpoint> endpoints, std::unique_ptr<Executor> executor,
                   NotificationListener::Options options)
      : transport_(transport),
        targets_(std::move(targets)),
        endpoints_(std::move(endpoints)),
        executor_(std::move(executor)),
        options_(std::move(options)),
        serializer_(options_.serializer ? options_.serializer : &noOp_) {}

  Status subscribe();
  // Returns a partial batch to the transport, then closes the subscription.
  void release();
  Status poll(Deadline deadline, std::vector<TaskPtr>& out) override;
  void interrupt() override { listener_->interrupt(); }

  // Dispatches one notification; settles its message.
  void dispatchOne(ReceivedNotification& received);
  // Dispatches a batch, one priority group at a time; settles every message.
  void dispatchBatch(std::vector<ReceivedNotification>& batch);
  // Gives messages the executor refused back to the transport.
  void giveBack(std::vector<ReceivedNotification>& refused, const Status& why);

  bool batching() const { return options_.batchSize > 0; }

  Transport& transport_;
  const std::vector<Target> targets_;
  const std::vector<NotificationEndpoint> endpoints_;
  const std::unique_ptr<Executor> executor_;
  const NotificationListener::Options options_;
  const NoOpSerializer noOp_;
  const Serializer* const serializer_;

  std::atomic<uint64_t> received_{0}, handled_{0}, requeued_{0}, requeueRefused_{0},
      unhandled_{0}, malformed_{0}, batches_{0}, refused_{0};
  std::atomic<uint64_t> refusals_{0};  // refused tasks: the log's back-off counts these

 private:
  // Calls `handler` and turns an exception into kRequeue (logged).
  template <typename Handler, typename Arg>
  NotificationResult call(const Handler& handler, const Arg& arg, Priority priority);
  // Acknowledges or requeues per `result` and the listener's permission; counts.
  void settle(IncomingMessage& message, NotificationResult result, bool matched);
  void emitBatch(size_t count, std::vector<TaskPtr>& out);

  // Set by subscribe() before the executor starts, released after it finished; used by the
  // executor's polling thread in between.
  std::unique_ptr<Listener> listener_;
  std::vector<IncomingPtr> incoming_;            // poll()'s scratch
  std::vector<ReceivedNotification> pending_;    // the batch being formed (polling thread)
  Deadline batchStarted_{};                      // when pending_'s first message arrived
};

namespace {

class NotificationTask final : public Task {
 public:
  NotificationTask(NotificationCore& core, ReceivedNotification received)
      : core_(core), received_(std::move(received)) {}
  void run() noexcept override { core_.dispatchOne(received_); }
  void reject(Status why) noexcept override {
    std::vector<ReceivedNotification> refused;
    refused.push_back(std::move(received_));
    core_.giveBack(refused, why);
  }

 private:
  NotificationCore& core_;
  ReceivedNotification received_;
};

class NotificationBatchTask final : public Task {
 public:
  NotificationBatchTask(NotificationCore& core, std::vector<ReceivedNotification> batch)
      : core_(core), batch_(std::move(batch)) {}
  void run() noexcept override { core_.dispatchBatch(batch_); }
  void reject(Status why) noexcept override { core_.giveBack(batch_, why); }

 private:
  NotificationCore& core_;
  std::vector<ReceivedNotification> batch_;
};

}  // namespace

Status NotificationCore::subscribe() {
  Subscription subscription;
  subscription.pool = options_.pool;
  for (const Target& target : targets_) {
    if (target.topic.empty()) {
      return Status(StatusCode::kInvalidTarget, "a notification target needs a topic");
    }
    for (Priority priority : kAllPriorities) {
      const bool wanted = std::any_of(endpoints_.begin(), endpoints_.end(), [&](const auto& e) {
        return e.implements(priority, batching());
      });
      if (wanted) subscription.topics.push_back(notificationTopic(target.topic, priority));
    }
  }
  if (targets_.empty() || subscription.topics.empty()) {
    return Status(StatusCode::kInvalidTarget,
                  batching() ? "no target, or no endpoint with a batch handler"
                             : "no target, or no endpoint with a handler");
  }
  Result<std::unique_ptr<Listener>> listener = transport_.subscribe(subscription);
  if (!listener) return listener.status();
  listener_ = std::move(listener).value();
  return Status::ok();
}

void NotificationCore::release() {
  for (ReceivedNotification& held : pending_) {
    if (held.message->requeue()) requeued_.fetch_add(1, std::memory_order_relaxed);
  }
  pending_.clear();
  if (listener_) listener_->close();
  listener_.reset();
}

Status NotificationCore::poll(Deadline deadline, std::vector<TaskPtr>& out) {
  Deadline until = deadline;
  const bool timed = batching() && options_.batchTimeout > Duration::zero();
  if (timed && !pending_.empty()) until = std::min(until, batchStarted_ + options_.batchTimeout);
  incoming_.clear();
  Status polled = listener_->poll(until, options_.pollBatch, incoming_);
  const Deadline now = Clock::now();
  for (IncomingPtr& message : incoming_) {
    received_.fetch_add(1, std::memory_order_relaxed);
    Result<Notification> decoded = detail::decodeNotification(message->body());
    if (decoded) {
      try {
        Notification& n = *decoded;
        n.context = serializer_->deserializeContext(n.context);
        n.payload = serializer_->deserializeEntity(n.context, std::move(n.payload));
      } catch (const std::exception& e) {
        decoded = Status(StatusCode::kBadArguments, std::string("serializer: ") + e.what());
      }
    }
    if (!decoded) {
      const uint64_t n = malformed_.fetch_add(1, std::memory_order_relaxed) + 1;
      if (isLoggedOccurrence(n)) {
        options_.log(LogLevel::kWarning, "notification-listener",
                     "dropped an undecodable notification (" + std::to_string(n) +
                         " so far) from " + std::string(message->peer()) + ": " +
                         decoded.status().toString());
      }
      message->acknowledge();
      continue;
    }
    ReceivedNotification received{std::move(message), std::move(decoded).value()};
    if (!batching()) {
      out.push_back(std::make_unique<NotificationTask>(*this, std::move(received)));
      continue;
    }
    if (pending_.empty()) batchStarted_ = now;
    pending_.push_back(std::move(received));
    if (pending_.size() >= options_.batchSize) emitBatch(options_.batchSize, out);
  }
  if (timed && !pending_.empty() && now >= batchStarted_ + options_.batchTimeout) {
    emitBatch(pending_.size(), out);
  }
  return polled;
}

void NotificationCore::emitBatch(size_t count, std::vector<TaskPtr>& out) {
  std::vector<ReceivedNotification> batch(std::make_move_iterator(pending_.begin()),
                                          std::make_move_iterator(pending_.begin() + count));
  pending_.erase(pending_.begin(), pending_.begin() + count);
  out.push_back(std::make_unique<NotificationBatchTask>(*this, std::move(batch)));
}

template <typename Handler, typename Arg>
NotificationResult NotificationCore::call(const Handler& handler, const Arg& arg,
                                          Priority priority) {
  std::string why;
  try {
    return handler(arg);
  } catch (const std::exception& e) {
    why = e.what();
  } catch (...) {
    why = "a non-standard exception";
  }
  options_.log(LogLevel::kWarning, "notification-listener",
               std::string("a ") + std::string(priorityName(priority)) +
                   " handler threw (counts as requeue): " + why);
  return NotificationResult::kRequeue;
}

void NotificationCore::settle(IncomingMessage& message, NotificationResult result, bool matched) {
  if (result == NotificationResult::kRequeue) {
    if (options_.allowRequeue && message.requeue()) {
      requeued_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    message.acknowledge();
    const uint64_t n = requeueRefused_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (isLoggedOccurrence(n)) {
      options_.log(LogLevel::kWarning, "notification-listener",
                   "requeue asked but not allowed: notification dropped (" + std::to_string(n) +
                       " so far)");
    }
    return;
  }
  message.acknowledge();
  (matched ? handled_ : unhandled_).fetch_add(1, std::memory_order_relaxed);
}

void NotificationCore::dispatchOne(ReceivedNotification& received) {
  const Notification& n = received.notification;
  bool matched = false;
  NotificationResult result = NotificationResult::kHandled;
  for (const NotificationEndpoint& endpoint : endpoints_) {
    auto handler = endpoint.handlers_.find(n.priority);
    if (handler == endpoint.handlers_.end() || !endpoint.filter_.matches(n)) continue;
    matched = true;
    result = call(handler->second, n, n.priority);
    if (result == NotificationResult::kRequeue) break;
  }
  settle(*received.message, result, matched);
}

void NotificationCore::dispatchBatch(std::vector<ReceivedNotification>& batch) {
  std::vector<bool> done(batch.size(), false);
  for (size_t first = 0; first < batch.size(); ++first) {
    if (done[first]) continue;
    const Priority priority = batch[first].notification.priority;
    std::vector<size_t> group;  // this priority's messages, in arrival order
    for (size_t i = first; i < batch.size(); ++i) {
      if (!done[i] && batch[i].notification.priority == priority) group.push_back(i);
    }
    std::vector<Notification> all;  // the group (moved out: settling needs the messages only)
    for (size_t i : group) all.push_back(std::move(batch[i].notification));
    std::vector<bool> matched(all.size(), false);  // by some endpoint
    std::vector<bool> passes(all.size(), false);   // by the endpoint at hand
    std::vector<Notification> some;  // copies, when the filter passes only part of the group
    NotificationResult result = NotificationResult::kHandled;
    for (const NotificationEndpoint& endpoint : endpoints_) {
      auto handler = endpoint.batchHandlers_.find(priority);
      if (handler == endpoint.batchHandlers_.end()) continue;
      size_t passing = 0;
      for (size_t k = 0; k < all.size(); ++k) {
        passes[k] = endpoint.filter_.matches(all[k]);
        if (passes[k]) ++passing;
        matched[k] = matched[k] || passes[k];
      }
      if (passing == 0) continue;
      if (passing < all.size()) {
        some.clear();
        for (size_t k = 0; k < all.size(); ++k) {
          if (passes[k]) some.push_back(all[k]);
        }
      }
      batches_.fetch_add(1, std::memory_order_relaxed);
      result = call(handler->second, passing == all.size() ? all : some, priority);
      if (result == NotificationResult::kRequeue) break;
    }
    for (size_t k = 0; k < group.size(); ++k) {
      settle(*batch[group[k]].message, result, matched[k]);
      done[group[k]] = true;
    }
  }
}

void NotificationCore::giveBack(std::vector<ReceivedNotification>& refused, const Status& why) {
  for (ReceivedNotification& r : refused) {
    if (r.message->requeue()) {
      requeued_.fetch_add(1, std::memory_order_relaxed);
    } else {
      r.message->acknowledge();
      requeueRefused_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  const uint64_t n = refused_.fetch_add(refused.size(), std::memory_order_relaxed);
  if (isLoggedOccurrence(refusals_.fetch_add(1, std::memory_order_relaxed) + 1)) {
    options_.log(LogLevel::kWarning, "notification-listener",
                 "notifications refused by the executor, given back: " + why.toString(),
                 {{"refused", std::to_string(n + refused.size())}});
  }
}

}  // namespace detail

// ----- NotificationListener -----------------------------------------------------------------

NotificationListener::NotificationListener(Transport& transport, std::vector<Target> targets,
                                           std::vector<NotificationEndpoint> endpoints,
                                           std::unique_ptr<Executor> executor)
    : NotificationListener(transport, std::move(targets), std::move(endpoints),
                           std::move(executor), Options{}) {}

NotificationListener::NotificationListener(Transport& transport, std::vector<Target> targets,
                                           std::vector<NotificationEndpoint> endpoints,
                                           std::unique_ptr<Executor> executor, Options options)
    : core_(std::make_unique<detail::NotificationCore>(transport, std::move(targets),
                                                       std::move(endpoints), std::move(executor),
                                                       options)),
      serving_(std::make_unique<detail::Serving>("notification-listener", *core_->executor_, *core_,
               detail::Serving::Hooks{.open = [this] { return core_->subscribe(); },
                .close = [this] { core_->release(); },
                .onStop = {}},
               options.hangWarningAfter, options.log)) {}

NotificationListener::~NotificationListener() = default;

Status NotificationListener::start() { return serving_->start(); }

bool NotificationListener::isRunning() const { return serving_->isRunning(); }

Status NotificationListener::execute() { return serving_->execute(); }

void NotificationListener::stop() { serving_->stop(); }

Status NotificationListener::wait(Deadline deadline) { return serving_->wait(deadline); }

NotificationListener::Stats NotificationListener::stats() const {
  const detail::NotificationCore& c = *core_;
  return Stats{c.received_.load(),       c.handled_.load(),   c.requeued_.load(),
               c.requeueRefused_.load(), c.unhandled_.load(), c.malformed_.load(),
               c.batches_.load(),        c.refused_.load()};
}

}  // namespace switchboard
