// ZmqNotificationBroker: routes notifications over ZeroMQ (a ROUTER and one thread over a
// NotificationRouter), for ZmqTransport::publish() and subscribe(); protocol in docs/PROTOCOL.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "transports/transport.h"

namespace switchboard {

class ZmqContext;

// Plain PUB/SUB can neither share work within a pool nor requeue, so notifications over ZeroMQ
// go through this broker: publishers and subscribers are DEALERs connected to its ROUTER, and
// the delivery rules are detail::NotificationRouter's (pools that outlive their members, one
// copy per pool and per unpooled subscriber, requeue, bounds). The broker delivers to a
// subscriber while that subscriber holds fewer unacknowledged deliveries than the window it
// announced; a subscriber silent for longer than Options::subscriberTimeout is unsubscribed
// (what it held goes back to its pool) and counted. Malformed messages are dropped, counted and
// logged with back-off; the broker keeps serving. Delivery is at least once for pooled
// subscribers (what a lost or expired subscriber held is delivered again) and at most once per
// connection for unpooled ones; nothing is persisted: a broker that stops forgets its queues.
// Thread-safe. Owns its thread, which start() starts and stop() (or the destructor) joins.
class ZmqNotificationBroker final {
 public:
  struct Options {
    size_t maxMessageBytes = 16u << 20;  // ZMQ_MAXMSGSIZE: larger messages drop the peer
    int lingerMs = 200;                  // ZMQ_LINGER of the ROUTER
    int heartbeatIvlMs = 1000;           // ZMTP heartbeats of the ROUTER: ping interval,
    int heartbeatTimeoutMs = 3000;       // and how long without traffic drops the peer
    int sendHighWaterMark = 10000;       // ZMQ_SNDHWM / ZMQ_RCVHWM
    size_t maxQueued = 100000;           // per pool or unpooled subscriber (router's maxQueued)
    uint32_t maxDeliveries = 5;          // attempts before a message is dropped (exhausted)
    // A subscriber that sends nothing (no S refresh, acknowledgement...) for this long is
    // unsubscribed. Subscribers refresh every heartbeat (ZmqTransport: heartbeatIvlMs).
    Duration subscriberTimeout = std::chrono::seconds(3);
    LogSink log = stderrLogSink();
  };

  // The router's counters and the broker's own.
  struct Stats : NotificationStats {
    uint64_t malformedDropped = 0;    // messages with a bad command, frame count or number
    uint64_t subscribersExpired = 0;  // unsubscribed for silence (subscriberTimeout)
    uint64_t subscribers = 0;         // subscribed now
  };

  // The most unacknowledged deliveries a subscriber may announce (larger windows are
  // malformed); at most the default high-water mark, so deliveries never meet it.
  static constexpr uint32_t kMaxWindow = 4096;

  // `context` must outlive the broker. `url`: tcp://host:port (port 0 or * picks one),
  // ipc://path or inproc://name (inproc: publishers and subscribers in the same context).
  ZmqNotificationBroker(ZmqContext& context, std::string url, Options options);
  ZmqNotificationBroker(ZmqContext& context, std::string url);
  // Stops (see stop()).
  ~ZmqNotificationBroker();
  ZmqNotificationBroker(const ZmqNotificationBroker&) = delete;
  ZmqNotificationBroker& operator=(const ZmqNotificationBroker&) = delete;

  // Binds the ROUTER, then starts the routing thread: messages sent to the broker from now on
  // are served. kTransportError when the URL cannot be bound, kInvalidState when started before.
  [[nodiscard]] Status start();
  // Ends the routing thread and joins it; its socket closes with the bounded linger. Queued
  // notifications are dropped. Idempotent; start() fails afterwards.
  void stop();

  const std::string& url() const;
  // The endpoint start() bound, with the real port for tcp port 0 or *; empty before.
  std::string boundEndpoint() const;
  Stats stats() const;
  // Waits until `condition` holds for stats(), checked now and after each turn of the routing
  // loop (a turn that took messages, served subscribers or expired one), or until `deadline`:
  // false then. `condition` runs on the calling thread and must not call the broker.
  bool waitForStats(const std::function<bool(const Stats&)>& condition, Deadline deadline) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard
