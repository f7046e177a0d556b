// InMemoryTransport: a complete in-process message broker implementing Transport, shared by any
// number of clients and servers of one process (tests, single-process deployments).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "transports/transport.h"

namespace switchboard {

namespace detail {
class InMemoryBroker;
class NotificationRouter;
}  // namespace detail

// Routing, per exchange (an empty Address::exchange means "default"; nothing crosses exchanges):
//  - to (topic, server): the server queue of that address; every listener of exactly that
//    address takes from it, each message going to one of them.
//  - to (topic) with an empty server: the topic's shared queue; each message goes to exactly one
//    of the topic's listeners, whichever polls first.
//  - fanout to (topic) (server ignored): every listener of the topic gets its own copy. A fanout
//    sent while the topic has no listener is dropped and counted (Stats::fanoutDropped).
// A message sent to a server or topic nobody listens to yet stays queued, as a broker would keep
// it, until a listener takes it. Each queue holds at most Options::maxQueuedPerQueue messages;
// a send over that returns kOverloaded at once (it does not wait for room).
//
// Listener::poll takes from its server queue first, then its fanout copies, then the topic
// queue. Closing a listener leaves the unpolled messages of the shared queues for other (or
// later) listeners of the same address and drops (and counts) its own fanout copies.
//
// Replies: IncomingMessage::reply routes to the ClientChannel that sent the message, running the
// channel's callback on the replier's thread, outside every broker lock. Callbacks of one
// channel may run concurrently when several threads reply. A reply to a channel that is gone
// (or that was opened with an empty callback) is dropped and counted; reply still returns ok.
// IncomingMessage::peer() is "memory:<channel id>".
//
// Notifications follow NotificationRouter's rules (transports/detail/notification_router.h):
// a listener gets what is published after it subscribed; a pool keeps its queue while it has no
// member, for the transport's life; requeued messages go to the front of their queue, dropped
// after Options::maxDeliveries deliveries. Delivery is in-process: nothing survives the process.
//
// Thread-safe. The transport must outlive every listener and channel it made (the Transport
// contract); incoming messages keep the broker state alive, so reply() works after their
// listener is closed.
class InMemoryTransport final : public Transport {
 public:
  struct Options {
    // The most messages one queue (a server queue, a topic queue, or one listener's fanout
    // copies) holds before send returns kOverloaded.
    size_t maxQueuedPerQueue = 100000;
    // The most deliveries of one notification (the first and its requeues).
    uint32_t maxDeliveries = 5;
  };

  // Counters since construction; a consistent snapshot taken under the broker lock (the two
  // reply counters are read just after it, so they may be a few replies ahead).
  struct Stats {
    uint64_t sent = 0;              // sends that returned ok (a fanout counts once)
    uint64_t delivered = 0;         // messages handed out by poll (each fanout copy counts)
    uint64_t repliesDelivered = 0;  // replies that ran a channel's callback
    uint64_t repliesDropped = 0;    // replies whose channel was gone or had no callback
    uint64_t fanoutDropped = 0;     // fanouts with no listener, and copies dropped by close()
    uint64_t queuedNow = 0;         // messages waiting in every queue now
  };

  InMemoryTransport();
  explicit InMemoryTransport(Options options);
  ~InMemoryTransport() override;

  // kInvalidTarget unless address.topic and address.server are non-empty; fanout is ignored.
  Result<std::unique_ptr<Listener>> listen(const Address& address) override;
  // Never fails. An empty `onReply` makes a send-only channel: its replies are dropped. The
  // callback must not destroy its own channel (that would wait for itself for ever).
  // There are no links in memory: `onLink` is never called.
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                     LinkCallback onLink) override;
  using Transport::openChannel;

  // Never blocks; a copy over a full queue is dropped and counted (NotificationStats).
  Status publish(std::string_view topic, std::string bytes) override;
  Result<std::unique_ptr<Listener>> subscribe(const Subscription& subscription) override;

  Stats stats() const;
  NotificationStats notificationStats() const;

 private:
  std::shared_ptr<detail::InMemoryBroker> broker_;  // shared with listeners, channels, messages
  std::shared_ptr<detail::NotificationRouter> notifications_;  // shared with subscriptions
};

}  // namespace switchboard
