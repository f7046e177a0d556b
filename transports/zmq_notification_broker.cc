// ZmqNotificationBroker: one thread owns the ROUTER and the table of subscribers (identity,
// window, last heard from); the NotificationRouter decides who gets what and counts what each holds.
#include "transports/zmq_notification_broker.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "transports/detail/notification_router.h"
#include "transports/detail/zmq_frames.h"
#include "transports/detail/zmq_socket.h"
#include "transports/zmq_transport.h"

namespace switchboard {

namespace {

// The most frames after the identity a message may have: S with this many topics, minus 3.
constexpr size_t kMaxFrames = 1027;
// Messages received per turn before the loop serves deliveries again.
constexpr size_t kReceiveBatch = 1024;

}  // namespace

struct ZmqNotificationBroker::Impl {
  // One subscriber the broker knows, by the ROUTER identity of its connection.
  struct Peer {
    detail::NotificationRouter::SubscriberId id = 0;
    std::string pool;
    std::vector<std::string> topics;
    uint32_t window = 1;  // the most deliveries it may hold unsettled (the router counts them)
    Deadline lastHeard;
    bool stalled = false;  // its pipe was full: not served until it sends something
  };

  Impl(ZmqContext& context, std::string url, Options options)
      : context_(*static_cast<zmq::context_t*>(context.handle())),
        url_(std::move(url)),
        options_(std::move(options)),
        router_(detail::NotificationRouter::Options{options_.maxQueued, options_.maxDeliveries}) {}
  ~Impl() { stop(); }

  Status start() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (started_) return Status(StatusCode::kInvalidState, "the broker was started before");
    try {
      zmq::socket_t socket(context_, zmq::socket_type::router);
      detail::applySocketOptions(socket, options_);
      socket.set(zmq::sockopt::router_mandatory, 1);
      // A subscriber that reconnects with its routing id takes over its old connection.
      socket.set(zmq::sockopt::router_handover, 1);
      socket.bind(url_);
      boundEndpoint_ = socket.get(zmq::sockopt::last_endpoint);
      started_ = true;
      thread_ = std::thread(&Impl::run, this, std::move(socket));
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kTransportError, "cannot bind " + url_ + ": " + e.what());
    }
    return Status::ok();
  }

  void stop() {
    std::thread thread;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      started_ = true;  // no start() after stop()
      thread = std::move(thread_);
    }
    if (!thread.joinable()) return;
    stopping_.store(true);
    waker_.wake();
    thread.join();
  }

  Stats stats() const {
    Stats s;
    static_cast<NotificationStats&>(s) = router_.stats();
    s.malformedDropped = malformedDropped_.load(std::memory_order_relaxed);
    s.subscribersExpired = subscribersExpired_.load(std::memory_order_relaxed);
    s.subscribers = subscribers_.load(std::memory_order_relaxed);
    return s;
  }

  // --- The routing thread. Everything below runs on it alone. ---

  void run(zmq::socket_t socket) {
    socket_ = std::move(socket);
    const Duration sweepEvery =
        std::clamp<Duration>(options_.subscriberTimeout / 4, std::chrono::milliseconds(10),
                             std::chrono::milliseconds(500));
    Deadline nextSweep = Clock::now() + sweepEvery;
    while (!stopping_.load()) {
      try {
        receiveAll();
        serveReady();
        if (Clock::now() >= nextSweep) {
          expireSilent();
          nextSweep = Clock::now() + sweepEvery;
        }
        turnDone();
        const long timeoutMs = ready_.empty() ? detail::pollTimeoutMs(nextSweep) : 0;
        zmq_pollitem_t items[2] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                                   {nullptr, waker_.fd(), ZMQ_POLLIN, 0}};
        zmq::poll(items, 2, std::chrono::milliseconds(timeoutMs));
        if (items[1].revents != 0) waker_.drain();
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        if (e.num() == ETERM) break;
        options_.log(LogLevel::kError, "zmq-broker", std::string("routing loop: ") + e.what(),
                     {{"url", url_}});
        break;
      } catch (const std::exception& e) {  // none may leave the thread
        options_.log(LogLevel::kError, "zmq-broker", std::string("routing loop: ") + e.what(),
                     {{"url", url_}});
        break;
      }
    }
    for (auto& [identity, peer] : peers_) router_.unsubscribe(peer.id);
    peers_.clear();
    subscribers_.store(0);
    turnDone();
    socket_.close();  // bounded by ZMQ_LINGER
  }

  // Wakes waitForStats() callers: the counters may have moved.
  void turnDone() {
    std::lock_guard<std::mutex> lock(turnMutex_);
    turnDone_.notify_all();
  }

  bool waitForStats(const std::function<bool(const Stats&)>& condition, Deadline deadline) {
    std::unique_lock<std::mutex> lock(turnMutex_);
    return turnDone_.wait_until(lock, deadline, [&] { return condition(stats()); });
  }

  // Takes up to kReceiveBatch messages now queued at the ROUTER.
  void receiveAll() {
    std::vector<std::string> frames;
    for (size_t n = 0; n < kReceiveBatch; ++n) {
      zmq::message_t frame;
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return;
      frames.clear();
      bool tooMany = false;
      const std::string identity = frame.to_string();
      while (frame.more()) {
        (void)socket_.recv(frame);  // parts of one message arrive together
        if (frames.size() < kMaxFrames) {
          frames.push_back(frame.to_string());
        } else {
          tooMany = true;
        }
      }
      if (tooMany) {
        malformed(identity, "too many frames");
        continue;
      }
      handle(identity, frames);
    }
  }

  void handle(const std::string& identity, std::vector<std::string>& frames) {
    if (frames.empty() || frames[0].size() != 1) return malformed(identity, "unknown command");
    auto peer = peers_.find(identity);
    if (peer != peers_.end()) {
      peer->second.lastHeard = Clock::now();
      if (peer->second.stalled) {  // it reads again: serve it
        peer->second.stalled = false;
        ready_.insert(identity);
      }
    }
    switch (frames[0][0]) {
      case 'P':
        if (frames.size() != 3) return malformed(identity, "P needs 3 frames");
        if (frames[1].empty()) return malformed(identity, "P with an empty topic");
        router_.publish(frames[1], std::move(frames[2]));
        return;
      case 'S':
        return subscribe(identity, frames);
      case 'A':
      case 'R': {
        uint64_t deliveryId = 0;
        if (frames.size() != 2) return malformed(identity, "A or R needs 2 frames");
        if (!detail::parseDecimal(frames[1], deliveryId)) {
          return malformed(identity, "bad delivery id");
        }
        if (peer == peers_.end()) return;  // expired, or from before a broker restart
        const detail::NotificationRouter::SubscriberId id = peer->second.id;
        const bool settled = frames[0][0] == 'A' ? router_.acknowledge(id, deliveryId)
                                                 : router_.requeue(id, deliveryId);
        if (settled) ready_.insert(identity);  // a slot of its window is free
        return;
      }
      case 'U':
        if (frames.size() != 1) return malformed(identity, "U needs 1 frame");
        if (peer != peers_.end()) forget(peer);
        return;
      default:
        return malformed(identity, "unknown command");
    }
  }

  // ["S", pool, window, topic...]: a new subscriber, or a refresh of a known one.
  void subscribe(const std::string& identity, const std::vector<std::string>& frames) {
    uint32_t window = 0;
    if (frames.size() < 4) return malformed(identity, "S needs a pool, a window and a topic");
    if (!detail::parseDecimal(frames[2], window) || window == 0 || window > kMaxWindow) {
      return malformed(identity, "bad window");
    }
    Subscription subscription;
    subscription.pool = frames[1];
    subscription.topics.assign(frames.begin() + 3, frames.end());
    for (const std::string& topic : subscription.topics) {
      if (topic.empty()) return malformed(identity, "S with an empty topic");
    }
    if (auto known = peers_.find(identity); known != peers_.end()) {
      Peer& p = known->second;
      if (p.pool == subscription.pool && p.topics == subscription.topics) {
        if (window > p.window) ready_.insert(identity);
        p.window = window;
        return;
      }
      forget(known);  // a different subscription on the same connection replaces the old
    }
    Result<detail::NotificationRouter::SubscriberId> id =
        router_.subscribe(subscription, [this, identity] { ready_.insert(identity); });
    if (!id) return malformed(identity, id.status().message());
    Peer& p = peers_[identity];
    p.id = *id;
    p.pool = std::move(subscription.pool);
    p.topics = std::move(subscription.topics);
    p.window = window;
    p.lastHeard = Clock::now();
    subscribers_.store(peers_.size());
  }

  // Unsubscribes a peer: what it holds goes back per the router's rules.
  void forget(std::map<std::string, Peer>::iterator peer) {
    router_.unsubscribe(peer->second.id);
    ready_.erase(peer->first);
    peers_.erase(peer);
    subscribers_.store(peers_.size());
  }

  // Sends every ready subscriber what it may take within its window.
  void serveReady() {
    std::vector<detail::NotificationRouter::Delivery> deliveries;
    while (!ready_.empty()) {
      const std::string identity = std::move(ready_.extract(ready_.begin()).value());
      auto peer = peers_.find(identity);
      if (peer == peers_.end() || peer->second.stalled) continue;
      Peer& p = peer->second;
      const size_t held = router_.heldCount(p.id);
      if (held >= p.window) continue;  // an acknowledgement marks it ready again
      deliveries.clear();
      router_.take(p.id, p.window - held, deliveries);
      for (size_t i = 0; i < deliveries.size(); ++i) {
        const int sent = sendDelivery(identity, deliveries[i]);
        if (sent == 0) continue;
        if (sent == EHOSTUNREACH) {  // gone: what it holds, this one too, goes back
          forget(peer);
          break;
        }
        // Its pipe is full (EAGAIN): this one and the rest never reached it; they go back
        // without counting an attempt, and it waits until it is heard from.
        p.stalled = true;
        for (size_t j = i; j < deliveries.size(); ++j) router_.release(p.id, deliveries[j].id);
        ready_.erase(identity);  // the release marked it
        break;
      }
    }
  }

  // ["D", deliveryId, topic, body] to `identity`: 0 when sent, else the errno of the failure.
  int sendDelivery(const std::string& identity, const detail::NotificationRouter::Delivery& d) {
    const std::string id = std::to_string(d.id);
    const auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
    try {
      // ROUTER_MANDATORY: the first frame fails (EHOSTUNREACH or EAGAIN) or the message goes.
      if (!socket_.send(zmq::buffer(identity), more)) return EAGAIN;
      (void)socket_.send(zmq::str_buffer("D"), more);
      (void)socket_.send(zmq::buffer(id), more);
      (void)socket_.send(zmq::buffer(d.topic), more);
      (void)socket_.send(zmq::buffer(*d.body), zmq::send_flags::dontwait);
      return 0;
    } catch (const zmq::error_t& e) {
      return e.num() == EAGAIN ? EAGAIN : EHOSTUNREACH;
    }
  }

  void expireSilent() {
    const Deadline now = Clock::now();
    for (auto it = peers_.begin(); it != peers_.end();) {
      auto next = std::next(it);
      if (now - it->second.lastHeard > options_.subscriberTimeout) {
        const uint64_t n = subscribersExpired_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (isLoggedOccurrence(n)) {
          options_.log(LogLevel::kWarning, "zmq-broker", "unsubscribed a silent subscriber",
                       {{"peer", detail::hexOf(it->first)}, {"count", std::to_string(n)}, {"url", url_}});
        }
        forget(it);
      }
      it = next;
    }
  }

  void malformed(const std::string& identity, std::string_view why) {
    const uint64_t n = malformedDropped_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (isLoggedOccurrence(n)) {
      options_.log(LogLevel::kWarning, "zmq-broker",
                   std::string("dropped a malformed message: ") + std::string(why),
                   {{"peer", detail::hexOf(identity)}, {"count", std::to_string(n)}, {"url", url_}});
    }
  }

  zmq::context_t& context_;
  const std::string url_;
  const Options options_;
  detail::NotificationRouter router_;
  detail::Waker waker_;  // woken by stop(), polled by the routing thread
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> malformedDropped_{0}, subscribersExpired_{0}, subscribers_{0};

  std::mutex turnMutex_;                // orders turnDone() and waitForStats()
  std::condition_variable turnDone_;    // notified after each turn of the routing loop
  mutable std::mutex mutex_;
  bool started_ = false;       // guarded by mutex_ (also set by stop())
  std::string boundEndpoint_;  // guarded by mutex_
  std::thread thread_;         // guarded by mutex_

  // The routing thread's alone (the router's `ready` callbacks run on it too, since it makes
  // every call to the router but stats()).
  zmq::socket_t socket_;
  std::map<std::string, Peer> peers_;
  std::set<std::string> ready_;  // identities that may have something to take
};

ZmqNotificationBroker::ZmqNotificationBroker(ZmqContext& context, std::string url)
    : ZmqNotificationBroker(context, std::move(url), Options{}) {}

ZmqNotificationBroker::ZmqNotificationBroker(ZmqContext& context, std::string url, Options options)
    : impl_(std::make_unique<Impl>(context, std::move(url), std::move(options))) {}

ZmqNotificationBroker::~ZmqNotificationBroker() = default;

Status ZmqNotificationBroker::start() { return impl_->start(); }
void ZmqNotificationBroker::stop() { impl_->stop(); }
const std::string& ZmqNotificationBroker::url() const { return impl_->url_; }

std::string ZmqNotificationBroker::boundEndpoint() const {
  std::lock_guard<std::mutex> lock(impl_->mutex_);
  return impl_->boundEndpoint_;
}

ZmqNotificationBroker::Stats ZmqNotificationBroker::stats() const { return impl_->stats(); }

bool ZmqNotificationBroker::waitForStats(const std::function<bool(const Stats&)>& condition,
                                         Deadline deadline) const {
  return impl_->waitForStats(condition, deadline);
}

}  // namespace switchboard
