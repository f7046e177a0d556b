// ZmqTransport: the ZeroMQ transport. A server listens with a ROUTER bound to the URL; each
// client channel is a DEALER connected to it, received from by an I/O thread of its own (or by a
// caller waiting for its reply: ClientChannel::receiveUntil). Replies
// go out on the replying thread; requests on the caller's while the channel is idle, else in a
// batch from the I/O thread (see docs/ARCHITECTURE.md).
#pragma once

#include <cstdint>
#include <memory>
#include <set>
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

class ZmqTransport;

// One ZeroMQ context, shared by every ZmqTransport made from it (inproc:// endpoints work only
// within one context). Thread-safe. Must outlive its transports.
// It also owns the context's ZAP handler (RFC 27), which the first CURVE listener starts: a
// thread bound to inproc://zeromq.zap.01 that admits a CURVE client only when its public key is
// in the allow-list of the listener it connects to. The destructor stops and joins that thread
// before the context terminates.
class ZmqContext final {
 public:
  ZmqContext();
  ~ZmqContext();
  ZmqContext(const ZmqContext&) = delete;
  ZmqContext& operator=(const ZmqContext&) = delete;
  // The zmq::context_t (for tests that drive raw ZeroMQ peers in this context).
  void* handle() const;

 private:
  friend class ZmqTransport;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// CURVE keys (zmq_curve(7)) as Z85 text: 40 characters for 32 bytes.
struct CurveKeyPair {
  std::string publicKey;
  std::string secretKey;
};

// True when `key` is 40 characters of Z85 text (a CURVE public or secret key).
bool isZ85Key(std::string_view key);
// A fresh key pair. kTransportError when this libzmq has no CURVE.
Result<CurveKeyPair> makeCurveKeyPair();
// The public key of a secret key. kInvalidTarget when `secretKey` is not a Z85 key,
// kTransportError when this libzmq has no CURVE.
Result<std::string> curvePublicKeyOf(std::string_view secretKey);

// Key files hold one Z85 key: 40 characters and a newline (surrounding blanks are ignored).
// Errors: kTransportError when the file cannot be read or written (the message has the path
// and the system's reason), kInvalidTarget when its content is not a key.
Result<std::string> readZ85KeyFile(const std::string& path);
// Creates `path` with `mode` (0600 for a secret key; the umask cannot widen or narrow it) and
// writes `key` and a newline. Never replaces a file: kTransportError when `path` exists.
Status writeZ85KeyFile(const std::string& path, std::string_view key, unsigned mode);
// An allow-list file: one Z85 public key per line, optionally followed by blanks and a '#'
// comment; blank lines and comment lines (starting with '#', which no key does) are ignored.
// kInvalidTarget names the first line that is neither. An empty list is not an error here.
Result<std::set<std::string>> readZ85KeyListFile(const std::string& path);

// Routing over ZeroMQ is by URL: listen() binds this transport's URL whatever the Address's
// topic and server (they travel in the messages), and every channel connects to it.
// Socket rules: ROUTER_MANDATORY, non-blocking sends, bounded LINGER, MAXMSGSIZE, ZMTP
// heartbeats; clients keep requests the socket did not take until their deadline (not
// IMMEDIATE: see ZmqChannel::connect; before the link is up ZeroMQ queues them). A server
// accepts a REQ peer's empty delimiter frame and mirrors it in the reply.
// Link events (a channel opened with an `onLink` callback; tcp:// and ipc:// only, inproc://
// reports nothing), from ZeroMQ's socket monitor, on the channel's I/O thread:
//  - kUp when the ZMTP handshake with the listener succeeds;
//  - kDown when an up link is lost (listener closed, connection reset, heartbeat timeout);
//  - kRefused, while no link is up, for every failed attempt: a connect that failed (repeated at
//    every retry, ZMQ_RECONNECT_IVL apart) or a failed handshake.
// ZeroMQ keeps reconnecting after kDown and kRefused; a later kUp says it got through.
// CURVE (Options::curve...): a listener with a secret key is a CURVE server under a ZAP domain of
// its own, and admits only the clients of its allow-list; a message from an admitted client has
// the client's public key as its IncomingMessage::identity(). A refused client is logged
// (component "zap", with the reason and the client's address; with back-off) and counted
// (Stats::authRefused), and its channel sees kRefused. A plain client of a CURVE server, and a
// CURVE client of a plain one, fail the handshake (kRefused) and never reach the listener.
// Thread-safe; must outlive its listeners and channels.
class ZmqTransport final : public Transport {
 public:
  struct Options {
    size_t maxMessageBytes = 16u << 20;  // ZMQ_MAXMSGSIZE: larger messages drop the peer
    int lingerMs = 200;                  // ZMQ_LINGER of every socket
    int heartbeatIvlMs = 1000;           // ZMTP heartbeats: ping interval,
    int heartbeatTimeoutMs = 3000;       // and how long without traffic drops the peer
    int sendHighWaterMark = 10000;       // ZMQ_SNDHWM / ZMQ_RCVHWM
    // A channel's messages waiting for room past ZeroMQ's high-water mark, in bytes: a send
    // that would queue more is refused kOverloaded (one message is always taken).
    size_t maxQueuedBytes = size_t{64} << 20;
    size_t maxFrames = 3;                // identity, optional delimiter, body
    LogSink log = stderrLogSink();

    // CURVE, all keys Z85 text (40 characters). All empty: plain, no encryption.
    // Server side (listen()): this server's secret key (its public key, which clients need, is
    // curvePublicKeyOf(curveSecretKey)), and the public keys of the clients it admits. listen()
    // fails kInvalidTarget for a malformed key or an empty allow-list, and kUnauthorized when the
    // context's ZAP handler cannot run (another socket of the context owns its endpoint).
    std::string curveSecretKey;
    std::set<std::string> allowedClientKeys;
    // Client side (openChannel()): the server's public key, and this client's pair (secret in
    // curveSecretKey; curvePublicKey empty: derived from it). openChannel() fails kInvalidTarget
    // for a malformed or missing key.
    std::string curveServerKey;
    std::string curvePublicKey;
  };

  // Counters since construction.
  struct Stats {
    uint64_t received = 0;        // messages handed to a listener
    uint64_t malformedDropped = 0;  // too many frames, empty body...
    uint64_t repliesSent = 0;
    uint64_t repliesDropped = 0;  // peer gone (ROUTER_MANDATORY) or high-water mark
    uint64_t sendsExpired = 0;    // client messages not sent before their deadline
    uint64_t sendsRefused = 0;    // client messages refused: the channel's queue was full
    uint64_t authRefused = 0;     // clients the ZAP handler refused for this transport's listeners
  };

  // `url` is tcp://host:port (port 0 or * picks one), ipc://path or inproc://name.
  ZmqTransport(ZmqContext& context, std::string url, Options options);
  ZmqTransport(ZmqContext& context, std::string url);
  ~ZmqTransport() override;

  // kTransportError when the URL cannot be bound; for CURVE, see Options.
  Result<std::unique_ptr<Listener>> listen(const Address& address) override;
  // kTransportError when the channel cannot be set up (a URL ZeroMQ rejects, no descriptors
  // left); an absent listener is not a failure but kRefused link events. Without `onLink` no
  // socket monitor is made.
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                     LinkCallback onLink) override;
  using Transport::openChannel;

  // Notifications go through a ZmqNotificationBroker bound at url() (zmq_notification_broker.h;
  // protocol in docs/PROTOCOL.md). They are plain even when Options configure CURVE (the broker
  // has no CURVE yet).
  // The unacknowledged deliveries a subscriber lets the broker send it ahead.
  static constexpr uint32_t kNotificationWindow = 256;
  // The most topics one subscription may have (the broker's limit).
  static constexpr size_t kMaxSubscriptionTopics = 1024;
  // Sends to the broker on a DEALER this transport keeps (made by the first publish()), never
  // blocking: kOverloaded when that socket is at its high-water mark, kInvalidTarget for an
  // empty topic. Before the broker is reachable ZeroMQ queues what is published (up to the
  // high-water mark); what a broker that is down never gets is lost.
  Status publish(std::string_view topic, std::string bytes) override;
  // A listener with a DEALER of its own connected to the broker: it subscribes at once and
  // again every heartbeatIvlMs from poll() and when it settles a message (so a restarted broker
  // learns it again, and the broker does not expire it: poll it more often than the broker's
  // subscriberTimeout). A message's acknowledge() and requeue() tell the broker, from any
  // thread, and do nothing once the listener is closed; one destroyed unsettled is requeued;
  // reply() is kInvalidState. close() unsubscribes: what the listener held unacknowledged goes
  // back to its pool (an unpooled listener's is dropped). kInvalidTarget without a topic, with
  // an empty one or too many; kTransportError when the socket cannot be set up.
  Result<std::unique_ptr<Listener>> subscribe(const Subscription& subscription) override;

  const std::string& url() const;
  // The endpoint the last listen() bound, with the real port for tcp port 0 or *.
  std::string boundEndpoint() const;
  Stats stats() const;

 private:
  std::shared_ptr<detail::ZmqShared> shared_;
};

}  // namespace switchboard
