// ZmqTransport: the ZeroMQ transport. A server listens with a ROUTER bound to the URL; each
// client channel is a DEALER connected to it, driven by an I/O thread of its own.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "transports/transport.h"

namespace switchboard {

namespace detail {
class ZmqShared;
}

// One ZeroMQ context, shared by every ZmqTransport made from it (inproc:// endpoints work only
// within one context). Thread-safe. Must outlive its transports.
class ZmqContext final {
 public:
  ZmqContext();
  ~ZmqContext();
  ZmqContext(const ZmqContext&) = delete;
  ZmqContext& operator=(const ZmqContext&) = delete;
  void* handle() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Routing over ZeroMQ is by URL: listen() binds this transport's URL whatever the Address's
// topic and server (they travel in the messages), and every channel connects to it.
// Socket rules: ROUTER_MANDATORY, non-blocking sends, bounded LINGER, MAXMSGSIZE, ZMTP
// heartbeats; clients use IMMEDIATE and keep unsent requests until their deadline. A server
// accepts a REQ peer's empty delimiter frame and mirrors it in the reply.
// Link events (a channel opened with an `onLink` callback; tcp:// and ipc:// only, inproc://
// reports nothing), from ZeroMQ's socket monitor, on the channel's I/O thread:
//  - kUp when the ZMTP handshake with the listener succeeds;
//  - kDown when an up link is lost (listener closed, connection reset, heartbeat timeout);
//  - kRefused, while no link is up, for every failed attempt: a connect that failed (repeated at
//    every retry, ZMQ_RECONNECT_IVL apart) or a failed handshake.
// ZeroMQ keeps reconnecting after kDown and kRefused; a later kUp says it got through.
// Thread-safe; must outlive its listeners and channels.
class ZmqTransport final : public Transport {
 public:
  struct Options {
    size_t maxMessageBytes = 16u << 20;  // ZMQ_MAXMSGSIZE: larger messages drop the peer
    int lingerMs = 200;                  // ZMQ_LINGER of every socket
    int heartbeatIvlMs = 1000;           // ZMTP heartbeats: ping interval,
    int heartbeatTimeoutMs = 3000;       // and how long without traffic drops the peer
    int sendHighWaterMark = 10000;       // ZMQ_SNDHWM / ZMQ_RCVHWM
    size_t maxFrames = 3;                // identity, optional delimiter, body
    LogSink log = stderrLogSink();
  };

  // Counters since construction.
  struct Stats {
    uint64_t received = 0;        // messages handed to a listener
    uint64_t malformedDropped = 0;  // too many frames, empty body...
    uint64_t repliesSent = 0;
    uint64_t repliesDropped = 0;  // peer gone (ROUTER_MANDATORY) or high-water mark
    uint64_t sendsExpired = 0;    // client messages not sent before their deadline
  };

  // `url` is tcp://host:port (port 0 or * picks one), ipc://path or inproc://name.
  ZmqTransport(ZmqContext& context, std::string url, Options options);
  ZmqTransport(ZmqContext& context, std::string url);
  ~ZmqTransport() override;

  Result<std::unique_ptr<Listener>> listen(const Address& address) override;
  // kTransportError when the channel cannot be set up (a URL ZeroMQ rejects, no descriptors
  // left); an absent listener is not a failure but kRefused link events. Without `onLink` no
  // socket monitor is made.
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                     LinkCallback onLink) override;
  using Transport::openChannel;

  const std::string& url() const;
  // The endpoint the last listen() bound, with the real port for tcp port 0 or *.
  std::string boundEndpoint() const;
  Stats stats() const;

 private:
  std::shared_ptr<detail::ZmqShared> shared_;
};

}  // namespace switchboard
