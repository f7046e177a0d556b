// NotificationRouter: the delivery rules of notifications, shared by every transport that routes
// them itself (the in-memory broker, the ZeroMQ notification broker): topics, pools, requeue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "transports/transport.h"

namespace switchboard::detail {

// Rules:
//  - publish(topic) gives each unpooled subscriber of `topic` its own copy, and each pool that
//    subscribed to `topic` one copy, kept in the pool's queue until one member takes it.
//  - A pool lives from its first member's subscribe() for as long as the router: messages
//    published while it has no member wait in its queue (a member restarted within a pool
//    misses nothing). An unpooled subscriber's copies go with it when it unsubscribes.
//  - take() hands out a subscriber's own copies first, then its pool's. What is taken stays
//    the subscriber's, unacknowledged, until acknowledge() or requeue(): requeue puts it back at
//    the front of the queue it came from (the pool's, so any member may take it next), and so
//    does unsubscribe() for everything its subscriber still holds.
//  - Bounds: each queue holds at most Options::maxQueued messages; a copy over that is dropped
//    and counted (`overflowed`); a message requeued Options::maxDeliveries times is dropped and
//    counted (`exhausted`) instead of going back. A publish that reaches nobody is counted.
// Thread-safe. `ready` callbacks run under the router's lock and must not call the router.
class NotificationRouter final {
 public:
  struct Options {
    size_t maxQueued = 100000;
    uint32_t maxDeliveries = 5;
  };
  struct Delivery {
    uint64_t id = 0;  // router-wide, for acknowledge() and requeue()
    std::string topic;
    std::shared_ptr<const std::string> body;
    uint32_t attempt = 1;  // 1 for the first delivery, 2 after one requeue, ...
  };
  using Stats = NotificationStats;
  using SubscriberId = uint64_t;

  NotificationRouter() : NotificationRouter(Options{}) {}
  explicit NotificationRouter(Options options) : options_(options) {}
  NotificationRouter(const NotificationRouter&) = delete;
  NotificationRouter& operator=(const NotificationRouter&) = delete;

  // `ready` runs whenever the subscriber may have something new to take. kInvalidTarget
  // without a topic or with an empty topic name.
  Result<SubscriberId> subscribe(const Subscription& subscription, std::function<void()> ready);
  // Forgets the subscriber; what it holds unacknowledged goes back to its queue (see above).
  void unsubscribe(SubscriberId id);
  // Returns the number of queues the message went to.
  size_t publish(std::string_view topic, std::string body);
  // Appends up to `max` deliveries for subscriber `id` (unknown ids get nothing).
  void take(SubscriberId id, size_t max, std::vector<Delivery>& out);
  // Each returns false, doing nothing, for a delivery the subscriber does not hold (already
  // settled, not its, or unsubscribed).
  bool acknowledge(SubscriberId id, uint64_t deliveryId);
  // A delivery the subscriber gave back: another attempt (see Options::maxDeliveries).
  bool requeue(SubscriberId id, uint64_t deliveryId);
  // A delivery that never reached its subscriber (its connection had no room): back to the
  // front of its queue without counting an attempt.
  bool release(SubscriberId id, uint64_t deliveryId);
  // How many deliveries subscriber `id` holds unsettled (0 for an unknown id).
  size_t heldCount(SubscriberId id) const;
  Stats stats() const;

 private:
  struct Queue {
    std::deque<Delivery> messages;
  };
  struct Pool {
    std::vector<std::string> topics;
    Queue queue;
    std::vector<SubscriberId> members;
  };
  struct Subscriber {
    std::vector<std::string> topics;
    Pool* pool = nullptr;  // owned by pools_
    Queue own;             // unpooled copies
    std::map<uint64_t, Delivery> held;  // taken, not yet settled
    std::function<void()> ready;
  };

  void pushLocked(Queue& queue, Delivery delivery, bool front);
  void notifyLocked(Subscriber& subscriber);
  // Puts `delivery` back at the front of the queue it came from; `attempted`: it reached the
  // subscriber, so it counts towards maxDeliveries.
  void returnLocked(Subscriber& subscriber, Delivery delivery, bool attempted);
  // Takes delivery `deliveryId` out of what subscriber `id` holds; false when it holds none.
  bool settleLocked(SubscriberId id, uint64_t deliveryId, Delivery& out, Subscriber*& subscriber);

  const Options options_;
  mutable std::mutex mutex_;
  uint64_t nextSubscriber_ = 1;  // guarded by mutex_
  uint64_t nextDelivery_ = 1;    // guarded by mutex_
  std::map<std::string, std::unique_ptr<Pool>, std::less<>> pools_;  // guarded by mutex_
  std::map<SubscriberId, Subscriber> subscribers_;                   // guarded by mutex_
  Stats stats_;                                                      // guarded by mutex_
};

// A Listener over subscription `subscription` of `router` (an in-process subscriber): poll()
// takes deliveries; each message's acknowledge() and requeue() settle it with the router, and
// one destroyed unsettled is requeued. close() unsubscribes. Messages keep the router alive.
// `peer` names the sender in every message (IncomingMessage::peer).
Result<std::unique_ptr<Listener>> subscribeListener(std::shared_ptr<NotificationRouter> router,
                                                   const Subscription& subscription,
                                                   std::string peer);

}  // namespace switchboard::detail
