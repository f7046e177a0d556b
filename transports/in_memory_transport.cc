// InMemoryTransport: the broker (queues keyed by exchange/topic/server, listeners, channels) and
// the Listener, ClientChannel and IncomingMessage it hands out.
#include "transports/in_memory_transport.h"

#include "transports/detail/notification_router.h"

#include <atomic>
#include <cassert>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace switchboard {
namespace detail {
namespace {

constexpr std::string_view kDefaultExchange = "default";

std::string exchangeOf(const Address& address) {
  return address.exchange.empty() ? std::string(kDefaultExchange) : address.exchange;
}

// The channel whose callback this thread is running (innermost), to catch a callback that
// destroys its own channel in debug builds.
thread_local const void* tRunningChannel = nullptr;

// One queued message: its bytes and the id of the channel that sent it (for replies).
struct InMemoryEnvelope {
  std::string body;
  uint64_t channelId = 0;
};

// The reply side of one client channel. Thread-safe. deliver() runs the callback with no lock
// held; close() stops new callbacks and waits for the running ones.
class InMemoryChannelState {
 public:
  InMemoryChannelState(uint64_t id, ReplyCallback onReply)
      : id_(id), onReply_(std::move(onReply)) {}

  uint64_t id() const { return id_; }

  // Runs the callback with `bytes` on this thread; false (nothing run) once closed or when the
  // channel has no callback.
  bool deliver(std::string bytes) {
    if (!onReply_) return false;
    {
      std::lock_guard lock(mu_);
      if (!alive_) return false;
      ++running_;
    }
    // Leaves the callback even if it throws.
    struct Exit {
      InMemoryChannelState* self;
      const void* outer;
      ~Exit() {
        tRunningChannel = outer;
        std::lock_guard lock(self->mu_);
        if (--self->running_ == 0 && !self->alive_) self->idle_.notify_all();
      }
    } leave{this, tRunningChannel};
    tRunningChannel = this;
    const std::string_view reply = bytes;
    onReply_(std::span<const std::string_view>(&reply, 1));
    return true;
  }

  // After it returns no callback runs and none is running. Blocks while callbacks run; must not
  // be called from this channel's own callback. Idempotent.
  void close() {
    assert(tRunningChannel != this && "a reply callback must not destroy its own channel");
    std::unique_lock lock(mu_);
    alive_ = false;
    idle_.wait(lock, [this] { return running_ == 0; });
  }

 private:
  const uint64_t id_;
  const ReplyCallback onReply_;
  std::mutex mu_;
  std::condition_variable idle_;  // notified when running_ drops to 0 after close
  bool alive_ = true;             // guarded by mu_
  int running_ = 0;               // guarded by mu_: callbacks running now
};

// One listener's registration: its address, its fanout copies, its wake-up. Owned by the
// listener object; the broker holds a pointer to it between attach() and detach().
struct InMemoryListenerState {
  // Set before attach(), then read-only.
  std::string exchange;
  std::string topic;
  std::string server;
  std::condition_variable wake;  // notified under the broker mutex by send, interrupt, detach
  // Guarded by the broker's mutex:
  std::deque<InMemoryEnvelope> fanout;  // this listener's own fanout copies
  bool interrupted = false;             // sticky until a poll returns
  bool closed = false;
};

}  // namespace

// The shared state of one InMemoryTransport. Thread-safe; one mutex (mu_) guards all routing
// state, each listener waits on its own condition variable. Lock order: mu_ is never held while
// a channel's mutex is taken, and callbacks run with no broker lock held.
class InMemoryBroker : public std::enable_shared_from_this<InMemoryBroker> {
 public:
  using Options = InMemoryTransport::Options;
  using Stats = InMemoryTransport::Stats;

  explicit InMemoryBroker(Options options) : options_(options) {}

  Status send(uint64_t channelId, const Address& to, std::string bytes);

  // Registers `listener` (its address fields already set).
  void attach(InMemoryListenerState& listener);
  // Unregisters `listener` and drops its fanout copies; wakes its poll. Idempotent.
  void detach(InMemoryListenerState& listener);
  Status poll(InMemoryListenerState& listener, Deadline deadline, size_t maxBatch,
              std::vector<IncomingPtr>& out);
  void interrupt(InMemoryListenerState& listener);

  std::shared_ptr<InMemoryChannelState> openChannel(ReplyCallback onReply);
  // Unregisters the channel, then waits until none of its callbacks runs.
  void closeChannel(InMemoryChannelState& channel);
  // Runs the callback of channel `channelId` with `bytes`, or counts the reply as dropped.
  void reply(uint64_t channelId, std::string bytes);

  Stats stats() const;

 private:
  using QueueKey = std::tuple<std::string, std::string, std::string>;  // exchange, topic, server
  using TopicKey = std::pair<std::string, std::string>;                // exchange, topic

  // Moves up to `maxBatch` envelopes for `listener` into `taken`: server queue, fanout, topic.
  void takeLocked(InMemoryListenerState& listener, size_t maxBatch,
                  std::vector<InMemoryEnvelope>& taken);
  // Moves up to `maxBatch - taken.size()` envelopes of the queue at `key` into `taken`.
  void takeFromQueueLocked(const QueueKey& key, size_t maxBatch,
                           std::vector<InMemoryEnvelope>& taken);

  const Options options_;
  mutable std::mutex mu_;
  // Guarded by mu_: queues of server and topic messages (server "" is the topic queue); a queue
  // is erased when it empties.
  std::map<QueueKey, std::deque<InMemoryEnvelope>> queues_;
  // Guarded by mu_: the attached listeners of each topic.
  std::map<TopicKey, std::vector<InMemoryListenerState*>> listeners_;
  // Guarded by mu_: the open channels by id.
  std::unordered_map<uint64_t, std::shared_ptr<InMemoryChannelState>> channels_;
  uint64_t nextChannelId_ = 1;  // guarded by mu_
  Stats stats_;                 // guarded by mu_, except the two reply counters (below)
  std::atomic<uint64_t> repliesDelivered_{0};
  std::atomic<uint64_t> repliesDropped_{0};
};

namespace {

// A message taken by poll. Keeps the broker alive so reply() works after the listener closed.
class InMemoryIncoming final : public IncomingMessage {
 public:
  InMemoryIncoming(std::shared_ptr<InMemoryBroker> broker, InMemoryEnvelope envelope)
      : broker_(std::move(broker)),
        envelope_(std::move(envelope)),
        peer_("memory:" + std::to_string(envelope_.channelId)) {}

  std::string_view body() const override { return envelope_.body; }
  Status reply(std::string bytes) override {
    broker_->reply(envelope_.channelId, std::move(bytes));
    return Status::ok();
  }
  void acknowledge() override { acknowledged_.store(true, std::memory_order_relaxed); }
  std::string_view peer() const override { return peer_; }

 private:
  const std::shared_ptr<InMemoryBroker> broker_;
  const InMemoryEnvelope envelope_;
  const std::string peer_;
  std::atomic<bool> acknowledged_{false};  // recorded only; nothing depends on it yet
};

class InMemoryListener final : public Listener {
 public:
  InMemoryListener(std::shared_ptr<InMemoryBroker> broker, const Address& address)
      : broker_(std::move(broker)) {
    state_.exchange = exchangeOf(address);
    state_.topic = address.topic;
    state_.server = address.server;
    broker_->attach(state_);
  }
  ~InMemoryListener() override { close(); }

  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
    return broker_->poll(state_, deadline, maxBatch, out);
  }
  void interrupt() override { broker_->interrupt(state_); }
  void close() override { broker_->detach(state_); }

 private:
  const std::shared_ptr<InMemoryBroker> broker_;
  InMemoryListenerState state_;
};

class InMemoryChannel final : public ClientChannel {
 public:
  InMemoryChannel(std::shared_ptr<InMemoryBroker> broker,
                  std::shared_ptr<InMemoryChannelState> state)
      : broker_(std::move(broker)), state_(std::move(state)) {}
  ~InMemoryChannel() override { broker_->closeChannel(*state_); }

  // Never waits: a full queue gives kOverloaded at once, so `deadline` is not needed.
  Status send(const Address& to, std::string bytes, Deadline /*deadline*/) override {
    return broker_->send(state_->id(), to, std::move(bytes));
  }

 private:
  const std::shared_ptr<InMemoryBroker> broker_;
  const std::shared_ptr<InMemoryChannelState> state_;
};

}  // namespace

Status InMemoryBroker::send(uint64_t channelId, const Address& to, std::string bytes) {
  if (to.topic.empty()) {
    return Status(StatusCode::kInvalidTarget, "InMemoryTransport: send needs a topic");
  }
  std::string exchange = exchangeOf(to);
  std::lock_guard lock(mu_);
  if (to.fanout) {
    auto it = listeners_.find(TopicKey(exchange, to.topic));
    if (it == listeners_.end()) {
      ++stats_.sent;
      ++stats_.fanoutDropped;
      return Status::ok();
    }
    for (InMemoryListenerState* listener : it->second) {
      if (listener->fanout.size() >= options_.maxQueuedPerQueue) {
        return Status(StatusCode::kOverloaded, "InMemoryTransport: fanout queue of '" + to.topic +
                                                   "." + listener->server + "' is full");
      }
    }
    for (InMemoryListenerState* listener : it->second) {
      listener->fanout.push_back(InMemoryEnvelope{bytes, channelId});
      ++stats_.queuedNow;
      listener->wake.notify_all();
    }
    ++stats_.sent;
    return Status::ok();
  }
  auto [queueIt, created] = queues_.try_emplace(QueueKey(exchange, to.topic, to.server));
  std::deque<InMemoryEnvelope>& queue = queueIt->second;
  if (queue.size() >= options_.maxQueuedPerQueue) {
    if (created) queues_.erase(queueIt);  // only with maxQueuedPerQueue == 0
    return Status(StatusCode::kOverloaded,
                  "InMemoryTransport: queue of '" + to.topic +
                      (to.server.empty() ? std::string() : "." + to.server) + "' is full");
  }
  queue.push_back(InMemoryEnvelope{std::move(bytes), channelId});
  ++stats_.sent;
  ++stats_.queuedNow;
  if (auto it = listeners_.find(TopicKey(exchange, to.topic)); it != listeners_.end()) {
    for (InMemoryListenerState* listener : it->second) {
      if (to.server.empty() || listener->server == to.server) listener->wake.notify_all();
    }
  }
  return Status::ok();
}

void InMemoryBroker::attach(InMemoryListenerState& listener) {
  std::lock_guard lock(mu_);
  listeners_[TopicKey(listener.exchange, listener.topic)].push_back(&listener);
}

void InMemoryBroker::detach(InMemoryListenerState& listener) {
  std::lock_guard lock(mu_);
  if (listener.closed) return;
  listener.closed = true;
  auto it = listeners_.find(TopicKey(listener.exchange, listener.topic));
  assert(it != listeners_.end());
  std::erase(it->second, &listener);
  if (it->second.empty()) listeners_.erase(it);
  stats_.fanoutDropped += listener.fanout.size();
  stats_.queuedNow -= listener.fanout.size();
  listener.fanout.clear();
  listener.wake.notify_all();
}

void InMemoryBroker::takeFromQueueLocked(const QueueKey& key, size_t maxBatch,
                                         std::vector<InMemoryEnvelope>& taken) {
  auto it = queues_.find(key);
  if (it == queues_.end()) return;
  std::deque<InMemoryEnvelope>& queue = it->second;
  while (taken.size() < maxBatch && !queue.empty()) {
    taken.push_back(std::move(queue.front()));
    queue.pop_front();
    --stats_.queuedNow;
  }
  if (queue.empty()) queues_.erase(it);
}

void InMemoryBroker::takeLocked(InMemoryListenerState& listener, size_t maxBatch,
                                std::vector<InMemoryEnvelope>& taken) {
  takeFromQueueLocked(QueueKey(listener.exchange, listener.topic, listener.server), maxBatch,
                      taken);
  while (taken.size() < maxBatch && !listener.fanout.empty()) {
    taken.push_back(std::move(listener.fanout.front()));
    listener.fanout.pop_front();
    --stats_.queuedNow;
  }
  takeFromQueueLocked(QueueKey(listener.exchange, listener.topic, std::string()), maxBatch, taken);
}

Status InMemoryBroker::poll(InMemoryListenerState& listener, Deadline deadline, size_t maxBatch,
                            std::vector<IncomingPtr>& out) {
  std::vector<InMemoryEnvelope> taken;
  {
    std::unique_lock lock(mu_);
    for (;;) {
      if (listener.closed) {
        return Status(StatusCode::kShuttingDown, "InMemoryTransport: listener closed");
      }
      if (maxBatch == 0) return Status::ok();
      takeLocked(listener, maxBatch, taken);
      if (!taken.empty() || listener.interrupted) {
        listener.interrupted = false;
        break;
      }
      if (Clock::now() >= deadline) break;
      // Spurious wake-ups and timeouts go round again: a final look before giving up.
      if (deadline == kNoDeadline) {
        listener.wake.wait(lock);
      } else {
        listener.wake.wait_until(lock, deadline);
      }
    }
    stats_.delivered += taken.size();
  }
  out.reserve(out.size() + taken.size());
  for (InMemoryEnvelope& envelope : taken) {
    out.push_back(std::make_unique<InMemoryIncoming>(shared_from_this(), std::move(envelope)));
  }
  return Status::ok();
}

void InMemoryBroker::interrupt(InMemoryListenerState& listener) {
  std::lock_guard lock(mu_);
  listener.interrupted = true;
  listener.wake.notify_all();
}

std::shared_ptr<InMemoryChannelState> InMemoryBroker::openChannel(ReplyCallback onReply) {
  std::lock_guard lock(mu_);
  auto channel = std::make_shared<InMemoryChannelState>(nextChannelId_++, std::move(onReply));
  channels_.emplace(channel->id(), channel);
  return channel;
}

void InMemoryBroker::closeChannel(InMemoryChannelState& channel) {
  {
    std::lock_guard lock(mu_);
    channels_.erase(channel.id());
  }
  channel.close();
}

void InMemoryBroker::reply(uint64_t channelId, std::string bytes) {
  std::shared_ptr<InMemoryChannelState> channel;
  {
    std::lock_guard lock(mu_);
    if (auto it = channels_.find(channelId); it != channels_.end()) channel = it->second;
  }
  if (channel != nullptr && channel->deliver(std::move(bytes))) {
    repliesDelivered_.fetch_add(1, std::memory_order_relaxed);
  } else {
    repliesDropped_.fetch_add(1, std::memory_order_relaxed);
  }
}

InMemoryBroker::Stats InMemoryBroker::stats() const {
  Stats snapshot;
  {
    std::lock_guard lock(mu_);
    snapshot = stats_;
  }
  snapshot.repliesDelivered = repliesDelivered_.load(std::memory_order_relaxed);
  snapshot.repliesDropped = repliesDropped_.load(std::memory_order_relaxed);
  return snapshot;
}

}  // namespace detail

InMemoryTransport::InMemoryTransport() : InMemoryTransport(Options{}) {}

InMemoryTransport::InMemoryTransport(Options options)
    : broker_(std::make_shared<detail::InMemoryBroker>(options)),
      notifications_(std::make_shared<detail::NotificationRouter>(
          detail::NotificationRouter::Options{options.maxQueuedPerQueue, options.maxDeliveries})) {}

InMemoryTransport::~InMemoryTransport() = default;

Result<std::unique_ptr<Listener>> InMemoryTransport::listen(const Address& address) {
  if (address.topic.empty() || address.server.empty()) {
    return Status(StatusCode::kInvalidTarget, "InMemoryTransport: listen needs a topic and server");
  }
  return std::unique_ptr<Listener>(std::make_unique<detail::InMemoryListener>(broker_, address));
}

Result<std::unique_ptr<ClientChannel>> InMemoryTransport::openChannel(ReplyCallback onReply,
                                                                      LinkCallback /*onLink*/) {
  std::shared_ptr<detail::InMemoryChannelState> state = broker_->openChannel(std::move(onReply));
  return std::unique_ptr<ClientChannel>(
      std::make_unique<detail::InMemoryChannel>(broker_, std::move(state)));
}

InMemoryTransport::Stats InMemoryTransport::stats() const { return broker_->stats(); }

Status InMemoryTransport::publish(std::string_view topic, std::string bytes) {
  if (topic.empty()) return Status(StatusCode::kInvalidTarget, "publish needs a topic");
  notifications_->publish(topic, std::move(bytes));
  return Status::ok();
}

Result<std::unique_ptr<Listener>> InMemoryTransport::subscribe(const Subscription& subscription) {
  return detail::subscribeListener(notifications_, subscription, "memory:notifications");
}

NotificationStats InMemoryTransport::notificationStats() const { return notifications_->stats(); }

}  // namespace switchboard
