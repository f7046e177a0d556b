// NotificationRouter: queues per pool and per unpooled subscriber, held deliveries, requeue.
// One mutex; `ready` callbacks are the only calls out, made under it.
#include "transports/detail/notification_router.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <utility>

namespace switchboard::detail {

namespace {
bool contains(const std::vector<std::string>& topics, std::string_view topic) {
  return std::find(topics.begin(), topics.end(), topic) != topics.end();
}
}  // namespace

Result<NotificationRouter::SubscriberId> NotificationRouter::subscribe(
    const Subscription& subscription, std::function<void()> ready) {
  if (subscription.topics.empty()) {
    return Status(StatusCode::kInvalidTarget, "a subscription needs at least one topic");
  }
  for (const std::string& topic : subscription.topics) {
    if (topic.empty()) return Status(StatusCode::kInvalidTarget, "empty topic name");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const SubscriberId id = nextSubscriber_++;
  Subscriber& subscriber = subscribers_[id];
  subscriber.topics = subscription.topics;
  subscriber.ready = std::move(ready);
  if (!subscription.pool.empty()) {
    std::unique_ptr<Pool>& pool = pools_[subscription.pool];
    if (!pool) pool = std::make_unique<Pool>();
    for (const std::string& topic : subscription.topics) {
      if (!contains(pool->topics, topic)) pool->topics.push_back(topic);
    }
    pool->members.push_back(id);
    subscriber.pool = pool.get();
    if (!pool->queue.messages.empty()) notifyLocked(subscriber);
  }
  return id;
}

void NotificationRouter::unsubscribe(SubscriberId id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return;
  Subscriber& subscriber = it->second;
  // Newest first, each to the front: the queue gets them back in their original order.
  for (auto held = subscriber.held.rbegin(); held != subscriber.held.rend(); ++held) {
    if (subscriber.pool != nullptr) {
      ++stats_.requeued;
      pushLocked(subscriber.pool->queue, std::move(held->second), /*front=*/true);
    } else {
      ++stats_.unsubscribedDropped;
    }
  }
  stats_.unsubscribedDropped += subscriber.own.messages.size();
  stats_.queuedNow -= subscriber.own.messages.size();
  Pool* pool = subscriber.pool;
  subscribers_.erase(it);
  if (pool != nullptr) {
    std::erase(pool->members, id);
    if (!pool->queue.messages.empty()) {
      for (SubscriberId member : pool->members) notifyLocked(subscribers_.at(member));
    }
  }
}

size_t NotificationRouter::publish(std::string_view topic, std::string body) {
  auto shared = std::make_shared<const std::string>(std::move(body));
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.published;
  size_t queues = 0;
  const auto fresh = [&] { return Delivery{0, std::string(topic), shared, 1}; };
  for (auto& [name, pool] : pools_) {
    if (!contains(pool->topics, topic)) continue;
    ++queues;
    const bool wasEmpty = pool->queue.messages.empty();
    pushLocked(pool->queue, fresh(), /*front=*/false);
    if (wasEmpty) {
      for (SubscriberId member : pool->members) notifyLocked(subscribers_.at(member));
    }
  }
  for (auto& [id, subscriber] : subscribers_) {
    if (subscriber.pool != nullptr || !contains(subscriber.topics, topic)) continue;
    ++queues;
    pushLocked(subscriber.own, fresh(), /*front=*/false);
    notifyLocked(subscriber);
  }
  if (queues == 0) ++stats_.unrouted;
  return queues;
}

void NotificationRouter::take(SubscriberId id, size_t max, std::vector<Delivery>& out) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return;
  Subscriber& subscriber = it->second;
  Queue* queues[2] = {&subscriber.own, subscriber.pool ? &subscriber.pool->queue : nullptr};
  size_t taken = 0;
  for (Queue* queue : queues) {
    while (queue != nullptr && taken < max && !queue->messages.empty()) {
      Delivery delivery = std::move(queue->messages.front());
      queue->messages.pop_front();
      --stats_.queuedNow;
      delivery.id = nextDelivery_++;
      ++stats_.delivered;
      out.push_back(delivery);
      subscriber.held.emplace(delivery.id, std::move(delivery));
      ++taken;
    }
  }
}

bool NotificationRouter::settleLocked(SubscriberId id, uint64_t deliveryId, Delivery& out,
                                      Subscriber*& subscriber) {
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return false;
  auto held = it->second.held.find(deliveryId);
  if (held == it->second.held.end()) return false;
  out = std::move(held->second);
  it->second.held.erase(held);
  subscriber = &it->second;
  return true;
}

bool NotificationRouter::acknowledge(SubscriberId id, uint64_t deliveryId) {
  std::lock_guard<std::mutex> lock(mutex_);
  Delivery delivery;
  Subscriber* subscriber = nullptr;
  if (!settleLocked(id, deliveryId, delivery, subscriber)) return false;
  ++stats_.acknowledged;
  return true;
}

bool NotificationRouter::requeue(SubscriberId id, uint64_t deliveryId) {
  std::lock_guard<std::mutex> lock(mutex_);
  Delivery delivery;
  Subscriber* subscriber = nullptr;
  if (!settleLocked(id, deliveryId, delivery, subscriber)) return false;
  returnLocked(*subscriber, std::move(delivery), /*attempted=*/true);
  return true;
}

bool NotificationRouter::release(SubscriberId id, uint64_t deliveryId) {
  std::lock_guard<std::mutex> lock(mutex_);
  Delivery delivery;
  Subscriber* subscriber = nullptr;
  if (!settleLocked(id, deliveryId, delivery, subscriber)) return false;
  returnLocked(*subscriber, std::move(delivery), /*attempted=*/false);
  return true;
}

void NotificationRouter::returnLocked(Subscriber& subscriber, Delivery delivery, bool attempted) {
  if (attempted) {
    if (delivery.attempt >= options_.maxDeliveries) {
      ++stats_.exhausted;
      return;
    }
    ++delivery.attempt;
    ++stats_.requeued;
  }
  if (subscriber.pool == nullptr) {
    pushLocked(subscriber.own, std::move(delivery), /*front=*/true);
    notifyLocked(subscriber);
    return;
  }
  pushLocked(subscriber.pool->queue, std::move(delivery), /*front=*/true);
  for (SubscriberId member : subscriber.pool->members) notifyLocked(subscribers_.at(member));
}

size_t NotificationRouter::heldCount(SubscriberId id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = subscribers_.find(id);
  return it == subscribers_.end() ? 0 : it->second.held.size();
}

NotificationRouter::Stats NotificationRouter::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void NotificationRouter::pushLocked(Queue& queue, Delivery delivery, bool front) {
  if (queue.messages.size() >= options_.maxQueued) {
    ++stats_.overflowed;
    return;
  }
  ++stats_.queuedNow;
  if (front) {
    queue.messages.push_front(std::move(delivery));
  } else {
    queue.messages.push_back(std::move(delivery));
  }
}

void NotificationRouter::notifyLocked(Subscriber& subscriber) {
  if (subscriber.ready) subscriber.ready();
}

namespace {

// One delivery taken by a RouterListener. Thread-safe; settles once.
class RouterIncoming final : public IncomingMessage {
 public:
  RouterIncoming(std::shared_ptr<NotificationRouter> router, NotificationRouter::SubscriberId id,
                 NotificationRouter::Delivery delivery, std::shared_ptr<const std::string> peer)
      : router_(std::move(router)), id_(id), delivery_(std::move(delivery)), peer_(std::move(peer)) {}
  ~RouterIncoming() override { (void)requeue(); }

  std::string_view body() const override { return *delivery_.body; }
  Status reply(std::string /*bytes*/) override {
    return Status(StatusCode::kInvalidState, "a notification has no sender to reply to");
  }
  void acknowledge() override {
    if (!settled_.exchange(true)) router_->acknowledge(id_, delivery_.id);
  }
  Status requeue() override {
    if (!settled_.exchange(true)) router_->requeue(id_, delivery_.id);
    return Status::ok();
  }
  std::string_view peer() const override { return *peer_; }

 private:
  const std::shared_ptr<NotificationRouter> router_;
  const NotificationRouter::SubscriberId id_;
  const NotificationRouter::Delivery delivery_;
  const std::shared_ptr<const std::string> peer_;
  std::atomic<bool> settled_{false};
};

// The wake-up state a router's `ready` callback touches; shared so that it outlives the
// listener object for as long as the router may call it (until unsubscribe returns).
struct RouterWakeup {
  std::mutex mutex;
  std::condition_variable wake;
  bool signalled = false;    // guarded by mutex: the router may have work since last reset
  bool interrupted = false;  // guarded by mutex: sticky until a poll returns
  bool closed = false;       // guarded by mutex
};

class RouterListener final : public Listener {
 public:
  RouterListener(std::shared_ptr<NotificationRouter> router, NotificationRouter::SubscriberId id,
                 std::shared_ptr<RouterWakeup> wakeup, std::string peer)
      : router_(std::move(router)),
        id_(id),
        wakeup_(std::move(wakeup)),
        peer_(std::make_shared<const std::string>(std::move(peer))) {}
  ~RouterListener() override { close(); }

  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
    if (maxBatch == 0) return Status::ok();
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(wakeup_->mutex);
        if (wakeup_->closed) return Status(StatusCode::kShuttingDown, "listener closed");
        wakeup_->signalled = false;  // reset before take(): a publish after it signals again
      }
      deliveries_.clear();
      router_->take(id_, maxBatch, deliveries_);
      if (!deliveries_.empty()) {
        for (auto& delivery : deliveries_) {
          out.push_back(std::make_unique<RouterIncoming>(router_, id_, std::move(delivery), peer_));
        }
        return Status::ok();
      }
      std::unique_lock<std::mutex> lock(wakeup_->mutex);
      const bool woken = wakeup_->wake.wait_until(lock, deadline, [&] {
        return wakeup_->signalled || wakeup_->interrupted || wakeup_->closed;
      });
      if (wakeup_->interrupted || !woken) {
        wakeup_->interrupted = false;
        return Status::ok();
      }
    }
  }

  void interrupt() override {
    std::lock_guard<std::mutex> lock(wakeup_->mutex);
    wakeup_->interrupted = true;
    wakeup_->wake.notify_all();
  }

  void close() override {
    {
      std::lock_guard<std::mutex> lock(wakeup_->mutex);
      if (wakeup_->closed) return;
      wakeup_->closed = true;
      wakeup_->wake.notify_all();
    }
    router_->unsubscribe(id_);
  }

 private:
  const std::shared_ptr<NotificationRouter> router_;
  const NotificationRouter::SubscriberId id_;
  const std::shared_ptr<RouterWakeup> wakeup_;
  const std::shared_ptr<const std::string> peer_;
  std::vector<NotificationRouter::Delivery> deliveries_;  // poll()'s scratch
};

}  // namespace

Result<std::unique_ptr<Listener>> subscribeListener(std::shared_ptr<NotificationRouter> router,
                                                   const Subscription& subscription,
                                                   std::string peer) {
  auto wakeup = std::make_shared<RouterWakeup>();
  Result<NotificationRouter::SubscriberId> id = router->subscribe(subscription, [wakeup] {
    std::lock_guard<std::mutex> lock(wakeup->mutex);
    wakeup->signalled = true;
    wakeup->wake.notify_all();
  });
  if (!id) return id.status();
  return std::unique_ptr<Listener>(
      std::make_unique<RouterListener>(std::move(router), *id, std::move(wakeup), std::move(peer)));
}

}  // namespace switchboard::detail
