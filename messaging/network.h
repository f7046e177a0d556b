// Network: the client side of several servers (Electrum's network layer, kept to its rules).
// One connection per server, each in exactly one state; one message-id authority; a main server
// that carries calls, chosen with patience for the preferred one; replay of unanswered calls on
// failover when they are safe to repeat; a stop() that is bounded and frees everything.
// RpcClient::create(Network, ...) makes calls over it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/deadline.h"
#include "base/histogram.h"
#include "base/log.h"
#include "base/status.h"
#include "base/timer_queue.h"
#include "transports/transport.h"
#include "transports/transport_factory.h"

namespace switchboard {

namespace detail {
class NetworkCore;
struct EventSlot;
}  // namespace detail

// Opens a channel to one server, named by its URL. Thread-safe; must not block for long (a
// connection is established in the background and reported through the callbacks).
class Connector {
 public:
  virtual ~Connector() = default;
  Connector() = default;
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  virtual Result<std::unique_ptr<ClientChannel>> open(const std::string& server,
                                                      ReplyCallback onReply,
                                                      LinkCallback onLink) = 0;
};

// The Connector for URLs (tcp://, ipc://, inproc://, memory://): one Transport per URL made by
// `factory`, kept until the connector is destroyed. Must outlive the networks that use it.
class TransportConnector final : public Connector {
 public:
  explicit TransportConnector(TransportFactory& factory);
  TransportConnector(TransportFactory& factory, ZmqTransport::Options zmqOptions);

  Result<std::unique_ptr<ClientChannel>> open(const std::string& server, ReplyCallback onReply,
                                              LinkCallback onLink) override;

 private:
  TransportFactory& factory_;
  const ZmqTransport::Options zmqOptions_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Transport>, std::less<>> transports_;  // by mutex_
};

// How calls are spread once a main server exists.
enum class SelectionPolicy {
  kStickyPrimary,  // every call to the main server
  kRoundRobin,     // over the connected servers, in turn
  kLeastInFlight,  // to the connected server with the fewest unanswered calls (main on ties)
};

// A server's state. A server has at most one connection, and the connection is in exactly one
// of connecting, connected or closing; between connections the server is backing off (a retry
// is scheduled) or disconnected (none is: never tried, not wanted, or the network stopped).
enum class ConnectionState { kDisconnected, kConnecting, kConnected, kClosing, kBackingOff };
std::string_view connectionStateName(ConnectionState state);

struct NetworkEvent {
  enum class Kind {
    kConnecting,    // a connection attempt to `server` started
    kConnected,     // `server` answered the handshake
    kDisconnected,  // the attempt or connection to `server` ended; `detail` says why
    kMainChanged,   // `server` is the new main server (empty: there is none now)
    kAdded,         // setServers() listed `server`, which was not listed
    kRemoved,       // setServers() left `server` out (its connection closes once drained)
  };
  Kind kind;
  std::string server;
  std::string detail;
};
std::string_view networkEventKindName(NetworkEvent::Kind kind);

struct NetworkStatus {
  struct Server {
    std::string url;
    ConnectionState state = ConnectionState::kDisconnected;
    size_t inFlight = 0;    // calls sent to it and unanswered
    uint32_t failures = 0;  // consecutive failures: the back-off exponent
  };
  std::string main;             // empty when there is none
  std::vector<Server> servers;  // the listed ones, in the order they were first given
  size_t connected = 0;         // servers connected now (never counts connecting ones)
  size_t waiting = 0;           // calls waiting for a main server
};

// A cheap handle: copies share one network. Thread-safe. The connector must outlive it; the last
// handle (counting RpcClients made on it) stops it.
class Network {
 public:
  struct Options {
    std::vector<std::string> servers{};  // URLs; at least one, no duplicates
    std::string preferred{};           // the wanted main server; empty: the first one
    // On: every server is connected, and when the main server fails another connected one
    // takes over. Off: only the wanted server is ever connected or made main; calls wait for it.
    bool autoConnect = true;
    SelectionPolicy policy = SelectionPolicy::kStickyPrimary;
    std::string topic = "switchboard";  // the Address of handshakes and pings (`_health`)
    Duration connectTimeout = std::chrono::seconds(5);   // for the `_health` handshake
    Duration pingInterval = std::chrono::seconds(2);     // between application pings,
    Duration pingTimeout = std::chrono::seconds(2);      // and how long one may stay unanswered
    Duration backoffInitial = std::chrono::milliseconds(250);
    Duration backoffMax = std::chrono::seconds(30);
    double backoffJitter = 0.2;  // each delay is scaled by a random factor in [1-j, 1+j]
    uint64_t seed = 0;           // of the jitter; 0 picks one at random
    // Ids of expired calls remembered per connection, so that their late replies are told apart
    // from protocol violations; the oldest are forgotten beyond this.
    size_t retiredIdsPerConnection = 4096;
    // Receives every event from the first (subscribe() can only follow create()); released by
    // stop(). Same rules as subscribe()'s callbacks.
    std::function<void(const NetworkEvent&)> onEvent{};
    // Where every timeout runs; borrowed, must outlive the network. Null: a thread of its own.
    TimerQueue* timers = nullptr;
    LogSink log = stderrLogSink();
  };

  struct Stats {
    uint64_t calls = 0;          // calls sent (a replay counts again)
    uint64_t replayed = 0;       // calls re-sent to another connection after a failure
    uint64_t failovers = 0;      // times the main server failed and another took over
    uint64_t timeouts = 0;       // calls that ended kTimeout
    uint64_t peerLost = 0;       // calls that ended kPeerLost
    uint64_t heartbeats = 0;     // call-in-progress heartbeats received
    uint64_t lateReplies = 0;    // replies for calls no longer waiting (expired, failed over)
    uint64_t badReplies = 0;     // replies that broke the protocol
    uint64_t dismissals = 0;     // connections dropped for breaking the protocol
    uint64_t connectAttempts = 0;
    uint64_t pings = 0;          // application pings sent (handshakes included)
    uint64_t callbackErrors = 0;  // outcome or event callbacks that threw (logged, then ignored)
    std::map<std::string, uint64_t> outcomes;  // calls ended, by statusCodeName ("Ok", ...)
    HistogramSnapshot latency;  // from call() to the outcome, every outcome
  };

  // Keeps an event callback registered; release() (or the destructor) unregisters it and waits
  // until it is not running, unless called from the callback itself, so that whatever it holds
  // can be freed right after.
  class Subscription {
   public:
    Subscription() = default;
    ~Subscription() { release(); }
    Subscription(Subscription&&) noexcept = default;
    Subscription& operator=(Subscription&& other) noexcept;
    void release();

   private:
    friend class Network;
    Subscription(std::weak_ptr<detail::NetworkCore> core, std::shared_ptr<detail::EventSlot> slot)
        : core_(std::move(core)), slot_(std::move(slot)) {}
    std::weak_ptr<detail::NetworkCore> core_;
    std::shared_ptr<detail::EventSlot> slot_;
  };

  // Starts connecting (every server with auto-connect, else the wanted one). kInvalidTarget for
  // a bad server list.
  static Result<Network> create(Connector& connector, Options options);

  // Events arrive in order, one at a time, on a network thread (or the thread of the call that
  // caused them), never under a network lock; the callback may query and switch, not stop().
  // An exception it throws is logged and counted (Stats::callbackErrors), and goes no further.
  // Events before the subscription are not replayed: status() tells the state so far (or see
  // Options::onEvent).
  Subscription subscribe(std::function<void(const NetworkEvent&)> onEvent) const;

  // Makes `server` the wanted main server. (The main server otherwise stays main until it fails:
  // a preferred server that comes back does not take over by itself, so calls do not flap.)
  // If it is connected it becomes main now; otherwise
  // there is no main until it connects (calls wait), and it is connected if it is not already
  // (a server backing off is tried when its back-off ends). Switching to the current main does
  // nothing. kInvalidTarget for an unknown server.
  Status switchTo(const std::string& server) const;

  // Replaces the server list (a registry's live servers, say). New servers are connected as
  // create() would; a server left out takes no new call and its connection closes once the
  // calls sent to it are answered or fail (a main server left out is replaced at once, as on
  // failover but without counting one). A wanted server left out passes the wish to the first
  // of `servers`. An empty list is allowed: calls wait for a server until their deadlines.
  // kInvalidTarget for an empty or repeated URL; kShuttingDown once stopped.
  Status setServers(std::vector<std::string> servers) const;

  NetworkStatus status() const;
  Stats stats() const;

  // Bounded and idempotent: fails every waiting and unanswered call kShuttingDown, closes every
  // connection in every state (each close bounded by its transport's linger), cancels every
  // timer, drops every event callback. Afterwards no thread, socket, timer or callback of the
  // network remains and a connect result that comes late is discarded. From a network callback
  // it stops taking work at once and leaves the release to the next stop() or the last handle.
  void stop() const;

 private:
  friend class RpcClient;
  explicit Network(std::shared_ptr<detail::NetworkCore> core) : core_(std::move(core)) {}
  std::shared_ptr<detail::NetworkCore> core_;
};

}  // namespace switchboard
