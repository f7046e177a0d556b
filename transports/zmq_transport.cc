// ZmqTransport: ROUTER listeners polled by the executor's receiving thread, DEALER channels with
// an I/O thread each; an eventfd wakes a poll for interrupts and replies from other threads.
#include "transports/zmq_transport.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>
#include <zmq.hpp>

namespace switchboard {
namespace detail {

// What the transport, its listeners, channels and messages share.
class ZmqShared {
 public:
  ZmqShared(zmq::context_t& context, std::string url, ZmqTransport::Options options)
      : context_(context), url_(std::move(url)), options_(std::move(options)) {}

  zmq::context_t& context_;
  const std::string url_;
  const ZmqTransport::Options options_;
  std::mutex mutex_;
  std::string boundEndpoint_;  // guarded by mutex_
  std::atomic<uint64_t> received_{0}, malformedDropped_{0}, repliesSent_{0}, repliesDropped_{0},
      sendsExpired_{0};

  // Counted always; logged with back-off (isLoggedOccurrence).
  void drop(std::atomic<uint64_t>& counter, std::string_view why) {
    const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
    if (isLoggedOccurrence(n)) {
      options_.log(LogLevel::kWarning, "zmq",
                   std::string(why) + " (" + std::to_string(n) + " so far)");
    }
  }
};

// A waker for zmq::poll: an eventfd any thread may signal.
class Waker {
 public:
  Waker() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  ~Waker() { ::close(fd_); }
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;
  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
  }
  void drain() {
    uint64_t value;
    [[maybe_unused]] ssize_t n = ::read(fd_, &value, sizeof value);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

void applySocketOptions(zmq::socket_t& socket, const ZmqTransport::Options& o) {
  socket.set(zmq::sockopt::linger, o.lingerMs);
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(o.maxMessageBytes));
  socket.set(zmq::sockopt::heartbeat_ivl, o.heartbeatIvlMs);
  socket.set(zmq::sockopt::heartbeat_timeout, o.heartbeatTimeoutMs);
  socket.set(zmq::sockopt::heartbeat_ttl, o.heartbeatTimeoutMs);
  socket.set(zmq::sockopt::sndhwm, o.sendHighWaterMark);
  socket.set(zmq::sockopt::rcvhwm, o.sendHighWaterMark);
}

// Milliseconds for zmq::poll until `deadline`: -1 for none, rounded up so it never spins.
long pollTimeoutMs(Deadline deadline) {
  if (deadline == kNoDeadline) return -1;
  const auto left = deadline - Clock::now();
  if (left <= Duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > 3600 * 1000 ? 3600 * 1000 : static_cast<long>(ms);
}

// The ROUTER of one listener, shared with the messages it took so they can reply.
class ZmqListenerCore {
 public:
  ZmqListenerCore(std::shared_ptr<ZmqShared> shared)
      : shared_(std::move(shared)), router_(shared_->context_, zmq::socket_type::router) {}

  // Sends now when called on the polling thread, else queues for it and wakes it.
  Status reply(const std::vector<std::string>& routing, std::string body) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) {
      shared_->drop(shared_->repliesDropped_, "reply after the listener closed");
      return Status::ok();
    }
    if (owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      sendLocked(routing, body);
      return Status::ok();
    }
    outbox_.push_back({routing, std::move(body)});
    waker_.wake();
    return Status::ok();
  }

  void flush() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [routing, body] : outbox_) sendLocked(routing, body);
    outbox_.clear();
  }

  void sendLocked(const std::vector<std::string>& routing, const std::string& body) {
    try {
      for (const std::string& frame : routing) {
        if (!router_.send(zmq::buffer(frame), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
          shared_->drop(shared_->repliesDropped_, "reply dropped: peer at its high-water mark");
          return;
        }
      }
      if (router_.send(zmq::buffer(body), zmq::send_flags::dontwait)) {
        shared_->repliesSent_.fetch_add(1, std::memory_order_relaxed);
      } else {
        shared_->drop(shared_->repliesDropped_, "reply dropped: peer at its high-water mark");
      }
    } catch (const zmq::error_t& e) {
      // EHOSTUNREACH under ROUTER_MANDATORY: the peer went away.
      shared_->drop(shared_->repliesDropped_, std::string("reply dropped: ") + e.what());
    }
  }

  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    closed_ = true;
    if (!outbox_.empty()) {
      for (auto& [routing, body] : outbox_) sendLocked(routing, body);
      outbox_.clear();
    }
    router_.close();
  }

  std::shared_ptr<ZmqShared> shared_;
  zmq::socket_t router_;  // used by the polling thread; by reply() under mutex_
  Waker waker_;
  std::atomic<std::thread::id> owner_;
  std::atomic<bool> interrupted_{false};

 private:
  std::mutex mutex_;
  bool closed_ = false;  // guarded by mutex_
  // guarded by mutex_: replies from other threads, sent by the polling thread
  std::vector<std::pair<std::vector<std::string>, std::string>> outbox_;
};

class ZmqIncoming final : public IncomingMessage {
 public:
  ZmqIncoming(std::shared_ptr<ZmqListenerCore> core, std::vector<std::string> routing,
              std::string body)
      : core_(std::move(core)), routing_(std::move(routing)), body_(std::move(body)) {
    static constexpr char kHex[] = "0123456789abcdef";
    peer_ = "zmq:";
    for (unsigned char c : routing_.front()) {
      peer_ += kHex[c >> 4];
      peer_ += kHex[c & 15];
    }
  }
  const std::string& body() const override { return body_; }
  Status reply(std::string bytes) override { return core_->reply(routing_, std::move(bytes)); }
  void acknowledge() override {}
  std::string_view peer() const override { return peer_; }

 private:
  std::shared_ptr<ZmqListenerCore> core_;
  std::vector<std::string> routing_;  // identity, then the REQ delimiter when the peer sent one
  std::string body_;
  std::string peer_;
};

class ZmqListener final : public Listener {
 public:
  explicit ZmqListener(std::shared_ptr<ZmqListenerCore> core) : core_(std::move(core)) {}
  ~ZmqListener() override { close(); }

  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
    core_->owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    if (maxBatch == 0) return Status::ok();
    for (;;) {
      core_->flush();
      if (drain(maxBatch, out) > 0) return Status::ok();
      if (core_->interrupted_.exchange(false)) return Status::ok();
      const long timeout = pollTimeoutMs(deadline);
      zmq_pollitem_t items[2] = {{core_->router_.handle(), 0, ZMQ_POLLIN, 0},
                                 {nullptr, core_->waker_.fd(), ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(timeout));
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) return Status(StatusCode::kTransportError, e.what());
      }
      if (items[1].revents != 0) core_->waker_.drain();
      if (items[0].revents == 0 && items[1].revents == 0 && Clock::now() >= deadline) {
        return Status::ok();
      }
    }
  }

  void interrupt() override {
    core_->interrupted_.store(true);
    core_->waker_.wake();
  }

  void close() override { core_->close(); }

 private:
  size_t drain(size_t maxBatch, std::vector<IncomingPtr>& out) {
    ZmqShared& shared = *core_->shared_;
    size_t taken = 0;
    while (taken < maxBatch) {
      zmq::message_t frame;
      if (!core_->router_.recv(frame, zmq::recv_flags::dontwait)) break;
      std::vector<std::string> frames;
      frames.push_back(frame.to_string());
      bool tooMany = false;
      while (frame.more()) {
        (void)core_->router_.recv(frame);  // parts of one message arrive together
        if (frames.size() < shared.options_.maxFrames) {
          frames.push_back(frame.to_string());
        } else {
          tooMany = true;
        }
      }
      if (tooMany || frames.size() < 2 || (frames.size() == 3 && !frames[1].empty())) {
        shared.drop(shared.malformedDropped_, "dropped a message with a bad frame layout");
        continue;
      }
      std::string body = std::move(frames.back());
      frames.pop_back();
      out.push_back(std::make_unique<ZmqIncoming>(core_, std::move(frames), std::move(body)));
      shared.received_.fetch_add(1, std::memory_order_relaxed);
      ++taken;
    }
    return taken;
  }

  std::shared_ptr<ZmqListenerCore> core_;
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

// A DEALER connected to the transport's URL and the I/O thread that owns it; with an `onLink`
// callback also a PAIR socket that receives the DEALER's monitor events.
class ZmqChannel final : public ClientChannel {
 public:
  ZmqChannel(std::shared_ptr<ZmqShared> shared, ReplyCallback onReply, LinkCallback onLink)
      : shared_(std::move(shared)),
        onReply_(std::move(onReply)),
        onLink_(std::move(onLink)),
        dealer_(shared_->context_, zmq::socket_type::dealer) {}

  Status connect() {
    try {
      applySocketOptions(dealer_, shared_->options_);
      dealer_.set(zmq::sockopt::immediate, 1);
      if (onLink_) startMonitor();  // before connect, so that no event is missed
      dealer_.connect(shared_->url_);
    } catch (const zmq::error_t& e) {
      closeSockets();
      return Status(StatusCode::kTransportError,
                    "cannot connect to " + shared_->url_ + ": " + e.what());
    }
    io_ = std::thread([this] { ioLoop(); });  // the thread owns the sockets from here on
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

  Status send(const Address&, std::string bytes, Deadline deadline) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return Status(StatusCode::kShuttingDown, "channel closing");
      outbox_.push_back({std::move(bytes), deadline});
    }
    waker_.wake();
    return Status::ok();
  }

 private:
  struct Outgoing {
    std::string bytes;
    Deadline deadline;
  };

  void ioLoop() {
    std::deque<Outgoing> pending;  // I/O thread only: not yet accepted by the socket
    for (;;) {
      bool stopping = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping = stopping_;
        for (auto& o : outbox_) pending.push_back(std::move(o));
        outbox_.clear();
      }
      if (stopping) {
        flushOnClose(pending);
        break;
      }
      Deadline next = kNoDeadline;
      try {
        while (!pending.empty()) {
          if (Clock::now() >= pending.front().deadline) {
            shared_->drop(shared_->sendsExpired_, "request not sent before its deadline");
            pending.pop_front();
            continue;
          }
          if (!dealer_.send(zmq::buffer(pending.front().bytes), zmq::send_flags::dontwait)) break;
          pending.pop_front();
        }
        for (const Outgoing& o : pending) next = std::min(next, o.deadline);
        zmq_pollitem_t items[3] = {
            {dealer_.handle(), 0,
             static_cast<short>(ZMQ_POLLIN | (pending.empty() ? 0 : ZMQ_POLLOUT)), 0},
            {nullptr, waker_.fd(), ZMQ_POLLIN, 0},
            {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(items, monitor_ ? 3 : 2, std::chrono::milliseconds(pollTimeoutMs(next)));
        if (items[1].revents != 0) waker_.drain();
        if ((items[0].revents & ZMQ_POLLIN) != 0) receiveAll();
        if (monitor_ && (items[2].revents & ZMQ_POLLIN) != 0) receiveLinkEvents();
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        if (e.num() != EINTR) shared_->options_.log(LogLevel::kError, "zmq", e.what());
      }
    }
    closeSockets();
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

  // Hands what is still unsent to the socket, waiting for room no longer than the linger
  // period; LINGER then bounds how long the socket keeps trying to deliver it.
  void flushOnClose(std::deque<Outgoing>& pending) {
    const Deadline giveUp = deadlineAfter(std::chrono::milliseconds(shared_->options_.lingerMs));
    try {
      while (!pending.empty() && Clock::now() < giveUp) {
        if (dealer_.send(zmq::buffer(pending.front().bytes), zmq::send_flags::dontwait)) {
          pending.pop_front();
          continue;
        }
        zmq_pollitem_t item{dealer_.handle(), 0, ZMQ_POLLOUT, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(pollTimeoutMs(giveUp)));
      }
    } catch (const zmq::error_t&) {
    }
    for (size_t i = 0; i < pending.size(); ++i) {
      shared_->drop(shared_->sendsExpired_, "message not sent before the channel closed");
    }
  }

  void receiveAll() {
    for (;;) {
      zmq::message_t frame;
      if (!dealer_.recv(frame, zmq::recv_flags::dontwait)) return;
      while (frame.more()) (void)dealer_.recv(frame);  // the body is the last frame
      if (onReply_) onReply_(frame.to_string());
    }
  }

  std::shared_ptr<ZmqShared> shared_;
  const ReplyCallback onReply_;
  const LinkCallback onLink_;
  zmq::socket_t dealer_;   // the I/O thread's once connect() started it
  zmq::socket_t monitor_;  // likewise; empty without onLink_
  bool linkUp_ = false;    // I/O thread only: the last link event was kUp
  Waker waker_;
  std::mutex mutex_;
  bool stopping_ = false;        // guarded by mutex_
  std::vector<Outgoing> outbox_;  // guarded by mutex_
  std::thread io_;
};

}  // namespace detail

struct ZmqContext::Impl {
  zmq::context_t context;
};

ZmqContext::ZmqContext() : impl_(std::make_unique<Impl>()) {}
ZmqContext::~ZmqContext() = default;
void* ZmqContext::handle() const { return &impl_->context; }

ZmqTransport::ZmqTransport(ZmqContext& context, std::string url)
    : ZmqTransport(context, std::move(url), Options{}) {}

ZmqTransport::ZmqTransport(ZmqContext& context, std::string url, Options options)
    : shared_(std::make_shared<detail::ZmqShared>(
          *static_cast<zmq::context_t*>(context.handle()), std::move(url), std::move(options))) {}

ZmqTransport::~ZmqTransport() = default;

Result<std::unique_ptr<Listener>> ZmqTransport::listen(const Address&) {
  try {
    auto core = std::make_shared<detail::ZmqListenerCore>(shared_);
    detail::applySocketOptions(core->router_, shared_->options_);
    core->router_.set(zmq::sockopt::router_mandatory, 1);
    core->router_.bind(shared_->url_);
    {
      std::lock_guard<std::mutex> lock(shared_->mutex_);
      shared_->boundEndpoint_ = core->router_.get(zmq::sockopt::last_endpoint);
    }
    return std::unique_ptr<Listener>(std::make_unique<detail::ZmqListener>(std::move(core)));
  } catch (const zmq::error_t& e) {
    return Status(StatusCode::kTransportError, "cannot bind " + shared_->url_ + ": " + e.what());
  } catch (const std::system_error& e) {
    return Status(StatusCode::kTransportError, e.what());
  }
}

Result<std::unique_ptr<ClientChannel>> ZmqTransport::openChannel(ReplyCallback onReply,
                                                                 LinkCallback onLink) {
  try {
    auto channel =
        std::make_unique<detail::ZmqChannel>(shared_, std::move(onReply), std::move(onLink));
    if (Status s = channel->connect(); !s) return s;
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
  return s;
}

}  // namespace switchboard
