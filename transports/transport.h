// Transport: moves opaque message bytes between clients and listening servers.
// Implementations: InMemoryTransport (in-process), ZeroMQ (later); tests add mocks and decorators.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/deadline.h"
#include "base/status.h"
#include "transports/address.h"

namespace switchboard {

// One message taken by a Listener. Thread-safe: reply() and acknowledge() may be called from any
// thread, after the listener is closed too, for as long as the transport lives (a ZeroMQ
// listener, whose socket is gone once closed, drops and counts such late replies). reply() may
// be called several times: call-in-progress heartbeats go before the one response.
class IncomingMessage {
 public:
  virtual ~IncomingMessage() = default;
  IncomingMessage() = default;
  IncomingMessage(const IncomingMessage&) = delete;
  IncomingMessage& operator=(const IncomingMessage&) = delete;

  // The bytes the sender sent; valid while the message lives, until releaseBody().
  virtual std::string_view body() const = 0;
  // The taker is done with body(), which it must not call again: the transport may free the
  // bytes now, on the calling thread, rather than with the message (on whichever thread ends
  // it, maybe after a long call). Everything else still works.
  virtual void releaseBody() {}
  // Sends `bytes` back to the channel the message came from. Never blocks. A sender that is gone
  // is not an error of the replier: the reply is dropped and counted by the transport.
  virtual Status reply(std::string bytes) = 0;
  // Tells the transport the message was taken care of. Idempotent.
  virtual void acknowledge() = 0;
  // Who sent it, for logs and access checks (transport-specific, e.g. a channel id).
  virtual std::string_view peer() const = 0;
  // Who the transport authenticated the sender as (ZeroMQ CURVE: the client's Z85 public key,
  // admitted by the ZAP handler); empty when the transport authenticated no one.
  virtual std::string_view identity() const { return {}; }
  // Notifications only: gives the message back for another delivery (to the next listener of
  // its pool, or to this subscription again) instead of acknowledging it. kInvalidState for a
  // message that cannot be requeued (a request). The first of acknowledge() and requeue() wins.
  virtual Status requeue() {
    return Status(StatusCode::kInvalidState, "this message cannot be requeued");
  }
};
using IncomingPtr = std::unique_ptr<IncomingMessage>;

// The server side of a transport for one Address. Thread-bound: poll() and close() are called by
// one thread at a time (the executor's receiving thread); interrupt() from any thread.
class Listener {
 public:
  virtual ~Listener() = default;
  Listener() = default;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Appends up to `maxBatch` messages to `out`, waiting until `deadline` or interrupt() for the
  // first. Returns ok with nothing appended on a timeout or an interrupt; an error only when the
  // listener can never deliver again (closed, transport failed).
  virtual Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) = 0;
  // Thread-safe waker: a poll() blocked now returns promptly, and if none is blocked the next one
  // returns at once.
  virtual void interrupt() = 0;
  // Stops taking messages. Messages not yet polled stay with the transport for another listener
  // of the same address. Idempotent; the destructor closes.
  virtual void close() = 0;
};

// Receives replies sent to a ClientChannel: one or more, in the order they arrived, as a batch
// the transport took at once. The views are valid until it returns (a transport may lend its
// receive buffers). Runs on a transport thread (or the replier's); it must be quick and must not
// destroy the channel it belongs to.
using ReplyCallback = std::function<void(std::span<const std::string_view> replies)>;

// What a channel learns about its link to the peer, where the transport can tell (ZeroMQ's
// socket monitor can; the in-memory transport has no links and reports nothing).
enum class LinkEvent {
  kUp,       // connected and handshaken with the peer
  kDown,     // an established link was lost (peer closed, reset, heartbeat timeout)
  kRefused,  // an attempt to connect failed (refused, unreachable); the transport may retry
};
// Runs on a transport thread, under the same rules as a ReplyCallback; `detail` says why.
using LinkCallback = std::function<void(LinkEvent event, std::string_view detail)>;

// Ends a ClientChannel::receiveUntil() that its owner's thread runs: wake() from any thread,
// that one included, any number of times. Reusable: the owner rearm()s it before each receive.
class ReceiveWaker {
 public:
  // valid() is false when the system had no descriptor left: a receive cannot use it.
  ReceiveWaker();
  ~ReceiveWaker();
  ReceiveWaker(const ReceiveWaker&) = delete;
  ReceiveWaker& operator=(const ReceiveWaker&) = delete;

  bool valid() const { return fd_ >= 0; }
  // The owner, while no receive uses it: not woken, and its thread is the one that receives.
  void rearm();
  // Thread-safe. From another thread than the owner's, also makes fd() readable.
  void wake();
  bool woken() const { return woken_.load(std::memory_order_acquire); }
  // Readable once woken from another thread: what a receive sleeps on besides its socket.
  int fd() const { return fd_; }

 private:
  const int fd_;
  std::thread::id owner_;  // set by rearm(), read by wake()
  std::atomic<bool> woken_{false};
  std::atomic<bool> signalled_{false};  // fd_ was written since the last rearm()
};

// The client side of a transport: sends to addresses; replies come back to its callback.
// Thread-safe. After the destructor returns no callback runs and none is running.
class ClientChannel {
 public:
  virtual ~ClientChannel() = default;
  ClientChannel() = default;
  ClientChannel(const ClientChannel&) = delete;
  ClientChannel& operator=(const ClientChannel&) = delete;

  // Queues `bytes` for `to`, waiting no later than `deadline` for room. Delivery is not
  // confirmed: a caller that needs an answer waits for a reply itself (RpcClient does).
  virtual Status send(const Address& to, std::string bytes, Deadline deadline) = 0;

  // Lends the calling thread to the channel: it receives the channel's replies itself and hands
  // them to the ReplyCallback, on this thread, until `waker` is woken or `deadline` passes. A
  // caller waiting for its own reply is then woken by the reply, not by the thread that
  // received it. Meanwhile the transport's own thread does not wait for replies (it still
  // receives when other work wakes it), and while the callback runs it waits for them again,
  // so a callback that waits for another reply is served. One thread at a time: false at once,
  // having received nothing, when another one receives this way, the channel is closing, or
  // the transport has no such mode (the default). The channel must outlive the call.
  virtual bool receiveUntil(ReceiveWaker& waker, Deadline deadline) {
    (void)waker;
    (void)deadline;
    return false;
  }
};

// What a notification listener receives: everything published to any of `topics` (exact names,
// such as "notifications.info"). Listeners with the same non-empty `pool` share the work: each
// notification goes to one of them. Every pool, and every listener without a pool, gets its own
// copy of each notification.
struct Subscription {
  std::vector<std::string> topics;
  std::string pool;
};

// Counters of a transport that routes notifications itself (in memory; the ZeroMQ broker).
struct NotificationStats {
  uint64_t published = 0;     // notifications published
  uint64_t unrouted = 0;      // published to a topic with no subscriber and no pool
  uint64_t delivered = 0;     // deliveries to listeners (redeliveries count again)
  uint64_t acknowledged = 0;
  uint64_t requeued = 0;      // by requeue(), and held by a pooled listener that closed
  uint64_t overflowed = 0;    // copies dropped at a full queue
  uint64_t exhausted = 0;     // dropped after their last allowed delivery
  uint64_t unsubscribedDropped = 0;  // an unpooled listener's copies left when it closed
  uint64_t queuedNow = 0;
};

// A transport. Thread-safe. It must outlive every listener and channel it made.
class Transport {
 public:
  virtual ~Transport() = default;
  Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Starts taking messages for `address` (topic and server required, fanout ignored: a server
  // listener also receives the topic's fanout messages and those for any server of the topic).
  virtual Result<std::unique_ptr<Listener>> listen(const Address& address) = 0;
  // Opens a client channel whose replies go to `onReply` and link events to `onLink` (either
  // may be empty).
  virtual Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                             LinkCallback onLink) = 0;
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply) {
    return openChannel(std::move(onReply), LinkCallback());
  }

  // Notifications. Publishes `bytes` to `topic` without blocking; delivery is not confirmed
  // (each transport documents what it guarantees). kOverloaded when the transport has no room.
  virtual Status publish(std::string_view topic, std::string bytes) = 0;
  // Starts receiving what is published to `subscription.topics` from now on. Polled messages
  // are acknowledged or requeued by the receiver; kInvalidTarget without a topic.
  virtual Result<std::unique_ptr<Listener>> subscribe(const Subscription& subscription) = 0;
};

}  // namespace switchboard
