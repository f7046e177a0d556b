// MsgpackRpcTcpTransport: standard MessagePack-RPC over plain TCP (msgpack+tcp://host:port), the
// stream framing every stock MessagePack-RPC client speaks: one MessagePack array after another,
// no length prefix. A listener accepts connections on the URL's port; each client channel is one
// connection to it. One Boost.Asio I/O thread per transport does every read, write, accept and
// timer of its listener and channels (see docs/ARCHITECTURE.md); Boost.Asio stays in the .cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/log.h"
#include "base/status.h"
#include "transports/transport.h"

namespace switchboard {

namespace detail {
class TcpShared;
}

// Routing is by URL, as over ZeroMQ: listen() accepts every message sent to the port whatever
// the Address's topic and server (a stock client has no Address), and every channel connects
// to the URL.
// Server side: each message read must be an array whose first element is a request (0), a
// notification (2) or a cancel (4); anything else (not MessagePack, another shape, over a limit
// of Options) loses the framing of the stream, so the connection is closed, counted
// (Stats::badPeers) and logged with back-off. Replies go back on the connection the message came
// on, in the order reply() is called.
// Back-pressure: a connection whose bytes held by the transport (read but not yet polled, plus
// replies not yet written) exceed Options::maxBufferedBytes is not read from until they fall
// below it; the peer's sends then wait in TCP. A reply to a connection that is gone is dropped
// and counted (Stats::repliesDropped).
// Connections: more than maxConnections at once are closed at accept (Stats::connectionsRefused);
// one without traffic either way for idleTimeoutMs is closed (Stats::idleClosed); TCP keepalive
// finds peers that vanished (half-open connections) and resets them.
// Client side: a channel connects at once and reconnects after a loss or a refusal, waiting
// reconnectIvlMs, doubled after each failed attempt up to reconnectIvlMaxMs. Link events (with
// an `onLink` callback), on the I/O thread: kUp once connected; kDown when an up connection is
// lost (and then a reconnect); kRefused for every failed attempt. Messages sent while no
// connection is up wait for one until their deadline (Stats::sendsExpired, checked at each
// attempt and each write); those written to a connection that is then lost are gone
// (Stats::sendsLost): RpcClient's deadlines and Network's link handling deal with them.
// Notifications: not over this transport: publish() and subscribe() fail with kInvalidState.
// Thread-safe; must outlive its listeners, channels and the messages they took.
class MsgpackRpcTcpTransport final : public Transport {
 public:
  static constexpr std::string_view kScheme = "msgpack+tcp://";

  struct Options {
    // What one message may be; the same defaults as the codec's DecodeLimits. A peer that sends
    // more is disconnected. The server decodes each body again with its own limits.
    size_t maxMessageBytes = size_t{16} << 20;
    size_t maxArray = size_t{1} << 20;   // elements of one array
    size_t maxMap = size_t{1} << 20;     // pairs of one map
    size_t maxString = size_t{8} << 20;  // bytes of one str
    size_t maxBinary = size_t{16} << 20;  // bytes of one bin
    size_t maxExt = size_t{1} << 20;      // bytes of one ext
    size_t maxDepth = 64;                 // nesting of arrays and maps
    // Per connection: bytes the transport holds for it (see back-pressure above); for a channel,
    // what send() may queue before it answers kOverloaded.
    size_t maxBufferedBytes = size_t{64} << 20;
    size_t maxConnections = 1024;  // per listener
    int idleTimeoutMs = 120000;    // server connections; 0: never
    int keepAliveIdleS = 10;       // TCP keepalive: first probe after this much silence,
    int keepAliveIntervalS = 5;    // then one every this often,
    int keepAliveCount = 3;        // and the connection resets after this many unanswered
    int lingerMs = 200;            // how long a closing connection may still write
    int reconnectIvlMs = 100;
    int reconnectIvlMaxMs = 5000;
    LogSink log = stderrLogSink();
  };

  // Counters since construction.
  struct Stats {
    uint64_t received = 0;            // messages handed to a listener's queue
    uint64_t badPeers = 0;            // connections closed for bad input
    uint64_t repliesSent = 0;         // replies written to their connection
    uint64_t repliesDropped = 0;      // replies to a connection that is gone
    uint64_t sendsExpired = 0;        // client messages not written before their deadline
    uint64_t sendsLost = 0;           // client messages written to a connection then lost
    uint64_t connectionsAccepted = 0;
    uint64_t connectionsRefused = 0;  // over maxConnections
    uint64_t idleClosed = 0;
    uint64_t readsPaused = 0;         // times a connection was paused for back-pressure
  };

  // kInvalidTarget unless `url` is msgpack+tcp://host:port, the port 0 to 65535 (0 or * picks
  // one on listen) and the host an IP address or a name.
  static Status checkUrl(std::string_view url);

  // `url` as checkUrl accepts it; with another, listen() and openChannel() fail kInvalidTarget.
  // Starts the I/O thread.
  MsgpackRpcTcpTransport(std::string url, Options options);
  explicit MsgpackRpcTcpTransport(std::string url);
  // Joins the I/O thread once what its listeners and channels left closing is done (bounded by
  // lingerMs).
  ~MsgpackRpcTcpTransport() override;

  // kTransportError when the address cannot be bound (in use, not local) or resolved.
  Result<std::unique_ptr<Listener>> listen(const Address& address) override;
  // kTransportError when the host cannot be resolved; an absent listener is not a failure but
  // kRefused link events.
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                     LinkCallback onLink) override;
  using Transport::openChannel;

  // kInvalidState: MessagePack-RPC over TCP carries calls and casts only.
  Status publish(std::string_view topic, std::string bytes) override;
  Result<std::unique_ptr<Listener>> subscribe(const Subscription& subscription) override;

  const std::string& url() const;
  // msgpack+tcp://host:port of the last listen(), with the real port for port 0 or *.
  std::string boundEndpoint() const;
  Stats stats() const;

 private:
  std::shared_ptr<detail::TcpShared> shared_;
};

}  // namespace switchboard
