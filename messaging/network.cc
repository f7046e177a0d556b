// Network and NetworkCore. Every state change happens under NetworkCore::mutex_ and goes through
// a few functions: startConnectionLocked (the one place a connection is made),
// connectionDownLocked (the one place one ends), chooseMainLocked and sendLocked. Channels send
// under the lock (transport sends never block) so calls leave in the order they were made;
// outcomes and events run after the lock is released; channels are destroyed on the timer
// thread or by stop(), never on a transport thread (a channel cannot be destroyed by its own).
#include "messaging/network.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "messaging/detail/network_core.h"

namespace switchboard {

std::string_view connectionStateName(ConnectionState state) {
  switch (state) {
    case ConnectionState::kDisconnected: return "disconnected";
    case ConnectionState::kConnecting: return "connecting";
    case ConnectionState::kConnected: return "connected";
    case ConnectionState::kClosing: return "closing";
    case ConnectionState::kBackingOff: return "backing off";
  }
  return "unknown";
}

std::string_view networkEventKindName(NetworkEvent::Kind kind) {
  switch (kind) {
    case NetworkEvent::Kind::kConnecting: return "connecting";
    case NetworkEvent::Kind::kConnected: return "connected";
    case NetworkEvent::Kind::kDisconnected: return "disconnected";
    case NetworkEvent::Kind::kMainChanged: return "main";
    case NetworkEvent::Kind::kAdded: return "added";
    case NetworkEvent::Kind::kRemoved: return "removed";
  }
  return "unknown";
}

TransportConnector::TransportConnector(TransportFactory& factory)
    : TransportConnector(factory, ZmqTransport::Options{}) {}

TransportConnector::TransportConnector(TransportFactory& factory,
                                       ZmqTransport::Options zmqOptions)
    : factory_(factory), zmqOptions_(std::move(zmqOptions)) {}

Result<std::unique_ptr<ClientChannel>> TransportConnector::open(const std::string& server,
                                                                ReplyCallback onReply,
                                                                LinkCallback onLink) {
  Transport* transport = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = transports_.find(server);
    if (it == transports_.end()) {
      Result<std::unique_ptr<Transport>> made = factory_.makeTransport(server, zmqOptions_);
      if (!made) return made.status();
      it = transports_.emplace(server, std::move(made).value()).first;
    }
    transport = it->second.get();
  }
  return transport->openChannel(std::move(onReply), std::move(onLink));
}

namespace detail {
namespace {

// The network whose callback (reply, link event, timer, outcome or event) this thread runs.
thread_local const NetworkCore* tlsRunningFor = nullptr;

class CallbackScope {
 public:
  explicit CallbackScope(const NetworkCore* core) : saved_(tlsRunningFor) { tlsRunningFor = core; }
  ~CallbackScope() { tlsRunningFor = saved_; }
  void enter(const NetworkCore* core) { tlsRunningFor = core; }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;

 private:
  const NetworkCore* saved_;
};

// Direct mode's connector: channels of one transport.
class DirectConnector final : public Connector {
 public:
  explicit DirectConnector(Transport& transport) : transport_(transport) {}
  Result<std::unique_ptr<ClientChannel>> open(const std::string&, ReplyCallback onReply,
                                              LinkCallback) override {
    return transport_.openChannel(std::move(onReply));
  }

 private:
  Transport& transport_;
};

std::string millis(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

// What a stopped server answers to every request it takes, calls and pings: it ran nothing, and
// is draining.
bool isDrainRefusal(const Status& error) {
  return error.code() == StatusCode::kShuttingDown && error.refused();
}

}  // namespace

NetworkCore::NetworkCore(Connector& connector, Network::Options options)
    : direct_(false),
      connector_(connector),
      options_(std::move(options)),
      ownedTimers_(options_.timers ? nullptr : std::make_unique<ThreadTimerQueue>()),
      timers_(options_.timers ? options_.timers : ownedTimers_.get()),
      random_(options_.seed != 0 ? options_.seed : std::random_device{}()) {}

NetworkCore::NetworkCore(Transport& transport, LogSink log)
    : direct_(true),
      ownedConnector_(std::make_unique<DirectConnector>(transport)),
      connector_(*ownedConnector_),
      options_(Network::Options{.servers = {"direct"}, .log = std::move(log)}),
      ownedTimers_(std::make_unique<ThreadTimerQueue>()),
      timers_(ownedTimers_.get()) {}

NetworkCore::~NetworkCore() { stop(true); }

namespace {

// kInvalidTarget for an empty URL or one listed twice.
Status validateServerList(const std::vector<std::string>& urls) {
  std::set<std::string> seen;
  for (const std::string& url : urls) {
    if (url.empty()) return Status(StatusCode::kInvalidTarget, "a server URL is empty");
    if (!seen.insert(url).second) {
      return Status(StatusCode::kInvalidTarget, "server " + url + " is listed twice");
    }
  }
  return Status::ok();
}

}  // namespace

Status NetworkCore::start() {
  if (options_.servers.empty()) {
    return Status(StatusCode::kInvalidTarget, "a network needs at least one server");
  }
  if (Status valid = validateServerList(options_.servers); !valid) return valid;
  if (options_.backoffInitial <= Duration::zero() || options_.backoffMax < options_.backoffInitial ||
      options_.backoffJitter < 0 || options_.backoffJitter >= 1) {
    return Status(StatusCode::kInvalidTarget, "back-off needs 0 < initial <= max, 0 <= jitter < 1");
  }
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const std::string& url : options_.servers) servers_.push_back(Server{.url = url});
    if (options_.onEvent) {
      auto slot = std::make_shared<EventSlot>();
      slot->onEvent = options_.onEvent;
      slots_.push_back(std::move(slot));
    }
    if (!options_.preferred.empty()) {
      auto it = std::find(options_.servers.begin(), options_.servers.end(), options_.preferred);
      if (it == options_.servers.end()) {
        return Status(StatusCode::kInvalidTarget,
                      "preferred server " + options_.preferred + " is not in the server list");
      }
      wanted_ = static_cast<int>(it - options_.servers.begin());
    }
    for (int s = 0; s < static_cast<int>(servers_.size()); ++s) {
      if (isWantedLocked(s)) startConnectionLocked(s, StartReason::kWanted, fx);
    }
    if (direct_ && servers_[0].state != ConnectionState::kConnected) {
      return Status(StatusCode::kTransportError, "cannot open a channel");
    }
  }
  finish(fx);
  return Status::ok();
}

// ----- effects, events, timers

// Runs the outcomes and delivers the events. The callers destroy `fx` last and touch nothing of
// the network after it: the outcomes may hold the last handle to it.
void NetworkCore::finish(Effects& fx) {
  {
    CallbackScope scope(this);
    for (auto& [done, outcome] : fx.outcomes) {
      try {
        done(std::move(outcome));
      } catch (...) {
        callbackThrew("a call's outcome", std::current_exception());
      }
    }
  }
  deliverEvents();
}

void NetworkCore::callbackThrew(std::string_view whose, std::exception_ptr thrown) {
  std::string what = "an exception not derived from std::exception";
  try {
    std::rethrow_exception(std::move(thrown));
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  const uint64_t n = callbackErrors_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (isLoggedOccurrence(n)) {
    options_.log(LogLevel::kError, "network",
                 std::string(whose) + " callback threw: " + what,
                 {{"callback_errors", std::to_string(n)}});
  }
}

void NetworkCore::emitLocked(NetworkEvent::Kind kind, const std::string& server,
                             std::string detail) {
  if (direct_) return;
  options_.log(kind == NetworkEvent::Kind::kDisconnected ? LogLevel::kWarning : LogLevel::kInfo,
               "network",
               std::string(networkEventKindName(kind)) + " " + server +
                   (detail.empty() ? "" : ": " + detail),
               {{"event", std::string(networkEventKindName(kind))},
                {"server", server},
                {"detail", detail}});
  if (slots_.empty()) return;
  events_.push_back(NetworkEvent{kind, server, std::move(detail)});
  eventsQueued_.store(true, std::memory_order_relaxed);
}

void releaseSlot(EventSlot& slot) {
  std::function<void(const NetworkEvent&)> dropped;
  std::unique_lock<std::mutex> lock(slot.mutex);
  slot.released = true;
  if (slot.runningOn == std::this_thread::get_id()) return;  // from the callback: deliverTo drops it
  slot.idle.wait(lock, [&] { return slot.runningOn == std::thread::id(); });
  dropped = std::move(slot.onEvent);
  lock.unlock();
  // `dropped`, and whatever the callback held, is destroyed here.
}

std::exception_ptr deliverTo(EventSlot& slot, const NetworkEvent& event) {
  std::unique_lock<std::mutex> lock(slot.mutex);
  if (slot.released || !slot.onEvent) return nullptr;
  std::function<void(const NetworkEvent&)> onEvent = std::move(slot.onEvent);
  slot.runningOn = std::this_thread::get_id();
  lock.unlock();
  std::exception_ptr thrown;
  try {
    onEvent(event);
  } catch (...) {
    thrown = std::current_exception();
  }
  lock.lock();
  slot.runningOn = {};
  if (!slot.released) slot.onEvent = std::move(onEvent);
  slot.idle.notify_all();
  lock.unlock();
  // A slot released meanwhile: `onEvent` is destroyed here.
  return thrown;
}

// One thread at a time delivers, in order; the others leave their events to it. A callback may
// drop the last handle to the network: it is kept alive until the delivery is over, and then
// released inside the CallbackScope (see stop()).
void NetworkCore::deliverEvents() {
  // Set under mutex_ by the thread that queued an event, before it gets here: a call or a reply
  // that queued none takes no lock for events.
  if (!eventsQueued_.load(std::memory_order_relaxed)) return;
  std::unique_lock<std::mutex> lock(mutex_);
  if (events_.empty()) eventsQueued_.store(false, std::memory_order_relaxed);
  if (delivering_ || events_.empty()) return;
  delivering_ = true;
  lock.unlock();
  CallbackScope scope(this);
  const std::shared_ptr<NetworkCore> keep = weak_from_this().lock();  // null while destroyed
  lock.lock();
  while (!events_.empty()) {
    NetworkEvent event = std::move(events_.front());
    events_.pop_front();
    std::vector<std::shared_ptr<EventSlot>> slots = slots_;
    lock.unlock();
    for (const auto& slot : slots) {
      if (std::exception_ptr thrown = deliverTo(*slot, event)) {
        callbackThrew("a network event", std::move(thrown));
      }
    }
    slots.clear();
    lock.lock();
  }
  delivering_ = false;
  lock.unlock();  // before `keep` goes
}

void NetworkCore::addSubscription(std::shared_ptr<EventSlot> slot) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!stopped_) slots_.push_back(std::move(slot));
}

void NetworkCore::removeSubscription(const std::shared_ptr<EventSlot>& slot) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase(slots_, slot);
  }
}

TimerId NetworkCore::scheduleLocked(Deadline at, std::function<void(Effects&)> task) {
  const uint64_t key = nextTimerKey_++;
  const TimerId id = timers_->schedule(at, [this, key, task = std::move(task)] {
    CallbackScope scope(this);
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (timerIds_.erase(key) == 0 || stopped_) return;
      task(fx);
    }
    finish(fx);
  });
  timerIds_.emplace(key, id);
  return id;
}

// ----- connections

bool NetworkCore::isWantedLocked(int s) const {
  return !stopped_ && servers_[s].listed && (options_.autoConnect || s == wanted_);
}

bool NetworkCore::isUsableLocked(int s) const {
  return servers_[s].listed && !servers_[s].draining &&
         servers_[s].state == ConnectionState::kConnected;
}

int NetworkCore::serverOf(uint64_t connection) const {
  for (size_t s = 0; s < servers_.size(); ++s) {
    if (servers_[s].connection == connection) return static_cast<int>(s);
  }
  return -1;
}

uint32_t NetworkCore::allocateIdLocked() {
  uint32_t id;
  do {
    id = nextId_++;
  } while (pending_.count(id) != 0 || pings_.count(id) != 0);
  return id;
}

// The one place a connection is made. A server connecting, connected or closing keeps the
// connection it has; one backing off waits for its retry timer.
void NetworkCore::startConnectionLocked(int s, StartReason reason, Effects& fx) {
  Server& server = servers_[s];
  if (stopped_) return;
  switch (server.state) {
    case ConnectionState::kConnecting:
    case ConnectionState::kConnected:
    case ConnectionState::kClosing:
      return;
    case ConnectionState::kBackingOff:
      if (reason != StartReason::kRetryTimer) return;
      break;
    case ConnectionState::kDisconnected:
      break;
  }
  const uint64_t connection = nextConnection_++;
  server.connection = connection;
  server.state = ConnectionState::kConnecting;
  server.draining = false;
  server.retired.clear();
  server.retiredOrder.clear();
  connectAttempts_.fetch_add(1, std::memory_order_relaxed);
  emitLocked(NetworkEvent::Kind::kConnecting, server.url, {});
  // The channel may outlive this core (see stop()): its callbacks hold it only weakly, and the
  // callback that drops the last handle runs inside a CallbackScope.
  std::weak_ptr<NetworkCore> weak = weak_from_this();
  LinkCallback linkCallback;
  if (!direct_) {
    linkCallback = [weak, connection](LinkEvent event, std::string_view detail) {
      CallbackScope scope(nullptr);
      if (std::shared_ptr<NetworkCore> self = weak.lock()) {
        scope.enter(self.get());
        self->onLink(connection, event, detail);
      }
    };
  }
  Result<std::unique_ptr<ClientChannel>> channel = connector_.open(
      server.url,
      [weak, connection](std::span<const std::string_view> replies) {
        CallbackScope scope(nullptr);
        if (std::shared_ptr<NetworkCore> self = weak.lock()) {
          scope.enter(self.get());
          self->onReplies(connection, replies);
        }
      },
      std::move(linkCallback));
  if (!channel) {
    connectionDownLocked(s, "cannot open a channel: " + channel.status().message(), false, fx);
    return;
  }
  server.channel = std::move(channel).value();
  if (direct_) {
    connectedLocked(s, fx);
    return;
  }
  sendPingLocked(s, fx);  // the handshake
  scheduleLocked(now() + options_.connectTimeout, [this, s, connection](Effects& fx2) {
    if (servers_[s].connection == connection &&
        servers_[s].state == ConnectionState::kConnecting) {
      connectionDownLocked(s, "no handshake answer within " + millis(options_.connectTimeout),
                           false, fx2);
    }
  });
}

void NetworkCore::sendPingLocked(int s, Effects& fx) {
  Server& server = servers_[s];
  RequestMessage ping;
  ping.msgid = allocateIdLocked();
  ping.method = "_health";
  server.ping = ping.msgid;
  pings_.emplace(ping.msgid, s);
  pingsSent_.fetch_add(1, std::memory_order_relaxed);
  std::string bytes;
  encodeMessage(ping, bytes);
  const Duration answerWithin =
      server.state == ConnectionState::kConnecting ? options_.connectTimeout : options_.pingTimeout;
  if (Status sent = server.channel->send(Address{.topic = options_.topic}, std::move(bytes),
                                         now() + answerWithin);
      !sent) {
    connectionDownLocked(s, "cannot send a ping: " + sent.message(), false, fx);
    return;
  }
  if (server.state != ConnectionState::kConnected) return;  // the connect timeout covers it
  const uint64_t connection = server.connection;
  const uint32_t id = ping.msgid;
  scheduleLocked(now() + options_.pingTimeout, [this, s, connection, id](Effects& fx2) {
    if (servers_[s].connection == connection && servers_[s].ping == id) {
      connectionDownLocked(s, "no answer to a ping within " + millis(options_.pingTimeout), false,
                           fx2);
    }
  });
}

void NetworkCore::connectedLocked(int s, Effects& fx) {
  Server& server = servers_[s];
  server.state = ConnectionState::kConnected;
  emitLocked(NetworkEvent::Kind::kConnected, server.url, {});
  if (!direct_) schedulePingLocked(s);
  chooseMainLocked();
  if (main_ >= 0) dispatchWaitingLocked(fx);
}

// The one place a connection ends: errors, timeouts, lost links, protocol violations and failed
// validation all come here.
void NetworkCore::connectionDownLocked(int s, const std::string& why, bool dismiss, Effects& fx) {
  Server& server = servers_[s];
  if (server.state != ConnectionState::kConnecting && server.state != ConnectionState::kConnected) {
    return;
  }
  const uint64_t connection = server.connection;
  server.state = ConnectionState::kClosing;
  server.inFlight = 0;
  if (server.ping) pings_.erase(*server.ping);
  server.ping.reset();
  ++server.failures;
  if (dismiss) dismissals_.fetch_add(1, std::memory_order_relaxed);
  emitLocked(NetworkEvent::Kind::kDisconnected, server.url,
             (dismiss ? "dismissed: " : "") + why);

  // Unanswered calls: replay the ones safe to repeat, in the order they were made, under fresh
  // ids (a late reply to the first send can then never be taken for the replay's answer); fail
  // the others.
  std::vector<std::pair<uint64_t, uint32_t>> replay;  // (call order, id)
  std::vector<uint32_t> lost;
  for (auto& [id, call] : pending_) {
    if (call.connection != connection) continue;
    if (call.idempotent && call.request && now() < call.deadline) {
      replay.emplace_back(call.sequence, id);
    } else {
      lost.push_back(id);
    }
  }
  std::sort(lost.begin(), lost.end());
  for (uint32_t id : lost) {
    failLocked(id,
               Status(StatusCode::kPeerLost, "server " + server.url +
                                                 " went away with the call unanswered (" + why +
                                                 ")"),
               fx);
  }
  std::sort(replay.begin(), replay.end());
  for (auto it = replay.rbegin(); it != replay.rend(); ++it) resendLocked(it->second);

  wakeReceiversLocked(connection);  // they leave the channel to the replays and the failures
  // The channel is destroyed on the timer thread (this may be its own transport thread), or by
  // stop() if that comes first (or by a caller that receives on it, the last to let go).
  if (std::shared_ptr<ClientChannel> channel = std::move(server.channel)) {
    unreleased_.push_back(channel);
    const uint64_t key = nextTimerKey_++;
    timerIds_.emplace(key, timers_->schedule(now(), [this, key, s, connection, channel]() mutable {
      CallbackScope scope(this);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (timerIds_.erase(key) == 0) return;
        std::erase(unreleased_, channel);
      }
      reap(s, connection, std::move(channel));
    }));
  } else {
    closedLocked(s, connection);
  }

  if (s == main_) {
    main_ = -1;
    mainFailed_ = true;
    emitLocked(NetworkEvent::Kind::kMainChanged, {}, "main server " + server.url + " failed");
  }
  chooseMainLocked();
  if (main_ >= 0) dispatchWaitingLocked(fx);
}

// Puts call `id` first in line for the next server that can take it, under a fresh id (a late
// reply to an earlier send can then never be taken for its answer). Counted as a replay.
void NetworkCore::resendLocked(uint32_t id) {
  auto node = pending_.extract(id);
  node.mapped().server = -1;
  node.mapped().connection = 0;
  const uint32_t fresh = allocateIdLocked();
  node.key() = fresh;
  Pending& call = pending_.insert(std::move(node)).position->second;
  setExpiryLocked(fresh, call);  // waiting, it has no call monitor running: its deadline
  waiting_.push_front(fresh);
  replayed_.fetch_add(1, std::memory_order_relaxed);
}

// Destroys a closed connection's channel (bounded by the transport's linger), then backs off.
void NetworkCore::reap(int s, uint64_t connection, std::shared_ptr<ClientChannel> channel) {
  channel.reset();
  std::lock_guard<std::mutex> lock(mutex_);
  closedLocked(s, connection);
}

// A connection is closed: its server backs off, or rests when it is not wanted.
void NetworkCore::closedLocked(int s, uint64_t connection) {
  Server& server = servers_[s];
  if (stopped_ || server.connection != connection || server.state != ConnectionState::kClosing) {
    return;
  }
  server.connection = 0;
  if (!isWantedLocked(s)) {
    server.state = ConnectionState::kDisconnected;
    return;
  }
  server.state = ConnectionState::kBackingOff;
  scheduleLocked(now() + backoffLocked(server), [this, s](Effects& fx) {
    if (servers_[s].state != ConnectionState::kBackingOff) return;
    if (isWantedLocked(s)) {
      startConnectionLocked(s, StartReason::kRetryTimer, fx);
    } else {
      servers_[s].state = ConnectionState::kDisconnected;
    }
  });
}

Duration NetworkCore::backoffLocked(const Server& server) {
  const double exponent = std::min<double>(server.failures > 0 ? server.failures - 1 : 0, 40);
  const double base =
      std::min(static_cast<double>(options_.backoffInitial.count()) * std::pow(2.0, exponent),
               static_cast<double>(options_.backoffMax.count()));
  std::uniform_real_distribution<double> jitter(1 - options_.backoffJitter,
                                                1 + options_.backoffJitter);
  return Duration(static_cast<Duration::rep>(base * jitter(random_)));
}

// The main server: the wanted one once it is connected. With auto-connect, when the wanted one
// is not connecting (it failed, or backs off), the first connected server instead: patience
// with the wanted server while its attempt is in flight, failover only on failure.
void NetworkCore::chooseMainLocked() {
  if (main_ >= 0 || stopped_) return;
  int chosen = -1;
  if (isUsableLocked(wanted_)) {
    chosen = wanted_;
  } else if (options_.autoConnect && (!servers_[wanted_].listed ||
                                      servers_[wanted_].state != ConnectionState::kConnecting)) {
    for (size_t s = 0; s < servers_.size(); ++s) {
      if (isUsableLocked(static_cast<int>(s))) {
        chosen = static_cast<int>(s);
        break;
      }
    }
  }
  if (chosen < 0) return;
  main_ = chosen;
  if (mainFailed_) {
    failovers_.fetch_add(1, std::memory_order_relaxed);
    mainFailed_ = false;
  }
  emitLocked(NetworkEvent::Kind::kMainChanged, servers_[chosen].url, {});
}

Status NetworkCore::switchTo(const std::string& url) {
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return Status(StatusCode::kShuttingDown, "the network is stopped");
    auto it = std::find_if(servers_.begin(), servers_.end(),
                           [&](const Server& s) { return s.url == url && s.listed; });
    if (it == servers_.end()) {
      return Status(StatusCode::kInvalidTarget, "unknown server " + url);
    }
    const int s = static_cast<int>(it - servers_.begin());
    if (s == main_) return Status::ok();
    wanted_ = s;
    const bool hadMain = main_ >= 0;
    main_ = -1;
    startConnectionLocked(s, StartReason::kWanted, fx);
    chooseMainLocked();
    if (main_ >= 0) {
      dispatchWaitingLocked(fx);
    } else if (hadMain) {
      emitLocked(NetworkEvent::Kind::kMainChanged, {}, "waiting for " + url + " to connect");
    }
  }
  finish(fx);
  return Status::ok();
}

// Servers are never erased (their indexes live in timers and calls): one that leaves the list
// is marked unlisted and is neither wanted nor usable until it is listed again.
Status NetworkCore::setServers(std::vector<std::string> urls) {
  if (Status valid = validateServerList(urls); !valid) return valid;
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return Status(StatusCode::kShuttingDown, "the network is stopped");
    const std::set<std::string> listed(urls.begin(), urls.end());
    for (size_t s = 0; s < servers_.size(); ++s) {
      if (servers_[s].listed && listed.count(servers_[s].url) == 0) {
        leaveLocked(static_cast<int>(s), fx);
      }
    }
    for (const std::string& url : urls) {
      auto it = std::find_if(servers_.begin(), servers_.end(),
                             [&](const Server& server) { return server.url == url; });
      if (it == servers_.end()) {
        servers_.push_back(Server{.url = url});
      } else if (it->listed) {
        continue;
      } else {
        it->listed = true;
        it->failures = 0;
      }
      emitLocked(NetworkEvent::Kind::kAdded, url, {});
    }
    if (!servers_[wanted_].listed && !urls.empty()) {
      wanted_ = static_cast<int>(
          std::find_if(servers_.begin(), servers_.end(),
                       [&](const Server& server) { return server.url == urls.front(); }) -
          servers_.begin());
    }
    for (int s = 0; s < static_cast<int>(servers_.size()); ++s) {
      if (isWantedLocked(s)) startConnectionLocked(s, StartReason::kWanted, fx);
    }
    chooseMainLocked();
    if (main_ >= 0) dispatchWaitingLocked(fx);
  }
  finish(fx);
  return Status::ok();
}

// `s` left the server list: it takes no new call; a connection closes once its calls are
// answered (or fail), so a server that unregisters before it drains loses none of them.
void NetworkCore::leaveLocked(int s, Effects& fx) {
  Server& server = servers_[s];
  server.listed = false;
  emitLocked(NetworkEvent::Kind::kRemoved, server.url, {});
  replaceMainLocked(s, "main server " + server.url + " was removed", fx);
  if (server.state == ConnectionState::kConnecting) {
    connectionDownLocked(s, "removed from the server list", false, fx);
  } else {
    closeIfDrainedLocked(s, fx);
  }
}

// `s` said it is draining: it takes no new call (a main server is replaced, as when left out)
// and its connection closes once its calls are answered.
void NetworkCore::drainLocked(int s, Effects& fx) {
  Server& server = servers_[s];
  if (server.draining) return;
  server.draining = true;
  replaceMainLocked(s, "main server " + server.url + " is draining", fx);
  closeIfDrainedLocked(s, fx);
}

// `s` takes no new call: if it was the main server another is chosen, not counted as a failover.
void NetworkCore::replaceMainLocked(int s, const std::string& why, Effects& fx) {
  if (s != main_) return;
  main_ = -1;
  emitLocked(NetworkEvent::Kind::kMainChanged, {}, why);
  chooseMainLocked();
  if (main_ >= 0) dispatchWaitingLocked(fx);
}

void NetworkCore::closeIfDrainedLocked(int s, Effects& fx) {
  const Server& server = servers_[s];
  if ((!server.listed || server.draining) && server.state == ConnectionState::kConnected &&
      server.inFlight == 0) {
    connectionDownLocked(
        s, server.listed ? "the server is draining" : "removed from the server list", false, fx);
  }
}

// ----- calls

Deadline NetworkCore::expiryOf(const Pending& call) const {
  return call.monitor && call.server >= 0 ? std::min(call.deadline, now() + *call.monitor)
                                          : call.deadline;
}

int NetworkCore::selectLocked() {
  if (main_ < 0) return -1;
  switch (options_.policy) {
    case SelectionPolicy::kStickyPrimary:
      return main_;
    case SelectionPolicy::kRoundRobin:
      for (size_t i = 0; i < servers_.size(); ++i) {
        const size_t s = (roundRobin_ + i) % servers_.size();
        if (isUsableLocked(static_cast<int>(s))) {
          roundRobin_ = s + 1;
          return static_cast<int>(s);
        }
      }
      return main_;
    case SelectionPolicy::kLeastInFlight: {
      int best = main_;
      for (size_t s = 0; s < servers_.size(); ++s) {
        if (isUsableLocked(static_cast<int>(s)) &&
            servers_[s].inFlight < servers_[best].inFlight) {
          best = static_cast<int>(s);
        }
      }
      return best;
    }
  }
  return main_;
}

void NetworkCore::sendLocked(uint32_t id, Pending& call, int s, Deadline current, Effects& fx) {
  Server& server = servers_[s];
  call.server = s;
  call.connection = server.connection;
  ++server.inFlight;
  RequestMessage& request = *call.request;
  request.msgid = id;
  const auto budget =
      std::chrono::duration_cast<std::chrono::milliseconds>(call.deadline - current).count();
  request.ext.budgetMs = budget > 0 ? static_cast<uint64_t>(budget) : 0;
  std::string bytes;
  encodeMessage(request, bytes);
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (call.monitor) {  // liveness starts now
    setExpiryLocked(id, call);
    armExpiryLocked();
  }
  if (Status sent = server.channel->send(call.to, std::move(bytes), call.deadline); !sent) {
    failLocked(id, sent, fx);
  }
}

void NetworkCore::dispatchWaitingLocked(Effects& fx) {
  const Deadline current = now();
  while (!waiting_.empty() && main_ >= 0) {
    const uint32_t id = waiting_.front();
    waiting_.pop_front();
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.server < 0) {
      sendLocked(id, it->second, selectLocked(), current, fx);
    }
  }
}

int NetworkCore::callLocked(OutgoingCall outgoing, RawOutcome done, Effects& fx) {
  if (stopped_) {
    fx.outcomes.emplace_back(std::move(done),
                             Status(StatusCode::kShuttingDown, "the client is closed"));
    return -1;
  }
  const uint32_t id = allocateIdLocked();
  const Deadline current = now();  // one clock read for the deadline, latency and budget
  Pending call{.done = std::move(done),
               .to = std::move(outgoing.to),
               .request = std::move(outgoing.request),
               .deadline = deadlineAfter(current, outgoing.timeout),
               .monitor = outgoing.monitor,
               .idempotent = outgoing.idempotent,
               .sequence = nextSequence_++,
               .started = current};
  Pending& stored = pending_.emplace(id, std::move(call)).first->second;
  setExpiryLocked(id, stored);
  armExpiryLocked();
  const int s = selectLocked();
  if (s < 0) {
    waiting_.push_back(id);
    return -1;
  }
  sendLocked(id, stored, s, current, fx);
  return pending_.contains(id) ? s : -1;  // a failed send ended it
}

void NetworkCore::call(OutgoingCall outgoing, RawOutcome done) {
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    callLocked(std::move(outgoing), std::move(done), fx);
  }
  finish(fx);
}

void NetworkCore::callAndReceive(OutgoingCall outgoing, RawOutcome done, ReceiveWaker& waker,
                                 Deadline giveUp) {
  Effects fx;
  std::shared_ptr<ClientChannel> channel;  // where the call went
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const int s = callLocked(std::move(outgoing), std::move(done), fx);
    if (s >= 0) {
      channel = servers_[s].channel;
      receivers_.push_back({servers_[s].connection, &waker});
    }
  }
  finish(fx);
  if (!channel) return;
  channel->receiveUntil(waker, giveUp);
  channel.reset();  // before it leaves: stop() then holds the last handle
  std::lock_guard<std::mutex> lock(mutex_);
  std::erase_if(receivers_, [&](const Receiver& r) { return r.waker == &waker; });
  if (receivers_.empty()) receiversLeft_.notify_all();
}

void NetworkCore::wakeReceiversLocked(uint64_t connection) {
  for (const Receiver& r : receivers_) {
    if (r.connection == connection) r.waker->wake();
  }
}

Status NetworkCore::cast(const Address& to, const NotificationMessage& cast, Duration timeout) {
  std::string bytes;
  encodeMessage(cast, bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopped_) return Status(StatusCode::kShuttingDown, "the client is closed");
  const Deadline deadline = deadlineAfter(now(), timeout);
  if (to.fanout && !direct_) {
    size_t reached = 0;
    for (size_t s = 0; s < servers_.size(); ++s) {
      if (!isUsableLocked(static_cast<int>(s))) continue;
      if (servers_[s].channel->send(to, bytes, deadline)) ++reached;
    }
    return reached > 0 ? Status::ok()
                       : Status(StatusCode::kTransportError, "no server is connected");
  }
  const int s = selectLocked();
  if (s < 0) return Status(StatusCode::kTransportError, "no server is connected");
  return servers_[s].channel->send(to, std::move(bytes), deadline);
}

void NetworkCore::failLocked(uint32_t id, Status why, Effects& fx) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending& call = it->second;
  int owedBy = -1;  // the server the call was waiting on
  if (call.server >= 0 && servers_[call.server].connection == call.connection &&
      servers_[call.server].inFlight > 0) {
    --servers_[call.server].inFlight;
    owedBy = call.server;
  }
  if (why.code() == StatusCode::kPeerLost) peerLost_.fetch_add(1, std::memory_order_relaxed);
  if (why.code() == StatusCode::kTimeout) timeouts_.fetch_add(1, std::memory_order_relaxed);
  recordOutcomeLocked(call, why.code(), now());
  fx.outcomes.emplace_back(std::move(call.done), std::move(why));
  pending_.erase(it);
  // Last: closing the connection fails what else it owed, through here again.
  if (owedBy >= 0 && !stopped_) closeIfDrainedLocked(owedBy, fx);
}

void NetworkCore::recordOutcomeLocked(const Pending& call, StatusCode code, Deadline ended) {
  outcomes_[static_cast<size_t>(code)].fetch_add(1, std::memory_order_relaxed);
  callLatency_.record(ended - call.started);
}

void NetworkCore::retireLocked(Server& server, uint32_t id) {
  if (direct_ || options_.retiredIdsPerConnection == 0) return;
  if (server.retired.insert(id).second) server.retiredOrder.push_back(id);
  while (server.retiredOrder.size() > options_.retiredIdsPerConnection) {
    server.retired.erase(server.retiredOrder.front());
    server.retiredOrder.pop_front();
  }
}

void NetworkCore::setExpiryLocked(uint32_t id, Pending& call) {
  call.expiry = ++lastExpiryStamp_;
  expiries_.push_back(Expiry{expiryOf(call), id, call.expiry});
  std::push_heap(expiries_.begin(), expiries_.end(), std::greater<>());
  // Entries of answered calls stay until they reach the top; past twice the live ones (plus
  // some slack) the heap is rebuilt from the live ones: bounded memory, amortized O(1).
  if (expiries_.size() > 2 * pending_.size() + 64) {
    std::erase_if(expiries_, [&](const Expiry& e) {
      // `call` may not be in pending_ yet: its entry is kept regardless
      return e.stamp != call.expiry && !isLiveLocked(e);
    });
    std::make_heap(expiries_.begin(), expiries_.end(), std::greater<>());
  }
}

bool NetworkCore::isLiveLocked(const Expiry& entry) const {
  auto it = pending_.find(entry.id);
  return it != pending_.end() && it->second.expiry == entry.stamp;
}

const NetworkCore::Expiry* NetworkCore::nextExpiryLocked() {
  while (!expiries_.empty()) {
    const Expiry& top = expiries_.front();
    if (isLiveLocked(top)) return &top;
    std::pop_heap(expiries_.begin(), expiries_.end(), std::greater<>());
    expiries_.pop_back();
  }
  return nullptr;
}

void NetworkCore::armExpiryLocked() {
  const Expiry* first = nextExpiryLocked();
  if (first == nullptr) return;
  const Deadline next = first->at;
  if (next >= expiryArmedAt_) return;
  expiryArmedAt_ = next;
  scheduleLocked(next, [this, next](Effects& fx) {
    if (expiryArmedAt_ == next) expiryArmedAt_ = kNoDeadline;
    expireLocked(fx);
  });
}

void NetworkCore::expireLocked(Effects& fx) {
  const Deadline current = now();
  for (const Expiry* first = nextExpiryLocked(); first != nullptr && first->at <= current;
       first = nextExpiryLocked()) {
    const uint32_t id = first->id;
    Pending& call = pending_.at(id);
    const bool timedOut = current >= call.deadline;
    if (call.server >= 0 && servers_[call.server].connection == call.connection) {
      // Tell the server the caller gave up (best effort: a handler may watch isCancelled()).
      Server& server = servers_[call.server];
      retireLocked(server, id);
      std::string cancel;
      encodeMessage(CancelMessage{id}, cancel);
      (void)server.channel->send(call.to, std::move(cancel), current + std::chrono::milliseconds(100));
    }
    failLocked(id,
               timedOut ? Status(StatusCode::kTimeout,
                                 call.server >= 0 ? "no reply before the deadline"
                                                  : "no server became available before the deadline")
                        : Status(StatusCode::kPeerLost,
                                 "the server stopped sending call-in-progress heartbeats"),
               fx);
  }
  armExpiryLocked();
}

// ----- what the channels report

void NetworkCore::onReplies(uint64_t connection, std::span<const std::string_view> replies) {
  // Chunks of kReplyChunk, each decoded on the stack before the lock, then handled under one
  // turn of it, its outcomes run after it. No allocation per batch: one of a batch's size would
  // be a large request, for which glibc first consolidates all of its fast bins.
  for (size_t first = 0; first < replies.size(); first += kReplyChunk) {
    boost::container::small_vector<DecodedMessage, kReplyChunk> decoded;
    for (std::string_view bytes : replies.subspan(first).first(
             std::min(kReplyChunk, replies.size() - first))) {
      decoded.push_back(decodeMessage(bytes, limits_));
    }
    const Deadline received = now();  // one clock read per chunk, outside the lock
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (DecodedMessage& reply : decoded) onReplyLocked(connection, reply, received, fx);
    }
    finish(fx);
  }
}

void NetworkCore::onReplyLocked(uint64_t connection, DecodedMessage& decoded, Deadline received,
                                Effects& fx) {
  const int s = serverOf(connection);
  if (s < 0 || stopped_ || (servers_[s].state != ConnectionState::kConnecting &&
                            servers_[s].state != ConnectionState::kConnected)) {
    lateReplies_.fetch_add(1, std::memory_order_relaxed);  // from a connection that ended
    return;
  }
  Server& server = servers_[s];
  auto violation = [&](const std::string& why) {
    badReplies_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t n = badReplies_.load(std::memory_order_relaxed);
    if (direct_) {
      if (isLoggedOccurrence(n)) options_.log(LogLevel::kWarning, "client", "ignored a reply: " + why);
      return;
    }
    connectionDownLocked(s, why, true, fx);
  };
  if (!decoded) {
    violation("malformed reply: " + decoded.status().message());
  } else if (auto* heartbeat = std::get_if<HeartbeatMessage>(&decoded.message())) {
    heartbeats_.fetch_add(1, std::memory_order_relaxed);
    auto it = pending_.find(heartbeat->msgid);
    if (it != pending_.end() && it->second.connection == connection && it->second.monitor) {
      setExpiryLocked(heartbeat->msgid, it->second);
      armExpiryLocked();
    }
  } else if (auto* response = std::get_if<ResponseMessage>(&decoded.message())) {
    const uint32_t id = response->msgid;
    auto ping = pings_.find(id);
    auto call = pending_.find(id);
    if (ping != pings_.end() && ping->second == s) {
      onPingAnswerLocked(s, server.state == ConnectionState::kConnecting, *response, fx);
    } else if (call != pending_.end() && call->second.connection == connection && !direct_ &&
               isDrainRefusal(response->error)) {
      // The server is draining and did not run the call: another one may.
      if (server.inFlight > 0) --server.inFlight;
      resendLocked(id);
      drainLocked(s, fx);
      chooseMainLocked();
      if (main_ >= 0) dispatchWaitingLocked(fx);
    } else if (call != pending_.end() && call->second.connection == connection) {
      Pending& answered = call->second;
      if (server.inFlight > 0) --server.inFlight;
      recordOutcomeLocked(answered, response->error.code(), received);
      fx.outcomes.emplace_back(std::move(answered.done),
                               response->error.isOk() ? Result<Value>(std::move(response->result))
                                                      : Result<Value>(std::move(response->error)));
      pending_.erase(call);
      closeIfDrainedLocked(s, fx);
    } else if (direct_ || server.retired.count(id) != 0) {
      lateReplies_.fetch_add(1, std::memory_order_relaxed);
    } else {
      violation("reply with the unknown id " + std::to_string(id));
    }
  } else {
    violation("a server sent a message that is not a reply");
  }
}

void NetworkCore::onPingAnswerLocked(int s, bool handshake, const ResponseMessage& answer,
                                     Effects& fx) {
  Server& server = servers_[s];
  pings_.erase(answer.msgid);
  server.ping.reset();
  const bool serving = answer.error.isOk() && answer.result.isString() &&
                       answer.result.asString() == "serving";
  // A stopped server refuses the pings it takes, while it answers the calls it has.
  const bool draining =
      (answer.error.isOk() && answer.result.isString() && answer.result.asString() == "draining") ||
      isDrainRefusal(answer.error);
  // A server too busy to answer a ping still answered it.
  const bool busy = !handshake && answer.error.code() == StatusCode::kOverloaded;
  if (draining && handshake) {
    connectionDownLocked(s, "the server is draining", false, fx);
    return;
  }
  if (draining) {  // it still answers the calls it has: they are not lost
    schedulePingLocked(s);
    drainLocked(s, fx);
    return;
  }
  if (!serving && !busy) {
    connectionDownLocked(s,
                         std::string(handshake ? "handshake" : "ping") + " answer is invalid: " +
                             (answer.error.isOk() ? answer.result.toJson()
                                                  : answer.error.message()),
                         true, fx);
    return;
  }
  if (handshake) {
    connectedLocked(s, fx);
  } else {
    server.failures = 0;  // a ping answered proves the server healthy again
    schedulePingLocked(s);
  }
}

// The next ping of `s`'s current connection, one interval from now.
void NetworkCore::schedulePingLocked(int s) {
  const uint64_t connection = servers_[s].connection;
  scheduleLocked(now() + options_.pingInterval, [this, s, connection](Effects& fx) {
    if (servers_[s].connection == connection &&
        servers_[s].state == ConnectionState::kConnected && !servers_[s].ping) {
      sendPingLocked(s, fx);
    }
  });
}

void NetworkCore::onLink(uint64_t connection, LinkEvent event, std::string_view detail) {
  if (event == LinkEvent::kUp) return;  // connected means answered the handshake
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const int s = serverOf(connection);
    if (s < 0 || stopped_) return;  // a late report about a connection already gone
    connectionDownLocked(s,
                         std::string(event == LinkEvent::kRefused ? "connection refused: "
                                                                  : "link lost: ") +
                             std::string(detail),
                         false, fx);
  }
  finish(fx);
}

// ----- queries and stop

NetworkStatus NetworkCore::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  NetworkStatus out;
  if (main_ >= 0) out.main = servers_[main_].url;
  for (const Server& server : servers_) {
    if (!server.listed) continue;
    out.servers.push_back({server.url, server.state, server.inFlight, server.failures});
    if (server.state == ConnectionState::kConnected) ++out.connected;
  }
  out.waiting = waiting_.size();
  return out;
}

Network::Stats NetworkCore::stats() const {
  Network::Stats s;
  s.calls = calls_.load();
  s.replayed = replayed_.load();
  s.failovers = failovers_.load();
  s.timeouts = timeouts_.load();
  s.peerLost = peerLost_.load();
  s.heartbeats = heartbeats_.load();
  s.lateReplies = lateReplies_.load();
  s.badReplies = badReplies_.load();
  s.dismissals = dismissals_.load();
  s.connectAttempts = connectAttempts_.load();
  s.pings = pingsSent_.load();
  s.callbackErrors = callbackErrors_.load();
  for (size_t code = 0; code < kStatusCodeCount; ++code) {
    if (uint64_t n = outcomes_[code].load(); n != 0) {
      s.outcomes.emplace(statusCodeName(static_cast<StatusCode>(code)), n);
    }
  }
  s.latency = callLatency_.snapshot();
  return s;
}

void NetworkCore::stop() { stop(false); }

// Stops taking work (once), then releases every channel, timer and callback, unless this runs
// inside one of the network's own callbacks: a channel cannot be destroyed on its own thread,
// nor a timer cancelled from its task. Then an explicit stop() leaves the release to the next
// stop() or the destructor, and the destructor hands it to the timer thread.
void NetworkCore::stop(bool destroying) {
  Effects fx;
  std::vector<std::shared_ptr<ClientChannel>> channels;
  std::vector<TimerId> timers;
  std::vector<std::shared_ptr<EventSlot>> slots;
  const bool inCallback = tlsRunningFor == this;
  bool release = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopped_) {
      stopped_ = true;
      std::vector<uint32_t> ids;
      for (const auto& [id, call] : pending_) ids.push_back(id);
      std::sort(ids.begin(), ids.end());
      for (uint32_t id : ids) {
        failLocked(id, Status(StatusCode::kShuttingDown, "the client was closed with the call unanswered"), fx);
      }
      waiting_.clear();
      pings_.clear();
      events_.clear();
      main_ = -1;
      for (Server& server : servers_) {
        if (server.channel) unreleased_.push_back(std::move(server.channel));
        server.state = ConnectionState::kDisconnected;
        server.connection = 0;
        server.ping.reset();
        server.inFlight = 0;
      }
    }
    if (!released_ && (!inCallback || destroying)) {
      released_ = true;
      release = true;
      channels.swap(unreleased_);
      for (const auto& [key, id] : timerIds_) timers.push_back(id);
      timerIds_.clear();
      slots.swap(slots_);
    }
  }
  finish(fx);
  if (!release) return;
  if (!inCallback) {
    // The callers receiving on the channels, woken by their calls' failures above, leave once
    // the replies they are handing over are handled; then this holds the channels' last handles.
    std::unique_lock<std::mutex> lock(mutex_);
    receiversLeft_.wait(lock, [&] { return receivers_.empty(); });
  }
  for (const auto& slot : slots) releaseSlot(*slot);
  if (inCallback) {
    // The last handle went away in one of our callbacks (this thread may be a channel's own).
    // The timer thread destroys the channels, then its queue lets its thread end.
    std::shared_ptr<ThreadTimerQueue> queue(std::move(ownedTimers_));
    timers_->schedule(timers_->now(), [channels = std::move(channels), queue]() mutable {
      channels.clear();
      if (queue) queue->shutdown();
    });
    for (TimerId id : timers) timers_->cancel(id);
    return;
  }
  for (TimerId id : timers) timers_->cancel(id);  // waits for a running task
  channels.clear();
  if (ownedTimers_) ownedTimers_->shutdown();
}

}  // namespace detail

// ----- Network

Network::Subscription& Network::Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    release();
    core_ = std::move(other.core_);
    slot_ = std::move(other.slot_);
  }
  return *this;
}

void Network::Subscription::release() {
  if (!slot_) return;
  if (auto core = core_.lock()) core->removeSubscription(slot_);
  detail::releaseSlot(*slot_);
  slot_.reset();
  core_.reset();
}

Result<Network> Network::create(Connector& connector, Options options) {
  auto core = std::make_shared<detail::NetworkCore>(connector, std::move(options));
  if (Status s = core->start(); !s) return s;
  return Network(std::move(core));
}

Network::Subscription Network::subscribe(std::function<void(const NetworkEvent&)> onEvent) const {
  auto slot = std::make_shared<detail::EventSlot>();
  slot->onEvent = std::move(onEvent);
  core_->addSubscription(slot);
  return Subscription(core_, std::move(slot));
}

Status Network::switchTo(const std::string& server) const { return core_->switchTo(server); }
Status Network::setServers(std::vector<std::string> servers) const {
  return core_->setServers(std::move(servers));
}
NetworkStatus Network::status() const { return core_->status(); }
Network::Stats Network::stats() const { return core_->stats(); }
void Network::stop() const { core_->stop(); }

}  // namespace switchboard
