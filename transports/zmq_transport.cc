// ZmqTransport: ROUTER listeners polled by the executor's receiving thread, DEALER channels with
// an I/O thread each. Replies are sent on the replying thread (or, while the receiving thread
// sleeps and other calls are unanswered, left for it), requests on the caller's while the
// channel is idle, under the socket's mutex; the receiving thread sleeps on ZMQ_FD and an
// eventfd (see isReadable): a listener's in poll(), a channel's I/O thread in epoll, a caller
// blocked in callValue that receives on its channel (receiveUntil) in poll().
// Also the context's ZAP handler for CURVE listeners, and the CURVE key helpers.
#include "transports/zmq_transport.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <span>
#include <thread>
#include <utility>
#include <vector>
#include <boost/container/small_vector.hpp>
#include <zmq.hpp>

#include "transports/detail/zmq_frames.h"
#include "transports/detail/zmq_socket.h"

namespace switchboard {
namespace detail {

class ZapHandler;

// What the transport, its listeners, channels and messages share.
class ZmqShared {
 public:
  ZmqShared(zmq::context_t& context, ZapHandler& zap, std::string url,
            ZmqTransport::Options options)
      : context_(context), zap_(zap), url_(std::move(url)), options_(std::move(options)) {}

  zmq::context_t& context_;
  ZapHandler& zap_;  // the context's; outlives the transport
  const std::string url_;
  const ZmqTransport::Options options_;
  std::mutex mutex_;
  std::string boundEndpoint_;  // guarded by mutex_
  std::atomic<uint64_t> received_{0}, malformedDropped_{0}, repliesSent_{0}, repliesDropped_{0},
      sendsExpired_{0}, sendsRefused_{0}, authRefused_{0};
  // Notifications: publish()'s DEALER to the broker, made by the first publish() and kept.
  std::mutex publishMutex_;
  zmq::socket_t publisher_;                  // guarded by publishMutex_
  std::atomic<uint64_t> settlesDropped_{0};  // acknowledgements a full socket did not take

  // Counted always; logged with back-off (isLoggedOccurrence).
  void drop(std::atomic<uint64_t>& counter, std::string_view why) {
    const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
    if (isLoggedOccurrence(n)) {
      options_.log(LogLevel::kWarning, "zmq", why, {{"count", std::to_string(n)}, {"url", url_}});
    }
  }
};

// The ZAP handler (RFC 27) of one context: a thread with a ROUTER bound to
// inproc://zeromq.zap.01, answering the request libzmq makes for every handshake with a CURVE
// listener of the context. Each CURVE listener registers its transport (allow-list, log sink,
// counters) under a ZAP domain of its own; a request is admitted ("200", user id = the client's
// Z85 public key) only when its domain is registered, its mechanism is CURVE and the key is in
// that allow-list; otherwise "400" with the reason, logged and counted. Thread-safe.
class ZapHandler {
 public:
  static constexpr const char* kEndpoint = "inproc://zeromq.zap.01";

  // `context` must outlive the handler, whose stop() must come before the context terminates.
  explicit ZapHandler(zmq::context_t& context) : context_(context) {}
  ~ZapHandler() { stop(); }
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // Registers the allow-list of a CURVE listener of `shared` under a new domain, which it
  // returns, after starting the handler if it does not run (its socket is bound when this
  // returns, so no request is lost). kUnauthorized when the handler cannot run (another socket
  // owns the endpoint in this context), kShuttingDown after stop().
  Result<std::string> admit(const std::shared_ptr<ZmqShared>& shared) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return Status(StatusCode::kShuttingDown, "the ZeroMQ context is closing");
    if (thread_.joinable() && exited_.load()) thread_.join();  // it failed: start it again
    if (!thread_.joinable()) {
      try {
        zmq::socket_t socket(context_, zmq::socket_type::router);
        socket.set(zmq::sockopt::linger, 0);
        socket.bind(kEndpoint);
        exited_.store(false);
        thread_ = std::thread(&ZapHandler::run, this, std::move(socket));
      } catch (const std::exception& e) {
        return Status(StatusCode::kUnauthorized,
                      std::string("a CURVE server needs a running ZAP handler, and it cannot "
                                  "run: cannot bind ") +
                          kEndpoint + ": " + e.what());
      }
    }
    std::string domain = "switchboard-" + std::to_string(++lastDomain_);
    domains_[domain] = shared;
    return domain;
  }

  // Forgets `domain`: its clients are refused from now on. Idempotent.
  void release(const std::string& domain) {
    std::lock_guard<std::mutex> lock(mutex_);
    domains_.erase(domain);
  }

  // Stops the thread and joins it; it closes its socket (linger 0). Bounded: the thread never
  // blocks but in its poll, which the waker ends. Idempotent; admit() fails afterwards.
  void stop() {
    std::thread thread;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopped_ = true;
      domains_.clear();
      thread = std::move(thread_);
    }
    if (!thread.joinable()) return;
    stopping_.store(true);
    waker_.wake();
    thread.join();
  }

 private:
  struct Verdict {
    bool admitted = false;
    std::string text;    // status text: "OK" or why not
    std::string userId;  // the client's Z85 key when admitted
  };

  void run(zmq::socket_t socket) {
    for (;;) {
      zmq_pollitem_t items[2] = {{socket.handle(), 0, ZMQ_POLLIN, 0},
                                 {nullptr, waker_.fd(), ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(-1));  // waker: stop()
        if (items[1].revents != 0) waker_.drain();
        if (stopping_.load()) break;
        if ((items[0].revents & ZMQ_POLLIN) != 0) serve(socket);
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        // The context is terminating, or the socket failed: the next admit() starts anew.
        stderrLogSink()(LogLevel::kError, "zap", std::string("ZAP handler stopped: ") + e.what());
        break;
      } catch (const std::exception& e) {  // none may leave the thread
        stderrLogSink()(LogLevel::kError, "zap", std::string("ZAP handler stopped: ") + e.what());
        break;
      }
    }
    exited_.store(true);
  }  // `socket` closes here, linger 0

  // Answers every request queued now. A request is [routing id, empty delimiter, version,
  // request id, domain, address, identity, mechanism, credentials...]; the reply is the
  // envelope, then version, request id, status code, status text, user id, metadata.
  void serve(zmq::socket_t& socket) {
    constexpr size_t kMaxFrames = 16;  // more than any ZAP request has
    for (;;) {
      zmq::message_t frame;
      if (!socket.recv(frame, zmq::recv_flags::dontwait)) return;
      std::vector<std::string> frames;
      frames.push_back(frame.to_string());
      while (frame.more()) {
        (void)socket.recv(frame);  // parts of one message arrive together
        if (frames.size() < kMaxFrames) frames.push_back(frame.to_string());
      }
      size_t envelope = 0;
      while (envelope < frames.size() && !frames[envelope].empty()) ++envelope;
      if (envelope == frames.size()) continue;  // no delimiter: not libzmq's; nothing to answer
      ++envelope;
      const std::vector<std::string> request(frames.begin() + static_cast<long>(envelope),
                                             frames.end());
      const Verdict verdict = decide(request);
      std::vector<std::string> reply(frames.begin(), frames.begin() + static_cast<long>(envelope));
      reply.push_back("1.0");
      reply.push_back(request.size() > 1 ? request[1] : std::string());
      reply.push_back(verdict.admitted ? "200" : "400");
      reply.push_back(verdict.text);
      reply.push_back(verdict.userId);
      reply.push_back(std::string());  // no metadata
      for (size_t i = 0; i < reply.size(); ++i) {
        // A ROUTER drops what it cannot route (the handshake is gone): never blocks.
        const auto flags = i + 1 < reply.size()
                               ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                               : zmq::send_flags::dontwait;
        if (!socket.send(zmq::buffer(reply[i]), flags)) break;
      }
    }
  }

  Verdict decide(const std::vector<std::string>& request) {
    auto frame = [&](size_t i) { return i < request.size() ? request[i] : std::string(); };
    const std::string domain = frame(2), address = frame(3), mechanism = frame(5);
    std::shared_ptr<ZmqShared> owner;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto it = domains_.find(domain); it != domains_.end()) owner = it->second;
    }
    std::string clientKey;
    auto refuse = [&](std::string why) {
      Verdict v;
      v.text = why;
      // Counted always, logged with back-off: a refused client retries at every reconnect.
      std::atomic<uint64_t>& counter = owner ? owner->authRefused_ : unknownRefused_;
      const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
      if (isLoggedOccurrence(n)) {
        const LogSink log = owner ? owner->options_.log : stderrLogSink();
        log(LogLevel::kWarning, "zap", "refused a client: " + why,
            {{"client_key", clientKey.empty() ? "unknown" : clientKey},
             {"address", address.empty() ? "unknown" : address},
             {"count", std::to_string(n)}});
      }
      return v;
    };
    if (request.size() < 6 || frame(0) != "1.0") return refuse("malformed ZAP request");
    if (!owner) return refuse("no CURVE listener has the ZAP domain '" + domain + "'");
    if (mechanism != "CURVE") return refuse("mechanism " + mechanism + " refused: CURVE only");
    if (request.size() != 7 || request[6].size() != 32) return refuse("malformed CURVE key");
    char z85[41] = {};
    if (zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(request[6].data()), 32) == nullptr) {
      return refuse("malformed CURVE key");
    }
    clientKey = z85;
    if (owner->options_.allowedClientKeys.count(clientKey) == 0) {
      return refuse("client key not in the allow-list");
    }
    Verdict v;
    v.admitted = true;
    v.text = "OK";
    v.userId = clientKey;
    return v;
  }

  zmq::context_t& context_;
  Waker waker_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> exited_{false};          // the thread ended (it only does on an error)
  std::atomic<uint64_t> unknownRefused_{0};  // refusals for no registered domain
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<ZmqShared>> domains_;  // guarded by mutex_
  uint64_t lastDomain_ = 0;                                    // guarded by mutex_
  bool stopped_ = false;                                       // guarded by mutex_
  std::thread thread_;  // started by admit(), joined by admit() or stop(); under mutex_
};

// The frames before a request's body that route its reply back: the peer's identity, then the
// REQ delimiter when the peer sent one.
using RoutingFrames = boost::container::small_vector<std::string, 2>;

// A socket shared, under mutex_, by the thread that receives from it and by any thread that
// sends on it (a ROUTER listener's replies, a broker subscriber's acknowledgements), mostly
// without a hand-off to the receiving thread (work may be left for it: wakePollerForLeftWork-
// Locked()). The receiving thread sleeps on the socket's ZMQ_FD without the mutex;
// since that descriptor signals changes only, a sender that may have consumed the signal of a
// message now readable wakes it through the waker.
class PolledSocket {
 public:
  PolledSocket(zmq::context_t& context, zmq::socket_type type) : socket_(context, type) {}

  // After a send under mutex_: wakes the receiving thread when that send hid a readable message.
  // Throws zmq::error_t.
  void wakePollerIfReadableLocked() {
    if (pollerAsleep_ && isReadable(socket_)) waker_.wake();
  }
  // A pollReceived() blocked now returns promptly, or the next one returns at once.
  void interrupt() {
    interrupted_.store(true);
    waker_.wake();
  }

  // mutex_, held from construction; release()d on destruction.
  class Hold {
   public:
    explicit Hold(PolledSocket& socket) : socket_(socket), lock_(socket.mutex_) {}
    ~Hold() { socket_.release(lock_); }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

   private:
    PolledSocket& socket_;
    std::unique_lock<std::mutex> lock_;
  };

  // Unlocks mutex_ after doing the work other threads left for its holder (leftWorkLocked());
  // takes it again, when free, for work left meanwhile, so that none is stranded. Every holder
  // of mutex_ in a class that leaves work lets go through here.
  void release(std::unique_lock<std::mutex>& lock) noexcept {
    for (;;) {
      if (hasLeftWork()) leftWorkLocked();
      lock.unlock();
      // Pairs with the fence of a thread that left work and then failed to take mutex_: either
      // that thread's try_lock saw this unlock, or this load sees its work.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (!hasLeftWork() || !lock.try_lock()) return;
    }
  }

  // The receiving loop of a Listener::poll(): under mutex_, `takeLocked(wakeAt)` takes what
  // arrived and returns how many, 0 only once a receive found nothing after its sends (it may
  // bring `wakeAt`, initially `deadline`, forward); with
  // nothing taken and nothing readable it sleeps until a message, interrupt(), work left for it
  // (wakePollerForLeftWorkLocked()) or wakeAt. It returns under mutex_ only, having done the
  // work left for it (release()): when it returns, no thread sleeps on the socket.
  // kShuttingDown once closed, kTransportError when the socket fails.
  template <typename TakeLocked>
  Status pollReceived(Deadline deadline, TakeLocked&& takeLocked) {
    Status pollFailed = Status::ok();
    bool deadlinePassed = false;
    for (;;) {
      int socketFd = -1;
      Deadline wakeAt = deadline;
      try {
        Hold hold(*this);
        pollerAsleep_ = false;
        pollerWoken_ = false;
        if (closed_) return Status(StatusCode::kShuttingDown, "listener closed");
        // Replies left for it go out before it looks, so its receive covers their sends.
        if (hasLeftWork()) leftWorkLocked();
        if (!pollFailed) return pollFailed;
        // Nothing taken means a receive found nothing after every send made under this hold, so
        // ZMQ_FD signals the next message: no isReadable() (a poll() in libzmq) before sleeping.
        if (takeLocked(wakeAt) > 0) return Status::ok();
        if (deadlinePassed || interrupted_.exchange(false)) return Status::ok();
        socketFd = socket_.get(zmq::sockopt::fd);
        pollerAsleep_ = true;
      } catch (const zmq::error_t& e) {
        return Status(StatusCode::kTransportError, e.what());
      }
      pollfd fds[2] = {{socketFd, POLLIN, 0}, {waker_.fd(), POLLIN, 0}};
      if (!waitReadable(fds, pollTimeoutMs(wakeAt))) {
        pollFailed = Status(StatusCode::kTransportError,
                            std::string("poll: ") + std::strerror(errno));
      }
      if (fds[1].revents != 0) waker_.drain();
      deadlinePassed = fds[0].revents == 0 && fds[1].revents == 0 && Clock::now() >= deadline;
    }
  }

  // Under mutex_: when the receiving thread sleeps on the socket, wakes it (once per sleep) to
  // do the work left for it, and returns true; its holder may then let go of mutex_ without
  // release(), since the receiving thread does all work left. False when it is awake.
  bool wakePollerForLeftWorkLocked() {
    if (!pollerAsleep_) return false;
    if (!pollerWoken_) {
      pollerWoken_ = true;
      waker_.wake();
    }
    return true;
  }

  std::mutex mutex_;
  zmq::socket_t socket_;  // guarded by mutex_ once in use
  bool closed_ = false;   // guarded by mutex_
  // guarded by mutex_: the receiving thread looked at the socket last and sleeps on its ZMQ_FD
  // (or is about to); only then may another user's send hide a readable message from it
  bool pollerAsleep_ = false;
  bool pollerWoken_ = false;  // guarded by mutex_: woken for left work since it last slept

 protected:
  ~PolledSocket() = default;
  // Work another thread left for the holder of mutex_ (see release()); none by default.
  virtual bool hasLeftWork() const { return false; }
  virtual void leftWorkLocked() noexcept {}

 private:
  Waker waker_;
  std::atomic<bool> interrupted_{false};
};

// The ROUTER of one listener (a PolledSocket), shared with the messages it took so they can
// reply on the replying thread.
class ZmqListenerCore final : public PolledSocket {
 public:
  // `zapDomain`: the domain a CURVE listener registered with the ZAP handler, released on close
  // (empty for a plain listener).
  ZmqListenerCore(std::shared_ptr<ZmqShared> shared, std::string zapDomain)
      : PolledSocket(shared->context_, zmq::socket_type::router),
        shared_(std::move(shared)),
        zapDomain_(std::move(zapDomain)) {}
  ~ZmqListenerCore() {
    if (!zapDomain_.empty()) shared_->zap_.release(zapDomain_);
  }
  ZmqListenerCore(const ZmqListenerCore&) = delete;
  ZmqListenerCore& operator=(const ZmqListenerCore&) = delete;

  bool isCurve() const { return !zapDomain_.empty(); }

  // Sends on the calling thread; when another thread holds the socket, leaves the reply for that
  // thread to send before it lets go (release()): a replying thread never waits for the socket.
  // While the receiving thread sleeps and other messages taken from this socket are unanswered
  // (taken()), leaves it for the receiving thread instead: a send here would have to read
  // ZMQ_EVENTS afterwards (wakePollerIfReadableLocked(), two system calls in libzmq) for every
  // reply, where the receiving thread, woken once, sends all the replies left meanwhile and
  // looks once. A lone call's reply still goes out here, with no hand-off on its way.
  Status reply(const RoutingFrames& routing, std::string body) {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (lock.owns_lock()) {
      if (!closed_ && unanswered_.load(std::memory_order_relaxed) > 0 &&
          wakePollerForLeftWorkLocked()) {
        leave(routing, std::move(body));
        return Status::ok();  // the receiving thread sends it
      }
      sendOrDropLocked(routing, body);
      wakePollerLocked();
    } else {
      leave(routing, std::move(body));
      std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with release()'s
      if (!lock.try_lock()) return Status::ok();  // the holder's release() sends it
    }
    release(lock);
    return Status::ok();
  }

  // Messages taken from this socket (ZmqIncoming) and neither replied to nor destroyed.
  void taken() { unanswered_.fetch_add(1, std::memory_order_relaxed); }
  void settled() { unanswered_.fetch_sub(1, std::memory_order_relaxed); }

  void close() {
    {
      Hold hold(*this);
      if (closed_) return;
      if (hasLeftWork()) leftWorkLocked();  // replies left for the poller go out first
      closed_ = true;
      socket_.close();
    }
    if (!zapDomain_.empty()) shared_->zap_.release(zapDomain_);
  }

  std::shared_ptr<ZmqShared> shared_;
  const std::string zapDomain_;

 private:
  struct LeftReply {
    RoutingFrames routing;
    std::string body;
  };

  void leave(const RoutingFrames& routing, std::string body) {
    std::lock_guard<std::mutex> leftLock(leftMutex_);
    left_.push_back({routing, std::move(body)});
    hasLeft_.store(true);
  }

  bool hasLeftWork() const override { return hasLeft_.load(); }

  void leftWorkLocked() noexcept override {
    {
      std::lock_guard<std::mutex> leftLock(leftMutex_);
      sending_.swap(left_);
      hasLeft_.store(false);
    }
    for (const LeftReply& reply : sending_) sendOrDropLocked(reply.routing, reply.body);
    sending_.clear();
    wakePollerLocked();
  }

  void sendOrDropLocked(const RoutingFrames& routing, const std::string& body) {
    if (closed_) {
      shared_->drop(shared_->repliesDropped_, "reply after the listener closed");
    } else {
      sendLocked(routing, body);
    }
  }

  void wakePollerLocked() noexcept {
    if (closed_) return;
    try {
      wakePollerIfReadableLocked();
    } catch (const zmq::error_t&) {
    }
  }

  void sendLocked(const RoutingFrames& routing, const std::string& body) {
    try {
      for (const std::string& frame : routing) {
        if (!socket_.send(zmq::buffer(frame), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
          shared_->drop(shared_->repliesDropped_, "reply dropped: peer at its high-water mark");
          return;
        }
      }
      if (socket_.send(zmq::buffer(body), zmq::send_flags::dontwait)) {
        shared_->repliesSent_.fetch_add(1, std::memory_order_relaxed);
      } else {
        shared_->drop(shared_->repliesDropped_, "reply dropped: peer at its high-water mark");
      }
    } catch (const zmq::error_t& e) {
      // EHOSTUNREACH under ROUTER_MANDATORY: the peer went away.
      shared_->drop(shared_->repliesDropped_, std::string("reply dropped: ") + e.what());
    }
  }

  std::mutex leftMutex_;
  std::vector<LeftReply> left_;  // guarded by leftMutex_: replies left for the socket's holder
  std::atomic<bool> hasLeft_{false};  // written under leftMutex_: left_ may be non-empty
  std::vector<LeftReply> sending_;    // guarded by mutex_: leftWorkLocked()'s batch
  std::atomic<size_t> unanswered_{0};  // see taken()
};

class ZmqIncoming final : public IncomingMessage {
 public:
  ZmqIncoming(std::shared_ptr<ZmqListenerCore> core, RoutingFrames routing,
              zmq::message_t body, std::string identity)
      : core_(std::move(core)),
        routing_(std::move(routing)),
        body_(std::move(body)),
        identity_(std::move(identity)) {
    peer_ = "zmq:" + hexOf(routing_.front());
    core_->taken();
  }
  ~ZmqIncoming() override { settle(); }
  std::string_view body() const override { return body_.to_string_view(); }
  void releaseBody() override { body_ = zmq::message_t(); }
  Status reply(std::string bytes) override {
    settle();
    return core_->reply(routing_, std::move(bytes));
  }
  void acknowledge() override {}
  std::string_view peer() const override { return peer_; }
  std::string_view identity() const override { return identity_; }

 private:
  void settle() {
    if (std::exchange(counted_, false)) core_->settled();
  }

  std::shared_ptr<ZmqListenerCore> core_;
  bool counted_ = true;  // among core_'s unanswered messages (taken())
  RoutingFrames routing_;
  // The frame as received, until releaseBody(): it may share one of libzmq's decode buffers
  // with other messages, which a request kept for a long call would pin, and it was written on
  // libzmq's I/O thread (by libsodium, with CURVE), which TSan cannot see. The server releases
  // it right after decoding, on the receiving thread.
  zmq::message_t body_;
  std::string peer_;
  std::string identity_;  // the CURVE client's key the ZAP handler admitted; empty when plain
};

class ZmqListener final : public Listener {
 public:
  explicit ZmqListener(std::shared_ptr<ZmqListenerCore> core) : core_(std::move(core)) {}
  ~ZmqListener() override { close(); }

  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
    if (maxBatch == 0) return Status::ok();
    return core_->pollReceived(deadline, [&](Deadline&) { return drainLocked(maxBatch, out); });
  }

  void interrupt() override { core_->interrupt(); }

  void close() override { core_->close(); }

 private:
  size_t drainLocked(size_t maxBatch, std::vector<IncomingPtr>& out) {
    ZmqShared& shared = *core_->shared_;
    size_t taken = 0;
    while (taken < maxBatch) {
      zmq::message_t frame;
      if (!core_->socket_.recv(frame, zmq::recv_flags::dontwait)) break;
      frames_.clear();
      frames_.push_back(std::move(frame));
      bool tooMany = false;
      for (bool more = frames_.back().more(); more;) {
        zmq::message_t part;
        (void)core_->socket_.recv(part);  // parts of one message arrive together
        more = part.more();
        if (frames_.size() < shared.options_.maxFrames) {
          frames_.push_back(std::move(part));
        } else {
          tooMany = true;  // frames past maxFrames are not kept
        }
      }
      views_.clear();
      for (const zmq::message_t& f : frames_) views_.push_back(f.to_string_view());
      if (tooMany) views_.emplace_back();  // stands for the frames not kept
      if (!splitRouterFrames(views_, shared.options_.maxFrames)) {
        shared.drop(shared.malformedDropped_, "dropped a message with a bad frame layout");
        continue;
      }
      // Valid: the body is the last frame, the routing frames all those before it.
      RoutingFrames routing(views_.begin(), views_.end() - 1);
      // The body's frame: libzmq attaches the connection's ZAP user id to what it received.
      std::string identity;
      if (core_->isCurve()) {
        if (const char* userId = zmq_msg_gets(frames_.back().handle(), "User-Id")) {
          identity = userId;
        }
      }
      out.push_back(std::make_unique<ZmqIncoming>(core_, std::move(routing),
                                                  std::move(frames_.back()), std::move(identity)));
      shared.received_.fetch_add(1, std::memory_order_relaxed);
      ++taken;
    }
    frames_.clear();  // no large message is held until the next one
    return taken;
  }

  std::shared_ptr<ZmqListenerCore> core_;
  // drainLocked()'s scratch, kept between messages; used under core_->mutex_
  std::vector<zmq::message_t> frames_;
  std::vector<std::string_view> views_;
};

// The socket monitor events a channel turns into link events.
constexpr int kLinkMonitorEvents =
    ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED |
    ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
    ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;

// A fresh inproc endpoint for a socket monitor. Names are never reused in the process: a closed
// monitor releases its name only later, on ZeroMQ's reaper thread.
std::string uniqueMonitorEndpoint() {
  static std::atomic<uint64_t> next{0};
  return "inproc://switchboard-link-monitor-" +
         std::to_string(next.fetch_add(1, std::memory_order_relaxed));
}

// A DEALER connected to the transport's URL, sent on by the callers of send() and received from
// by the channel's I/O thread, in turn under socketMutex_; with an `onLink` callback also a PAIR
// socket, the I/O thread's alone, that receives the DEALER's monitor events. What callers queue
// has a mutex of its own (mutex_), held briefly: a caller never waits while the I/O thread
// sends and receives a batch. A caller that waits for its reply may receive in the I/O thread's
// stead (receiveUntil()): the I/O thread then stops waiting on the DEALER (epoll_ stops
// reporting it), so that the reply wakes the caller alone.
class ZmqChannel final : public ClientChannel {
 public:
  ZmqChannel(std::shared_ptr<ZmqShared> shared, ReplyCallback onReply, LinkCallback onLink)
      : shared_(std::move(shared)),
        onReply_(std::move(onReply)),
        onLink_(std::move(onLink)),
        dealer_(shared_->context_, zmq::socket_type::dealer) {}

  // `curvePublicKey`: this client's, when the transport's options make it a CURVE client.
  Status connect(const std::string& curvePublicKey) {
    try {
      applySocketOptions(dealer_, shared_->options_);
      // No ZMQ_IMMEDIATE: with it (libzmq 4.3), replies that arrived but were not read yet are
      // discarded when the server closes the connection right after sending them (a draining
      // server does). Without it, requests sent before the link is up wait in ZeroMQ's queue.
      if (const ZmqTransport::Options& o = shared_->options_; !o.curveServerKey.empty()) {
        dealer_.set(zmq::sockopt::curve_serverkey, o.curveServerKey);
        dealer_.set(zmq::sockopt::curve_publickey, curvePublicKey);
        dealer_.set(zmq::sockopt::curve_secretkey, o.curveSecretKey);
      }
      if (onLink_) startMonitor();  // before connect, so that no event is missed
      dealer_.connect(shared_->url_);
      dealerFd_ = dealer_.get(zmq::sockopt::fd);
    } catch (const zmq::error_t& e) {
      closeSockets();
      return Status(StatusCode::kTransportError,
                    "cannot connect to " + shared_->url_ + ": " + e.what());
    }
    if (!epoll_.valid() || !epoll_.add(dealerFd_) || !epoll_.add(waker_.fd()) ||
        (monitor_ && !epoll_.add(monitorFd_))) {
      const int error = errno;
      closeSockets();
      return Status(StatusCode::kTransportError,
                    std::string("cannot wait for the channel's sockets: ") + std::strerror(error));
    }
    io_ = std::thread([this] { ioLoop(); });  // the I/O thread receives from here on
    return Status::ok();
  }

  ~ZmqChannel() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    waker_.wake();
    if (io_.joinable()) io_.join();
  }

  // An idle channel (its I/O thread asleep, nothing queued) sends on the calling thread: no
  // hand-off on the latency path. A busy one queues the message for the I/O thread's next turn,
  // which sends it with the others (fewer, fuller writes under load); that turn comes without a
  // wake-up, since the thread looks at the queue before it sleeps again. So do the sends of a
  // burst (each within kBurstGap of the one before) past its first kDirectPerBurst: the I/O
  // thread is woken once for them, where each send on the calling thread would also read
  // ZMQ_EVENTS (a poll() system call in libzmq) to learn whether it hid a reply from the
  // sleeping I/O thread. A short burst goes out whole: the wake-up costs more than its reads.
  Status send(const Address&, std::string bytes, Deadline deadline) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return Status(StatusCode::kShuttingDown, "channel closing");
    if (ioAsleep_ && !woken_ && pending_.empty() && !backlogged_) {
      const Deadline now = Clock::now();
      directInBurst_ =
          now - lastDirectSend_ < kBurstGap ? std::min(directInBurst_ + 1, kDirectPerBurst + 1) : 1;
      lastDirectSend_ = now;
      // The I/O thread does not hold the socket while it sleeps; should it have just woken and
      // taken it (lock order: socketMutex_, then mutex_), the message is queued instead.
      std::unique_lock<std::mutex> socketLock(socketMutex_, std::try_to_lock);
      if (directInBurst_ <= kDirectPerBurst && socketLock.owns_lock()) {
        try {
          if (dealer_.send(zmq::buffer(bytes), zmq::send_flags::dontwait)) {
            if (isReadable(dealer_)) waker_.wake();  // the send consumed its signal
            return Status::ok();
          }
        } catch (const zmq::error_t&) {
          // Left to the I/O thread, which reports what the socket says.
        }
      }
    }
    if (pendingBytes_ != 0 && pendingBytes_ + bytes.size() > shared_->options_.maxQueuedBytes) {
      shared_->sendsRefused_.fetch_add(1, std::memory_order_relaxed);
      return Status(StatusCode::kOverloaded,
                    "channel to " + shared_->url_ + " has " + std::to_string(pendingBytes_) +
                        " bytes waiting for the peer (maxQueuedBytes)");
    }
    pendingBytes_ += bytes.size();
    pending_.push_back({std::move(bytes), deadline});
    if (ioAsleep_ && !woken_) {
      woken_ = true;
      waker_.wake();
    }
    return Status::ok();
  }

  // While it receives, replies the I/O thread takes in its turns (woken to send) are still
  // handed over from there. A backlog (messages waiting for room under the high-water mark)
  // ends it at the next receive: the I/O thread sends them as the peer makes room.
  bool receiveUntil(ReceiveWaker& waker, Deadline deadline) override {
    if (!onReply_ || !waker.valid() || !takeReceiving()) return false;
    Frames replies;
    Views views;
    for (;;) {
      bool drained = false;
      bool failed = false;
      {
        std::lock_guard<std::mutex> socketLock(socketMutex_);
        try {
          drained = receiveLocked(replies);
        } catch (const zmq::error_t&) {
          failed = true;  // left to the I/O thread, which reports what the socket says
        }
      }
      if (!replies.empty()) {
        releaseReceiving(drained);  // the callback may wait for another reply
        handOver(replies, views);
        if (failed || waker.woken() || !takeReceiving()) return true;
        continue;
      }
      if (failed || waker.woken() || Clock::now() >= deadline || backlogged()) {
        releaseReceiving(drained);
        return true;
      }
      // The receive found nothing, so ZMQ_FD signals the next reply.
      pollfd fds[2] = {{dealerFd_, POLLIN, 0}, {waker.fd(), POLLIN, 0}};
      if (!waitReadable(fds, pollTimeoutMs(deadline))) {
        releaseReceiving(true);  // the I/O thread's poll reports a poll that fails
        return true;
      }
    }
  }

 private:
  struct Outgoing {
    std::string bytes;
    Deadline deadline;
  };
  using Frames = boost::container::small_vector<zmq::message_t, 4>;  // replies' body frames
  using Views = boost::container::small_vector<std::string_view, 4>;  // of Frames, for onReply_
  static constexpr size_t kReceiveBatch = 256;  // replies taken per turn of the socket
  static constexpr Duration kBurstGap = std::chrono::microseconds(10);
  static constexpr int kDirectPerBurst = 3;
  static constexpr long kErrorRetryMs = 100;

  // A caller takes the receiving over (receiveUntil()); false while another one has it, the
  // channel closes, or messages wait for room (the I/O thread sends them when the dealer
  // signals that the peer made some; a caller's receive may take that signal, see
  // releaseReceiving()).
  bool takeReceiving() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || callerReceives_ || backlogged_) return false;
    callerReceives_ = true;
    epoll_.watch(dealerFd_, false);
    return true;
  }
  // Whether messages waited for room at the I/O thread's last turn.
  bool backlogged() {
    std::lock_guard<std::mutex> lock(mutex_);
    return backlogged_;
  }
  // And gives it back to the I/O thread. `drained`: its last receive found nothing, so ZMQ_FD
  // signals the next reply; otherwise the I/O thread is woken to look, asleep or not (in a
  // turn, its own receive may have found nothing before the caller's left replies unread). So
  // it is while messages wait for room: the caller's receives may have taken the command that
  // made some, and with it the signal the I/O thread waits for to send them.
  void releaseReceiving(bool drained) {
    std::lock_guard<std::mutex> lock(mutex_);
    callerReceives_ = false;
    epoll_.watch(dealerFd_, true);
    if (!drained || backlogged_) {
      woken_ = true;
      waker_.wake();
    }
  }

  // Under socketMutex_: appends up to kReceiveBatch replies' body frames; true when a receive
  // found nothing (ZMQ_FD then signals the next). Throws zmq::error_t.
  bool receiveLocked(Frames& replies) {
    zmq::message_t frame;
    while (replies.size() < kReceiveBatch) {
      if (!dealer_.recv(frame, zmq::recv_flags::dontwait)) return true;
      while (frame.more()) (void)dealer_.recv(frame);  // the body is the last frame
      replies.push_back(std::move(frame));
    }
    return false;
  }

  // Lends the replies' frames to onReply_, then lets go of them.
  void handOver(Frames& replies, Views& views) {
    for (const zmq::message_t& reply : replies) views.push_back(reply.to_string_view());
    onReply_(std::span<const std::string_view>(views.data(), views.size()));
    views.clear();
    replies.clear();
  }

  // Under socketMutex_, takes what callers queued, sends what waits and takes what arrived;
  // without it, lends the replies' frames to onReply_ and sleeps on epoll_: the dealer's ZMQ_FD
  // (unless a caller receives), the waker and the monitor.
  void ioLoop() {
    Frames replies;  // taken in one turn
    Views views;
    uint64_t pollErrors = 0;
    try {
      if (monitor_) receiveLinkEvents();  // from here on monitorFd_ signals every new event
    } catch (const zmq::error_t&) {
      // ETERM: the first turn closes the sockets
    }
    for (;;) {
      Deadline next = kNoDeadline;
      bool socketFailed = true;  // until the turn ends without an exception
      bool lookAgain = false;
      size_t doneBytes = 0;  // of held_'s messages sent or expired this turn
      try {
        std::lock_guard<std::mutex> socketLock(socketMutex_);
        bool stopping = false;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          ioAsleep_ = false;
          woken_ = false;
          stopping = stopping_;  // once set, send() queues nothing more
          if (held_.empty()) {
            held_.swap(pending_);  // the usual case: no copy under the lock callers wait for
          } else {
            std::move(pending_.begin(), pending_.end(), std::back_inserter(held_));
            pending_.clear();
          }
        }
        if (stopping) {
          flushOnCloseLocked();
          closeSockets();
          return;
        }
        // Every expired message goes, wherever it waits (not only at the head: a poll timeout
        // from a deadline already passed would spin).
        const Deadline now = Clock::now();
        const size_t expired = std::erase_if(held_, [&](const Outgoing& o) {
          if (now < o.deadline) return false;
          doneBytes += o.bytes.size();
          return true;
        });
        for (size_t i = 0; i < expired; ++i) {
          shared_->drop(shared_->sendsExpired_, "request not sent before its deadline");
        }
        while (!held_.empty() &&
               dealer_.send(zmq::buffer(held_.front().bytes), zmq::send_flags::dontwait)) {
          doneBytes += held_.front().bytes.size();
          held_.pop_front();
        }
        for (const Outgoing& o : held_) next = std::min(next, o.deadline);
        // Whether a receive found nothing, after every send of this turn.
        const bool drained = receiveLocked(replies);
        // The receive (or this read) may have taken the command that made room for what still
        // waits (a send takes commands at most once a millisecond): then look again. A drained
        // socket with nothing waiting needs no read of ZMQ_EVENTS (a poll() in libzmq): its
        // receive took every command, so ZMQ_FD signals the next.
        if (!drained || !held_.empty()) {
          const int events = dealer_.get(zmq::sockopt::events);
          lookAgain =
              (events & ZMQ_POLLIN) != 0 || (!held_.empty() && (events & ZMQ_POLLOUT) != 0);
        }
        socketFailed = false;
        std::lock_guard<std::mutex> lock(mutex_);
        pendingBytes_ -= std::exchange(doneBytes, 0);
        backlogged_ = !held_.empty();
        lookAgain = lookAgain || !pending_.empty();  // queued meanwhile, without a wake-up
        ioAsleep_ = replies.empty() && !lookAgain;
      } catch (const zmq::error_t& e) {
        if (doneBytes != 0) {
          std::lock_guard<std::mutex> lock(mutex_);
          pendingBytes_ -= doneBytes;
        }
        if (e.num() == ETERM) {
          std::lock_guard<std::mutex> socketLock(socketMutex_);
          closeSockets();
          return;
        }
        if (e.num() != EINTR) shared_->options_.log(LogLevel::kError, "zmq", e.what());
      }
      const bool received = !replies.empty();
      if (onReply_ && received) handOver(replies, views);
      replies.clear();  // no frame is held while the thread sleeps
      if (lookAgain || received) continue;  // look again before sleeping
      if (socketFailed) {  // it looks again in a while, not as soon as the socket signals
        pollfd wake = {waker_.fd(), POLLIN, 0};
        if (waitReadable(std::span(&wake, 1), kErrorRetryMs) && wake.revents != 0) {
          waker_.drain();
        }
        continue;
      }
      epoll_event ready[3];
      const int readyCount = epoll_.wait(ready, pollTimeoutMs(next));
      if (readyCount < 0) {
        // epoll_wait() fails at once when it fails for good: log with back-off, retry in a
        // while.
        if (isLoggedOccurrence(++pollErrors)) {
          shared_->options_.log(LogLevel::kError, "zmq",
                                std::string("channel poll: ") + std::strerror(errno),
                                {{"count", std::to_string(pollErrors)}});
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(kErrorRetryMs));
        continue;
      }
      const auto fired = [&](int fd) {
        return std::any_of(ready, ready + readyCount,
                           [fd](const epoll_event& e) { return e.data.fd == fd; });
      };
      if (fired(waker_.fd())) waker_.drain();
      try {
        if (monitor_ && fired(monitorFd_)) receiveLinkEvents();
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR && e.num() != ETERM) {
          shared_->options_.log(LogLevel::kError, "zmq", e.what());
        }
      }
    }
  }

  // Has the dealer report its events to a new monitor_ socket. Throws zmq::error_t.
  void startMonitor() {
    const std::string endpoint = uniqueMonitorEndpoint();
    if (zmq_socket_monitor(dealer_.handle(), endpoint.c_str(), kLinkMonitorEvents) != 0) {
      throw zmq::error_t();
    }
    monitor_ = zmq::socket_t(shared_->context_, zmq::socket_type::pair);
    monitor_.set(zmq::sockopt::linger, 0);
    monitor_.connect(endpoint);
    monitorFd_ = monitor_.get(zmq::sockopt::fd);
  }

  // Stops and closes the monitor first, then the dealer. Idempotent.
  void closeSockets() {
    if (monitor_) {
      (void)zmq_socket_monitor(dealer_.handle(), nullptr, 0);
      monitor_.close();
    }
    dealer_.close();
  }

  // Turns the monitor events queued now into link events. A monitor message is two frames: the
  // event (uint16) and its value (uint32) packed in 6 bytes, then the peer's endpoint.
  void receiveLinkEvents() {
    for (;;) {
      zmq::message_t head;
      if (!monitor_.recv(head, zmq::recv_flags::dontwait)) return;
      if (!head.more()) continue;  // not a monitor message; cannot happen
      zmq::message_t endpointFrame;
      (void)monitor_.recv(endpointFrame);  // parts of one message arrive together
      while (endpointFrame.more()) (void)monitor_.recv(endpointFrame);
      if (head.size() < 6) continue;
      uint16_t event = 0;
      uint32_t value = 0;
      std::memcpy(&event, head.data(), sizeof event);
      std::memcpy(&value, static_cast<const char*>(head.data()) + sizeof event, sizeof value);
      std::string endpoint = endpointFrame.to_string();
      if (endpoint.empty()) endpoint = shared_->url_;
      onMonitorEvent(event, value, endpoint);
    }
  }

  void onMonitorEvent(uint16_t event, uint32_t value, const std::string& endpoint) {
    switch (event) {
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        linkUp_ = true;
        onLink_(LinkEvent::kUp, "connected to " + endpoint);
        return;
      case ZMQ_EVENT_DISCONNECTED:
        // Also follows a failed handshake, which was reported as kRefused already.
        if (!linkUp_) return;
        linkUp_ = false;
        onLink_(LinkEvent::kDown, "lost the link to " + endpoint);
        return;
      case ZMQ_EVENT_CONNECT_RETRIED:
        if (linkUp_) return;
        onLink_(LinkEvent::kRefused, "cannot connect to " + endpoint + " (retrying in " +
                                         std::to_string(value) + " ms)");
        return;
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if (linkUp_) return;
        onLink_(LinkEvent::kRefused, "handshake with " + endpoint +
                                         " failed: " + std::strerror(static_cast<int>(value)));
        return;
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if (linkUp_) return;
        onLink_(LinkEvent::kRefused,
                "handshake with " + endpoint + " failed: protocol error " + std::to_string(value));
        return;
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        if (linkUp_) return;
        onLink_(LinkEvent::kRefused, "handshake with " + endpoint +
                                         " failed: authentication refused (ZAP status " +
                                         std::to_string(value) + ")");
        return;
      default:
        return;
    }
  }

  // Under socketMutex_, once stopping_: hands what is still unsent to the socket, waiting for
  // room no longer than the linger period; LINGER then bounds how long the socket keeps trying
  // to deliver it.
  void flushOnCloseLocked() {
    const Deadline giveUp = deadlineAfter(std::chrono::milliseconds(shared_->options_.lingerMs));
    try {
      while (!held_.empty() && Clock::now() < giveUp) {
        if (dealer_.send(zmq::buffer(held_.front().bytes), zmq::send_flags::dontwait)) {
          held_.pop_front();
          continue;
        }
        zmq_pollitem_t item{dealer_.handle(), 0, ZMQ_POLLOUT, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(pollTimeoutMs(giveUp)));
      }
    } catch (const zmq::error_t&) {
    }
    for (size_t i = 0; i < held_.size(); ++i) {
      shared_->drop(shared_->sendsExpired_, "message not sent before the channel closed");
    }
    held_.clear();
    std::lock_guard<std::mutex> lock(mutex_);
    pendingBytes_ = 0;
  }

  std::shared_ptr<ZmqShared> shared_;
  const ReplyCallback onReply_;
  const LinkCallback onLink_;
  std::mutex socketMutex_;  // taken before mutex_ when both are held
  zmq::socket_t dealer_;    // guarded by socketMutex_ once connect() started the I/O thread
  int dealerFd_ = -1;       // dealer_'s ZMQ_FD
  // What the I/O thread sleeps on; the dealer's reports are turned off while a caller receives
  EpollSet epoll_;
  zmq::socket_t monitor_;   // the I/O thread's; empty without onLink_
  // monitor_'s ZMQ_FD, which the I/O thread sleeps on; receiveLinkEvents() reads until nothing
  // is left, after which the descriptor signals the next event
  int monitorFd_ = -1;
  bool linkUp_ = false;     // I/O thread only: the last link event was kUp
  // guarded by socketMutex_: taken from pending_, not yet taken by the socket (its high-water
  // mark), in order
  std::deque<Outgoing> held_;
  Waker waker_;
  std::mutex mutex_;
  bool stopping_ = false;         // guarded by mutex_
  std::deque<Outgoing> pending_;  // guarded by mutex_: queued by callers, in order, after held_
  size_t pendingBytes_ = 0;       // guarded by mutex_: of pending_'s and held_'s messages
  bool backlogged_ = false;       // guarded by mutex_: held_ was not empty at the last turn
  // guarded by mutex_: the I/O thread looked at the dealer last and sleeps (on its ZMQ_FD too,
  // unless a caller receives) or is about to; only then may a caller's send hide a readable reply
  // from it
  bool ioAsleep_ = false;
  bool woken_ = false;  // guarded by mutex_: the waker was written since ioAsleep_ was set
  // guarded by mutex_: a receiveUntil() has the dealer, which epoll_ then does not report
  bool callerReceives_ = false;
  // guarded by mutex_: the last send on a calling thread that found the I/O thread asleep, and
  // how many such sends its burst holds so far
  Deadline lastDirectSend_{};
  int directInBurst_ = 0;
  std::thread io_;
};

// A subscriber of the notification broker (zmq_notification_broker.h): a DEALER connected to
// it (a PolledSocket), received from by the listener's polling thread and sent on (A, R, S) by
// any thread that settles a message.
class ZmqSubscriberCore final : public PolledSocket {
 public:
  ZmqSubscriberCore(std::shared_ptr<ZmqShared> shared, Subscription subscription)
      : PolledSocket(shared->context_, zmq::socket_type::dealer),
        shared_(std::move(shared)),
        subscription_(std::move(subscription)),
        peer_("zmq-broker:" + shared_->url_),
        window_(std::to_string(ZmqTransport::kNotificationWindow)) {}
  ZmqSubscriberCore(const ZmqSubscriberCore&) = delete;
  ZmqSubscriberCore& operator=(const ZmqSubscriberCore&) = delete;

  // Connects with a routing id of its own (the broker knows it again after a reconnect) and
  // sends the subscription. Throws zmq::error_t.
  void connect() {
    std::lock_guard<std::mutex> lock(mutex_);
    applySocketOptions(socket_, shared_->options_);
    std::random_device random;
    std::string id(16, '\0');
    for (char& c : id) c = static_cast<char>(random());
    if (id[0] == '\0') id[0] = 1;  // ids starting with a zero byte are ZeroMQ's
    socket_.set(zmq::sockopt::routing_id, zmq::buffer(id));
    socket_.connect(shared_->url_);
    sendSubscribeLocked();
  }

  // Sends ["A" or "R", deliveryId], and the subscription when it is due. Does nothing after
  // close().
  void settle(std::string_view command, uint64_t deliveryId) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    try {
      if (!sendLocked({command, std::to_string(deliveryId)})) {
        shared_->drop(shared_->settlesDropped_,
                      "acknowledgement dropped: the broker's high-water mark is reached");
      }
      if (Clock::now() >= nextHeartbeat_) sendSubscribeLocked();
      wakePollerIfReadableLocked();
    } catch (const zmq::error_t& e) {
      shared_->drop(shared_->settlesDropped_, std::string("acknowledgement dropped: ") + e.what());
    }
  }

  // ["S", pool, window, topic...]; the next is due one heartbeat interval later.
  void sendSubscribeLocked() {
    std::vector<std::string_view> frames = {"S", subscription_.pool, window_};
    for (const std::string& topic : subscription_.topics) frames.push_back(topic);
    (void)sendLocked(frames);  // a full socket: the next heartbeat sends it again
    nextHeartbeat_ = Clock::now() + std::chrono::milliseconds(shared_->options_.heartbeatIvlMs);
  }

  // One multipart message, not blocking: false when the socket has no room. Throws.
  bool sendLocked(std::span<const std::string_view> frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      const auto flags = i + 1 < frames.size()
                             ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                             : zmq::send_flags::dontwait;
      if (!socket_.send(zmq::buffer(frames[i]), flags)) return false;  // only the first fails
    }
    return true;
  }
  bool sendLocked(std::initializer_list<std::string_view> frames) {
    return sendLocked(std::span<const std::string_view>(frames.begin(), frames.size()));
  }

  // Sends ["U"] and closes the socket (LINGER bounds how long ZeroMQ tries to deliver it).
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    closed_ = true;
    try {
      (void)sendLocked({"U"});
    } catch (const zmq::error_t&) {
    }
    socket_.close();
  }

  std::shared_ptr<ZmqShared> shared_;
  const Subscription subscription_;
  const std::string peer_;
  const std::string window_;
  Deadline nextHeartbeat_{};  // guarded by mutex_: when the next S is due
};

// One delivery of the broker. Thread-safe; settles once; destroyed unsettled, it is requeued.
class ZmqNotification final : public IncomingMessage {
 public:
  ZmqNotification(std::shared_ptr<ZmqSubscriberCore> core, uint64_t deliveryId, std::string body)
      : core_(std::move(core)), deliveryId_(deliveryId), body_(std::move(body)) {}
  ~ZmqNotification() override { (void)requeue(); }

  std::string_view body() const override { return body_; }
  Status reply(std::string) override {
    return Status(StatusCode::kInvalidState, "a notification has no sender to reply to");
  }
  void acknowledge() override {
    if (!settled_.exchange(true)) core_->settle("A", deliveryId_);
  }
  Status requeue() override {
    if (!settled_.exchange(true)) core_->settle("R", deliveryId_);
    return Status::ok();
  }
  std::string_view peer() const override { return core_->peer_; }

 private:
  const std::shared_ptr<ZmqSubscriberCore> core_;
  const uint64_t deliveryId_;
  const std::string body_;
  std::atomic<bool> settled_{false};
};

class ZmqSubscriptionListener final : public Listener {
 public:
  explicit ZmqSubscriptionListener(std::shared_ptr<ZmqSubscriberCore> core)
      : core_(std::move(core)) {}
  ~ZmqSubscriptionListener() override { close(); }

  // Also sends the subscription again every heartbeat interval, which keeps the broker from
  // expiring this subscriber while its owner polls.
  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
    if (maxBatch == 0) return Status::ok();
    return core_->pollReceived(deadline, [&](Deadline& wakeAt) {
      if (Clock::now() >= core_->nextHeartbeat_) core_->sendSubscribeLocked();
      wakeAt = std::min(wakeAt, core_->nextHeartbeat_);
      return drainLocked(maxBatch, out);
    });
  }

  void interrupt() override { core_->interrupt(); }

  void close() override { core_->close(); }

 private:
  // Takes up to maxBatch deliveries ["D", deliveryId, topic, body]; drops anything else.
  size_t drainLocked(size_t maxBatch, std::vector<IncomingPtr>& out) {
    ZmqShared& shared = *core_->shared_;
    size_t taken = 0;
    while (taken < maxBatch) {
      zmq::message_t frame;
      if (!core_->socket_.recv(frame, zmq::recv_flags::dontwait)) break;
      std::vector<std::string> frames;
      frames.push_back(frame.to_string());
      while (frame.more()) {
        (void)core_->socket_.recv(frame);  // parts of one message arrive together
        if (frames.size() <= 4) frames.push_back(frame.to_string());
      }
      uint64_t deliveryId = 0;
      if (frames.size() != 4 || frames[0] != "D" || !parseDecimal(frames[1], deliveryId)) {
        shared.drop(shared.malformedDropped_, "dropped a malformed message from the broker");
        continue;
      }
      out.push_back(std::make_unique<ZmqNotification>(core_, deliveryId, std::move(frames[3])));
      shared.received_.fetch_add(1, std::memory_order_relaxed);
      ++taken;
    }
    return taken;
  }

  std::shared_ptr<ZmqSubscriberCore> core_;
};

}  // namespace detail

struct ZmqContext::Impl {
  zmq::context_t context;
  detail::ZapHandler zap{context};  // after the context: destroyed (stopped) before it
};

ZmqContext::ZmqContext() : impl_(std::make_unique<Impl>()) {}
ZmqContext::~ZmqContext() { impl_->zap.stop(); }  // before the context terminates
void* ZmqContext::handle() const { return &impl_->context; }

namespace {

// What listen() needs of a CURVE server's options.
Status checkCurveServerOptions(const ZmqTransport::Options& o) {
  if (Result<std::string> pub = curvePublicKeyOf(o.curveSecretKey); !pub) {
    return Status(pub.status().code(), "curveSecretKey: " + pub.status().message());
  }
  if (o.allowedClientKeys.empty()) {
    return Status(StatusCode::kInvalidTarget,
                  "a CURVE server needs at least one allowed client key (allowedClientKeys)");
  }
  for (const std::string& key : o.allowedClientKeys) {
    if (!isZ85Key(key)) {
      return Status(StatusCode::kInvalidTarget,
                    "allowedClientKeys: '" + key + "' is not a Z85 key (40 characters)");
    }
  }
  return Status::ok();
}

// What openChannel() needs of a CURVE client's options: the client's public key.
Result<std::string> curveClientPublicKey(const ZmqTransport::Options& o) {
  if (!isZ85Key(o.curveServerKey)) {
    return Status(StatusCode::kInvalidTarget, "curveServerKey is not a Z85 key (40 characters)");
  }
  if (o.curveSecretKey.empty()) {
    return Status(StatusCode::kInvalidTarget,
                  "a CURVE client needs its secret key (curveSecretKey)");
  }
  Result<std::string> derived = curvePublicKeyOf(o.curveSecretKey);
  if (!derived) {
    return Status(derived.status().code(), "curveSecretKey: " + derived.status().message());
  }
  if (!o.curvePublicKey.empty() && o.curvePublicKey != *derived) {
    return Status(StatusCode::kInvalidTarget,
                  "curvePublicKey is not the public key of curveSecretKey");
  }
  return derived;
}

}  // namespace

ZmqTransport::ZmqTransport(ZmqContext& context, std::string url)
    : ZmqTransport(context, std::move(url), Options{}) {}

ZmqTransport::ZmqTransport(ZmqContext& context, std::string url, Options options)
    : shared_(std::make_shared<detail::ZmqShared>(context.impl_->context, context.impl_->zap,
                                                  std::move(url), std::move(options))) {}

ZmqTransport::~ZmqTransport() = default;

Result<std::unique_ptr<Listener>> ZmqTransport::listen(const Address&) {
  const Options& o = shared_->options_;
  std::string zapDomain;
  if (!o.curveSecretKey.empty()) {
    if (Status s = checkCurveServerOptions(o); !s) return s;
    Result<std::string> domain = shared_->zap_.admit(shared_);
    if (!domain) return domain.status();
    zapDomain = std::move(domain).value();
  }
  try {
    auto core = std::make_shared<detail::ZmqListenerCore>(shared_, zapDomain);
    detail::applySocketOptions(core->socket_, shared_->options_);
    core->socket_.set(zmq::sockopt::router_mandatory, 1);
    if (core->isCurve()) {
      core->socket_.set(zmq::sockopt::curve_server, true);
      core->socket_.set(zmq::sockopt::curve_secretkey, o.curveSecretKey);
      core->socket_.set(zmq::sockopt::zap_domain, zapDomain);
    }
    core->socket_.bind(shared_->url_);
    {
      std::lock_guard<std::mutex> lock(shared_->mutex_);
      shared_->boundEndpoint_ = core->socket_.get(zmq::sockopt::last_endpoint);
    }
    return std::unique_ptr<Listener>(std::make_unique<detail::ZmqListener>(std::move(core)));
  } catch (const zmq::error_t& e) {
    if (!zapDomain.empty()) shared_->zap_.release(zapDomain);  // if no core took it over
    return Status(StatusCode::kTransportError, "cannot bind " + shared_->url_ + ": " + e.what());
  } catch (const std::system_error& e) {
    if (!zapDomain.empty()) shared_->zap_.release(zapDomain);
    return Status(StatusCode::kTransportError, e.what());
  }
}

Result<std::unique_ptr<ClientChannel>> ZmqTransport::openChannel(ReplyCallback onReply,
                                                                 LinkCallback onLink) {
  std::string curvePublicKey;
  if (!shared_->options_.curveServerKey.empty()) {
    Result<std::string> key = curveClientPublicKey(shared_->options_);
    if (!key) return key.status();
    curvePublicKey = std::move(key).value();
  }
  try {
    auto channel =
        std::make_unique<detail::ZmqChannel>(shared_, std::move(onReply), std::move(onLink));
    if (Status s = channel->connect(curvePublicKey); !s) return s;
    return std::unique_ptr<ClientChannel>(std::move(channel));
  } catch (const std::system_error& e) {
    return Status(StatusCode::kTransportError, e.what());
  }
}

const std::string& ZmqTransport::url() const { return shared_->url_; }

std::string ZmqTransport::boundEndpoint() const {
  std::lock_guard<std::mutex> lock(shared_->mutex_);
  return shared_->boundEndpoint_;
}

ZmqTransport::Stats ZmqTransport::stats() const {
  Stats s;
  s.received = shared_->received_.load();
  s.malformedDropped = shared_->malformedDropped_.load();
  s.repliesSent = shared_->repliesSent_.load();
  s.repliesDropped = shared_->repliesDropped_.load();
  s.sendsExpired = shared_->sendsExpired_.load();
  s.sendsRefused = shared_->sendsRefused_.load();
  s.authRefused = shared_->authRefused_.load();
  return s;
}

bool isZ85Key(std::string_view key) {
  if (key.size() != 40) return false;
  const std::string text(key);  // zmq_z85_decode reads a NUL-terminated string
  uint8_t bytes[32];
  return zmq_z85_decode(bytes, text.c_str()) != nullptr;
}

Result<CurveKeyPair> makeCurveKeyPair() {
  char publicKey[41] = {}, secretKey[41] = {};
  if (zmq_curve_keypair(publicKey, secretKey) != 0) {
    return Status(StatusCode::kTransportError,
                  std::string("cannot make a CURVE key pair: ") + zmq_strerror(zmq_errno()));
  }
  return CurveKeyPair{publicKey, secretKey};
}

Result<std::string> curvePublicKeyOf(std::string_view secretKey) {
  if (!isZ85Key(secretKey)) {
    return Status(StatusCode::kInvalidTarget, "not a Z85 key (40 characters)");
  }
  const std::string secret(secretKey);
  char publicKey[41] = {};
  if (zmq_curve_public(publicKey, secret.c_str()) != 0) {
    return Status(StatusCode::kTransportError,
                  std::string("cannot derive a CURVE public key: ") + zmq_strerror(zmq_errno()));
  }
  return std::string(publicKey);
}

namespace {

constexpr std::string_view kBlanks = " \t\r\n";

std::string_view trimmed(std::string_view s) {
  const size_t first = s.find_first_not_of(kBlanks);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(kBlanks) - first + 1);
}

// The content of `path`, at most `maxBytes` of it (kInvalidTarget when it is larger).
Result<std::string> readSmallFile(const std::string& path, size_t maxBytes) {
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) {
    return Status(StatusCode::kTransportError, "cannot read " + path + ": " + std::strerror(errno));
  }
  std::string text;
  char chunk[4096];
  size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0 && text.size() <= maxBytes) {
    text.append(chunk, n);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return Status(StatusCode::kTransportError, "cannot read " + path);
  if (text.size() > maxBytes) {
    return Status(StatusCode::kInvalidTarget, path + ": too large for a key file");
  }
  return text;
}

}  // namespace

Result<std::string> readZ85KeyFile(const std::string& path) {
  Result<std::string> text = readSmallFile(path, 4096);
  if (!text) return text.status();
  const std::string_view key = trimmed(*text);
  if (!isZ85Key(key)) {
    return Status(StatusCode::kInvalidTarget,
                  path + ": not a Z85 key file (40 characters and a newline)");
  }
  return std::string(key);
}

Status writeZ85KeyFile(const std::string& path, std::string_view key, unsigned mode) {
  if (!isZ85Key(key)) return Status(StatusCode::kInvalidTarget, "not a Z85 key (40 characters)");
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode));
  if (fd < 0) {
    return Status(StatusCode::kTransportError,
                  "cannot create " + path + ": " + std::strerror(errno));
  }
  const std::string line = std::string(key) + "\n";
  bool ok = ::fchmod(fd, static_cast<mode_t>(mode)) == 0 &&  // what the umask took away
            ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  const int error = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok) {
    ::unlink(path.c_str());
    return Status(StatusCode::kTransportError,
                  "cannot write " + path + ": " + std::strerror(error));
  }
  return Status::ok();
}

Result<std::set<std::string>> readZ85KeyListFile(const std::string& path) {
  Result<std::string> text = readSmallFile(path, 16u << 20);
  if (!text) return text.status();
  std::set<std::string> keys;
  std::string_view rest = *text;
  for (size_t lineNumber = 1; !rest.empty(); ++lineNumber) {
    const size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    line = trimmed(line);
    // No key starts with '#' (its first group would overflow 32 bits), but one may hold one: a
    // comment after a key needs a blank before it.
    if (line.empty() || line.front() == '#') continue;
    const size_t blank = std::min(line.find_first_of(kBlanks), line.size());
    const std::string_view key = line.substr(0, blank), after = trimmed(line.substr(blank));
    if (!isZ85Key(key) || !(after.empty() || after.front() == '#')) {
      return Status(StatusCode::kInvalidTarget,
                    path + ":" + std::to_string(lineNumber) + ": not a Z85 public key");
    }
    keys.emplace(key);
  }
  return keys;
}

Status ZmqTransport::publish(std::string_view topic, std::string bytes) {
  if (topic.empty()) return Status(StatusCode::kInvalidTarget, "publish needs a topic");
  detail::ZmqShared& shared = *shared_;
  std::lock_guard<std::mutex> lock(shared.publishMutex_);
  try {
    if (!shared.publisher_) {
      zmq::socket_t socket(shared.context_, zmq::socket_type::dealer);
      detail::applySocketOptions(socket, shared.options_);
      socket.connect(shared.url_);  // no IMMEDIATE: until the link is up, ZeroMQ queues
      shared.publisher_ = std::move(socket);
    }
    const auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
    // The first frame is refused (EAGAIN) or the whole message goes.
    if (!shared.publisher_.send(zmq::str_buffer("P"), more)) {
      return Status(StatusCode::kOverloaded,
                    "no room to publish: the broker link is at its high-water mark");
    }
    (void)shared.publisher_.send(zmq::buffer(topic), more);
    (void)shared.publisher_.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
    return Status::ok();
  } catch (const zmq::error_t& e) {
    return Status(StatusCode::kTransportError,
                  "cannot publish to " + shared.url_ + ": " + e.what());
  }
}

Result<std::unique_ptr<Listener>> ZmqTransport::subscribe(const Subscription& subscription) {
  if (subscription.topics.empty()) {
    return Status(StatusCode::kInvalidTarget, "a subscription needs at least one topic");
  }
  if (subscription.topics.size() > kMaxSubscriptionTopics) {
    return Status(StatusCode::kInvalidTarget, "too many topics in one subscription");
  }
  for (const std::string& topic : subscription.topics) {
    if (topic.empty()) return Status(StatusCode::kInvalidTarget, "empty topic name");
  }
  try {
    auto core = std::make_shared<detail::ZmqSubscriberCore>(shared_, subscription);
    core->connect();
    return std::unique_ptr<Listener>(
        std::make_unique<detail::ZmqSubscriptionListener>(std::move(core)));
  } catch (const zmq::error_t& e) {
    return Status(StatusCode::kTransportError,
                  "cannot connect to " + shared_->url_ + ": " + e.what());
  } catch (const std::system_error& e) {
    return Status(StatusCode::kTransportError, e.what());
  }
}

}  // namespace switchboard
