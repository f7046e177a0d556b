// NetworkCore: what a Network handle and the RpcClients made on it share: the connections and
// their states, the message-id authority, the calls in flight and every timer.
// An RpcClient on a single Transport uses one too, in direct mode: one channel that is connected
// from the start and never handshaken, pinged or failed over (the transport routes).
#pragma once

#include <array>
#include <atomic>
#include <boost/container/small_vector.hpp>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "messaging/detail/wire.h"
#include "messaging/network.h"

namespace switchboard::detail {

// What a client makes of each outcome of its calls before its callback gets it (its
// serializer, its exception types). Shared by the client's calls, which may end after it.
class OutcomeFilter {
 public:
  virtual ~OutcomeFilter() = default;
  virtual Result<Value> apply(Result<Value> outcome) const = 0;
};

// Where a call's one outcome goes, as the server sent it (its error, or its result not yet
// deserialized): to `done`, through `filter`. Two members rather than one closure over both,
// which std::function would allocate for every call.
struct RawOutcome {
  std::shared_ptr<const OutcomeFilter> filter;
  std::function<void(Result<Value>)> done;
  void operator()(Result<Value> outcome) const { done(filter->apply(std::move(outcome))); }
};

struct OutgoingCall {
  Address to;
  RequestMessage request;  // its msgid is given by the network (again on a replay)
  Duration timeout;        // from when the network takes the call
  std::optional<Duration> monitor;  // the call monitor: see RpcClient::Options
  bool idempotent = false;          // safe to re-send to another server after a failure
};

// One subscriber's callback. While it runs it is moved out of the slot, so release() can wait
// for it to finish (or, from the callback itself, leave its destruction to the delivery).
struct EventSlot {
  std::mutex mutex;
  std::condition_variable idle;
  std::function<void(const NetworkEvent&)> onEvent;  // guarded by mutex
  std::thread::id runningOn;                          // guarded by mutex
  bool released = false;                              // guarded by mutex
};
// Unregistered slots: waits until the callback is not running, then destroys it.
void releaseSlot(EventSlot& slot);
// Runs the slot's callback unless released; returns what it threw, if it did.
std::exception_ptr deliverTo(EventSlot& slot, const NetworkEvent& event);

class NetworkCore : public std::enable_shared_from_this<NetworkCore> {
 public:
  // Made with std::make_shared (channels hold it weakly). A network over `connector`'s servers.
  NetworkCore(Connector& connector, Network::Options options);
  // Direct mode: one channel of `transport`.
  NetworkCore(Transport& transport, LogSink log);
  ~NetworkCore();
  NetworkCore(const NetworkCore&) = delete;
  NetworkCore& operator=(const NetworkCore&) = delete;

  // Validates the options and starts connecting. Once, right after construction.
  Status start();

  Deadline now() const { return timers_->now(); }
  // `done` gets exactly one outcome, on a network thread or the caller's.
  void call(OutgoingCall call, RawOutcome done);
  // call(), then the calling thread receives the replies of the channel the call went out on
  // (ClientChannel::receiveUntil()) until `waker` is woken (`done` does it), the connection goes
  // down, the network stops or `giveUp` passes. Returns at once where the call was not sent or
  // the transport cannot lend the channel; the caller then waits for `done` as after call().
  void callAndReceive(OutgoingCall call, RawOutcome done, ReceiveWaker& waker, Deadline giveUp);
  // To the selected server; with to.fanout to every connected one. Dropped (and counted by the
  // transport) if it could not be handed to the socket within `timeout`.
  Status cast(const Address& to, const NotificationMessage& cast, Duration timeout);

  void addSubscription(std::shared_ptr<EventSlot> slot);
  void removeSubscription(const std::shared_ptr<EventSlot>& slot);
  Status switchTo(const std::string& server);
  Status setServers(std::vector<std::string> urls);
  NetworkStatus status() const;
  Network::Stats stats() const;
  void stop();

 private:
  void stop(bool destroying);
  struct Server {
    std::string url;
    ConnectionState state = ConnectionState::kDisconnected;
    uint64_t connection = 0;  // the current connection's id; 0 when there is none
    std::shared_ptr<ClientChannel> channel{};  // while connecting or connected
    std::optional<uint32_t> ping{};          // the handshake or ping awaiting its answer
    size_t inFlight = 0;
    uint32_t failures = 0;
    bool listed = true;  // false once setServers() left it out: neither wanted nor usable
    bool draining = false;  // it said so (ping, refusal): no new call; closes once drained
    std::unordered_set<uint32_t> retired{};  // ids of expired calls sent on this connection
    std::deque<uint32_t> retiredOrder{};
  };

  struct Pending {
    RawOutcome done;
    Address to;
    std::optional<RequestMessage> request;  // kept until answered: it may be sent again
    Deadline deadline;
    std::optional<Duration> monitor;
    bool idempotent = false;
    uint64_t sequence = 0;    // call order
    Deadline started{};       // when call() took it: the latency recorded with its outcome
    int server = -1;          // where it was sent; -1 while it waits for a main server
    uint64_t connection = 0;  // the connection it was sent on
    uint64_t expiry = 0;  // its entry in expiries_ (0: none)
  };

  // When a call expires. An entry counts while its call is pending with the same stamp; the
  // others are stale, dropped when they reach the top or at a compaction.
  struct Expiry {
    Deadline at;
    uint32_t id = 0;
    uint64_t stamp = 0;
    bool operator>(const Expiry& other) const { return at > other.at; }
  };

  // Replies decoded and handled per turn of the lock (see onReplies).
  static constexpr size_t kReplyChunk = 16;

  // What a locked section decided to do once the lock is released.
  struct Effects {
    // A chunk of replies, or a call, ends its calls without allocating.
    boost::container::small_vector<std::pair<RawOutcome, Result<Value>>, kReplyChunk> outcomes;
  };

  enum class StartReason { kWanted, kRetryTimer };

  // Runs fx's outcome callbacks, then delivers queued events. A callback that throws (outcome
  // or event) goes to callbackThrew(); the others still run.
  void finish(Effects& fx);
  // Logs (with back-off) and counts (callbackErrors_) what `whose` callback threw.
  void callbackThrew(std::string_view whose, std::exception_ptr thrown);
  // Counts a call's outcome and records its latency; every ended call passes here once.
  void recordOutcomeLocked(const Pending& call, StatusCode code, Deadline ended);
  void deliverEvents();
  void emitLocked(NetworkEvent::Kind kind, const std::string& server, std::string detail);
  TimerId scheduleLocked(Deadline at, std::function<void(Effects&)> task);

  // Takes a call: sends it or queues it until a server can take it. Returns the server it went
  // to while it is unanswered, else -1.
  int callLocked(OutgoingCall call, RawOutcome done, Effects& fx);
  // Wakes the callers receiving on `connection` (their calls, replayed, go elsewhere).
  void wakeReceiversLocked(uint64_t connection);
  uint32_t allocateIdLocked();
  void startConnectionLocked(int s, StartReason reason, Effects& fx);
  void sendPingLocked(int s, Effects& fx);
  void schedulePingLocked(int s);
  void connectedLocked(int s, Effects& fx);
  void connectionDownLocked(int s, const std::string& why, bool dismiss, Effects& fx);
  void reap(int s, uint64_t connection, std::shared_ptr<ClientChannel> channel);
  void closedLocked(int s, uint64_t connection);
  void chooseMainLocked();
  int selectLocked();
  // `current`: now() read lately, for the deadline budget the request carries.
  void sendLocked(uint32_t id, Pending& call, int s, Deadline current, Effects& fx);
  void dispatchWaitingLocked(Effects& fx);
  void failLocked(uint32_t id, Status why, Effects& fx);
  void retireLocked(Server& server, uint32_t id);
  void armExpiryLocked();
  void expireLocked(Effects& fx);
  Deadline expiryOf(const Pending& call) const;
  // (Re)sets when call `id` expires, to expiryOf(call).
  void setExpiryLocked(uint32_t id, Pending& call);
  // True while `entry` is its pending call's current expiry.
  bool isLiveLocked(const Expiry& entry) const;
  // The earliest live entry of expiries_ (stale ones above it are dropped); null when none.
  const Expiry* nextExpiryLocked();
  Duration backoffLocked(const Server& server);
  bool isWantedLocked(int s) const;
  bool isUsableLocked(int s) const;  // listed, connected, not draining: may take calls
  void leaveLocked(int s, Effects& fx);
  void drainLocked(int s, Effects& fx);
  void replaceMainLocked(int s, const std::string& why, Effects& fx);
  void resendLocked(uint32_t id);
  void closeIfDrainedLocked(int s, Effects& fx);
  int serverOf(uint64_t connection) const;

  // The caller holds a handle to this core (outcomes run in between may drop the others).
  void onReplies(uint64_t connection, std::span<const std::string_view> replies);
  // One reply of a batch, received at `received`; it may close `connection`, whose later
  // replies then count late.
  void onReplyLocked(uint64_t connection, DecodedMessage& decoded, Deadline received,
                     Effects& fx);
  void onLink(uint64_t connection, LinkEvent event, std::string_view detail);
  void onPingAnswerLocked(int s, bool handshake, const ResponseMessage& answer, Effects& fx);

  const bool direct_;
  std::unique_ptr<Connector> ownedConnector_;  // direct mode
  Connector& connector_;
  const Network::Options options_;
  std::unique_ptr<ThreadTimerQueue> ownedTimers_;
  TimerQueue* const timers_;
  const DecodeLimits limits_;

  mutable std::mutex mutex_;
  bool stopped_ = false;                 // guarded by mutex_
  bool released_ = false;                // guarded by mutex_: stop() freed everything
  std::vector<Server> servers_;          // guarded by mutex_
  int main_ = -1;                        // guarded by mutex_
  int wanted_ = 0;                       // guarded by mutex_
  bool mainFailed_ = false;              // guarded by mutex_: the next main is a failover
  size_t roundRobin_ = 0;                // guarded by mutex_
  uint64_t nextConnection_ = 1;          // guarded by mutex_
  uint64_t nextSequence_ = 0;            // guarded by mutex_
  uint32_t nextId_ = 0;                  // guarded by mutex_: the message-id authority
  std::unordered_map<uint32_t, Pending> pending_;  // guarded by mutex_
  std::unordered_map<uint32_t, int> pings_;        // guarded by mutex_: ping id -> server
  std::deque<uint32_t> waiting_;                   // guarded by mutex_: calls in call order
  // guarded by mutex_: a min-heap on `at`; no allocation per call, unlike a tree of deadlines
  std::vector<Expiry> expiries_;
  uint64_t lastExpiryStamp_ = 0;  // guarded by mutex_
  Deadline expiryArmedAt_ = kNoDeadline;           // guarded by mutex_
  uint64_t nextTimerKey_ = 1;                      // guarded by mutex_
  std::unordered_map<uint64_t, TimerId> timerIds_;  // guarded by mutex_: scheduled, not run
  std::vector<std::shared_ptr<ClientChannel>> unreleased_;  // guarded by mutex_
  // Callers receiving on a channel (callAndReceive()), and the connection they receive on
  struct Receiver {
    uint64_t connection = 0;
    ReceiveWaker* waker = nullptr;
  };
  std::vector<Receiver> receivers_;                // guarded by mutex_
  std::condition_variable receiversLeft_;          // receivers_ became empty
  std::vector<std::shared_ptr<EventSlot>> slots_;  // guarded by mutex_
  std::deque<NetworkEvent> events_;                // guarded by mutex_
  bool delivering_ = false;                        // guarded by mutex_
  std::atomic<bool> eventsQueued_{false};  // written under mutex_: events_ may be non-empty
  std::mt19937_64 random_;                         // guarded by mutex_

  std::atomic<uint64_t> calls_{0}, replayed_{0}, failovers_{0}, timeouts_{0}, peerLost_{0},
      heartbeats_{0}, lateReplies_{0}, badReplies_{0}, dismissals_{0}, connectAttempts_{0},
      pingsSent_{0}, callbackErrors_{0};
  std::array<std::atomic<uint64_t>, kStatusCodeCount> outcomes_{};  // calls ended, by code
  LatencyHistogram callLatency_;  // call() to outcome, every outcome
};

}  // namespace switchboard::detail
