// MsgpackRpcTcpTransport over Boost.Asio: one I/O thread runs the transport's io_context, which
// holds every socket and timer of its listeners and channels. A listener's polling thread waits
// on a condition variable for what the I/O thread read; replies and sends are handed to the I/O
// thread with post(). Connections are split into messages by detail::FrameScanner
// (transports/detail/msgpack_stream.h), which finds where each MessagePack object ends without
// decoding it.
#include "transports/msgpack_rpc_tcp_transport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "transports/detail/msgpack_stream.h"

namespace switchboard {
namespace detail {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using ErrorCode = boost::system::error_code;
using Options = MsgpackRpcTcpTransport::Options;

constexpr size_t kReadChunk = 64 * 1024;
constexpr std::string_view kComponent = "msgpack-tcp";

Status invalidUrl(std::string_view url, std::string_view why) {
  return Status(StatusCode::kInvalidTarget, "'" + std::string(url) + "': " + std::string(why));
}

struct HostPort {
  std::string host;  // without the brackets of an IPv6 literal
  std::string port;  // decimal, "0" for * or 0
};

Result<HostPort> parseUrl(std::string_view url) {
  constexpr std::string_view scheme = MsgpackRpcTcpTransport::kScheme;
  if (url.substr(0, scheme.size()) != scheme) return invalidUrl(url, "not a msgpack+tcp:// URL");
  std::string_view rest = url.substr(scheme.size());
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) return invalidUrl(url, "needs host:port");
  std::string_view host = rest.substr(0, colon), port = rest.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) return invalidUrl(url, "needs a host");
  if (port == "*") port = "0";
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoi(std::string(port)) > 65535) {
    return invalidUrl(url, "the port must be 0 to 65535 or *");
  }
  return HostPort{std::string(host), std::to_string(std::stoi(std::string(port)))};
}

FrameLimits frameLimitsOf(const Options& o) {
  return {.maxMessageBytes = o.maxMessageBytes,
          .maxArray = o.maxArray,
          .maxMap = o.maxMap,
          .maxString = o.maxString,
          .maxBinary = o.maxBinary,
          .maxExt = o.maxExt,
          .maxDepth = o.maxDepth};
}

std::string endpointText(const tcp::endpoint& e) {
  const asio::ip::address a = e.address();
  return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(e.port());
}

// No Nagle delay, and TCP keepalive after Options' silence: a vanished peer resets.
void configureSocket(tcp::socket& socket, const Options& o) {
  ErrorCode ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  socket.set_option(asio::socket_base::keep_alive(true), ignored);
  const int fd = socket.native_handle();
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &o.keepAliveIdleS, sizeof(int));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &o.keepAliveIntervalS, sizeof(int));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &o.keepAliveCount, sizeof(int));
}

void closeSocket(tcp::socket& socket) {
  ErrorCode ignored;
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

size_t totalSize(const std::vector<std::string>& batch) {
  size_t n = 0;
  for (const std::string& s : batch) n += s.size();
  return n;
}

std::vector<asio::const_buffer> buffersOf(const std::vector<std::string>& batch) {
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(batch.size());
  for (const std::string& s : batch) buffers.push_back(asio::buffer(s));
  return buffers;
}

}  // namespace

// What the transport, its listeners, channels and messages share: the io_context and its thread,
// the options and the counters.
class TcpShared {
 public:
  TcpShared(std::string url, Options options)
      : url_(std::move(url)), options_(std::move(options)), parsed_(parseUrl(url_)) {}

  void start() {
    thread_ = std::thread([this] {
      for (;;) {
        try {
          io_.run();
          break;
        } catch (const std::exception& e) {  // a handler threw (bad_alloc): keep serving
          options_.log(LogLevel::kError, kComponent, e.what(), {{"url", url_}});
        }
      }
      ranOut_.set_value();
    });
  }

  // Lets run() return once no work is left (what closing listeners and channels still write is
  // bounded by lingerMs), stops it if some is left after that, and joins the thread.
  void stop() {
    guard_.reset();
    std::future<void> ranOut = ranOut_.get_future();
    const auto bound = std::chrono::milliseconds(options_.lingerMs) + std::chrono::seconds(2);
    if (ranOut.wait_for(bound) != std::future_status::ready) {
      options_.log(LogLevel::kError, kComponent,
                   "I/O work left at shutdown (a listener or channel outlived the transport?)",
                   {{"url", url_}});
      io_.stop();
    }
    thread_.join();
  }

  // Runs `fn` on the I/O thread and waits for it, bounded (the I/O thread never blocks); at once
  // when called there. `fn` must hold what it uses: after a timeout it still runs, later.
  template <typename Fn>
  void runOnIo(Fn fn) {
    if (io_.get_executor().running_in_this_thread()) return fn();
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> finished = done->get_future();
    asio::post(io_, [fn = std::move(fn), done]() mutable {
      fn();
      done->set_value();
    });
    if (finished.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      options_.log(LogLevel::kError, kComponent, "the I/O thread did not answer within 10 s",
                   {{"url", url_}});
    }
  }

  // Counted always; logged with back-off (isLoggedOccurrence).
  void count(std::atomic<uint64_t>& counter, LogLevel level, std::string_view why,
             std::string_view peer) {
    const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
    if (isLoggedOccurrence(n)) {
      options_.log(level, kComponent, why,
                   {{"count", std::to_string(n)}, {"url", url_}, {"peer", std::string(peer)}});
    }
  }

  const std::string url_;
  const Options options_;
  const Result<HostPort> parsed_;
  asio::io_context io_;
  std::mutex mutex_;
  std::string boundEndpoint_;  // guarded by mutex_
  std::atomic<uint64_t> received_{0}, badPeers_{0}, repliesSent_{0}, repliesDropped_{0},
      sendsExpired_{0}, sendsLost_{0}, connectionsAccepted_{0}, connectionsRefused_{0},
      idleClosed_{0}, readsPaused_{0}, acceptErrors_{0};

 private:
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(io_);
  std::promise<void> ranOut_;
  std::thread thread_;
};

namespace {

class ListenerCore;

// One accepted connection. Its socket, timers and write queue are the I/O thread's; reply() and
// release() may come from any thread. Lives while the I/O thread's handlers, its listener (until
// it closes) or a message it sent hold it.
class ServerConnection : public std::enable_shared_from_this<ServerConnection> {
 public:
  ServerConnection(std::shared_ptr<TcpShared> shared, std::weak_ptr<ListenerCore> listener,
                   tcp::socket socket)
      : shared_(std::move(shared)),
        listener_(std::move(listener)),
        socket_(std::move(socket)),
        idleTimer_(shared_->io_),
        lingerTimer_(shared_->io_),
        scanner_(frameLimitsOf(shared_->options_)),
        readBuffer_(kReadChunk) {
    ErrorCode ec;
    const tcp::endpoint remote = socket_.remote_endpoint(ec);
    peer_ = "msgpack+tcp:" + (ec ? std::string("?") : endpointText(remote));
  }

  const std::string& peer() const { return peer_; }

  // I/O thread: starts reading and the idle clock.
  void start() {
    lastActivity_ = Clock::now();
    read();
    armIdle();
  }

  // Any thread. Never blocks: the reply is queued for the I/O thread.
  Status reply(std::string bytes) {
    if (!open_.load()) {
      shared_->count(shared_->repliesDropped_, LogLevel::kWarning,
                     "reply dropped: its connection is closed", peer_);
      return Status::ok();
    }
    hold(bytes.size());
    asio::post(shared_->io_, [self = shared_from_this(), bytes = std::move(bytes)]() mutable {
      self->queueReply(std::move(bytes));
    });
    return Status::ok();
  }

  // Any thread: `bytes` read (or a reply) are no longer held; reading resumes below the cap.
  void release(size_t bytes) {
    const size_t before = held_.fetch_sub(bytes);
    const size_t cap = shared_->options_.maxBufferedBytes;
    if (before >= cap && before - bytes < cap) {
      asio::post(shared_->io_, [self = shared_from_this()] { self->resume(); });
    }
  }

  // I/O thread: stops reading and taking replies; what is queued is written within lingerMs.
  void closeLingering() {
    open_.store(false);
    closing_ = true;
    if (!writing_ && outgoing_.empty()) return closeNow();
    lingerTimer_.expires_after(std::chrono::milliseconds(shared_->options_.lingerMs));
    lingerTimer_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
      if (!ec) self->closeNow();
    });
  }

  // I/O thread. Idempotent; unwritten replies are dropped and counted.
  void closeNow();

 private:
  void hold(size_t bytes) { held_.fetch_add(bytes); }

  void read() {
    socket_.async_read_some(asio::buffer(readBuffer_),
                            [self = shared_from_this()](const ErrorCode& ec, size_t n) {
                              self->onRead(ec, n);
                            });
  }

  void onRead(const ErrorCode& ec, size_t n);

  void resume() {
    if (!paused_ || closed_ || closing_) return;
    paused_ = false;
    read();
  }

  void queueReply(std::string bytes) {
    if (closed_) {
      release(bytes.size());
      shared_->count(shared_->repliesDropped_, LogLevel::kWarning,
                     "reply dropped: its connection is closed", peer_);
      return;
    }
    outgoing_.push_back(std::move(bytes));
    write();
  }

  void write() {
    if (writing_ || outgoing_.empty() || closed_) return;
    writing_ = true;
    auto batch = std::make_shared<std::vector<std::string>>(
        std::make_move_iterator(outgoing_.begin()), std::make_move_iterator(outgoing_.end()));
    outgoing_.clear();
    asio::async_write(socket_, buffersOf(*batch),
                      [self = shared_from_this(), batch](const ErrorCode& ec, size_t) {
                        self->onWrite(ec, *batch);
                      });
  }

  void onWrite(const ErrorCode& ec, const std::vector<std::string>& batch) {
    writing_ = false;
    release(totalSize(batch));
    if (ec) {
      for (size_t i = 0; i < batch.size(); ++i) {
        shared_->count(shared_->repliesDropped_, LogLevel::kWarning,
                       "reply dropped: " + ec.message(), peer_);
      }
      return closeNow();
    }
    shared_->repliesSent_.fetch_add(batch.size(), std::memory_order_relaxed);
    lastActivity_ = Clock::now();
    if (closing_ && outgoing_.empty()) return closeNow();
    write();
  }

  // Closes the connection when it saw no traffic for idleTimeoutMs and holds nothing.
  void armIdle() {
    const int idleMs = shared_->options_.idleTimeoutMs;
    if (idleMs <= 0) return;
    idleTimer_.expires_at(lastActivity_ + std::chrono::milliseconds(idleMs));
    idleTimer_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
      if (ec || self->closed_ || self->closing_) return;
      const auto idle = std::chrono::milliseconds(self->shared_->options_.idleTimeoutMs);
      if (self->held_.load() == 0 && Clock::now() >= self->lastActivity_ + idle) {
        self->shared_->count(self->shared_->idleClosed_, LogLevel::kInfo,
                             "closed an idle connection", self->peer_);
        return self->closeNow();
      }
      if (self->held_.load() != 0) self->lastActivity_ = Clock::now();  // busy, not idle
      self->armIdle();
    });
  }

  void badPeer(const std::string& why) {
    shared_->count(shared_->badPeers_, LogLevel::kWarning, "disconnected a peer: " + why, peer_);
    closeNow();
  }

  std::shared_ptr<TcpShared> shared_;
  std::weak_ptr<ListenerCore> listener_;
  std::string peer_;
  std::atomic<bool> open_{true};  // takes replies: until the connection or its listener closes
  std::atomic<size_t> held_{0};   // bytes read and not yet polled, plus replies not yet written
  // The I/O thread's:
  tcp::socket socket_;
  asio::steady_timer idleTimer_;
  asio::steady_timer lingerTimer_;
  FrameScanner scanner_;
  std::vector<char> readBuffer_;
  std::deque<std::string> outgoing_;  // replies not yet handed to a write
  Deadline lastActivity_{};
  bool writing_ = false;
  bool paused_ = false;   // not reading: held_ reached maxBufferedBytes
  bool closing_ = false;  // its listener closed: writing what is queued, then closing
  bool closed_ = false;
};

class TcpIncoming final : public IncomingMessage {
 public:
  TcpIncoming(std::shared_ptr<ServerConnection> connection, std::string body)
      : connection_(std::move(connection)), body_(std::move(body)) {}
  std::string_view body() const override { return body_; }
  Status reply(std::string bytes) override { return connection_->reply(std::move(bytes)); }
  void acknowledge() override {}
  std::string_view peer() const override { return connection_->peer(); }

 private:
  std::shared_ptr<ServerConnection> connection_;
  std::string body_;
};

// The acceptor, the connections and the queue of what they read for one listener. The acceptor
// and the connection table are the I/O thread's; the queue is under mutex_.
class ListenerCore : public std::enable_shared_from_this<ListenerCore> {
 public:
  ListenerCore(std::shared_ptr<TcpShared> shared, tcp::acceptor acceptor)
      : shared_(std::move(shared)), acceptor_(std::move(acceptor)), retry_(shared_->io_) {}

  // I/O thread.
  void accept() {
    acceptor_.async_accept([self = shared_from_this()](const ErrorCode& ec, tcp::socket socket) {
      self->onAccept(ec, std::move(socket));
    });
  }

  // I/O thread: queues a message of `connection`; false once the listener is closed.
  bool enqueue(std::shared_ptr<ServerConnection> connection, std::string body) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return false;
      queue_.push_back({std::move(connection), std::move(body)});
    }
    shared_->received_.fetch_add(1, std::memory_order_relaxed);
    wake_.notify_one();
    return true;
  }

  // I/O thread.
  void forget(ServerConnection* connection) { connections_.erase(connection); }

  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) {
    if (maxBatch == 0) return Status::ok();
    std::unique_lock<std::mutex> lock(mutex_);
    const auto ready = [&] { return closed_ || interrupted_ || !queue_.empty(); };
    if (deadline == kNoDeadline) {
      wake_.wait(lock, ready);
    } else {
      wake_.wait_until(lock, deadline, ready);
    }
    if (closed_) return Status(StatusCode::kShuttingDown, "listener closed");
    if (queue_.empty()) {
      interrupted_ = false;
      return Status::ok();
    }
    for (size_t taken = 0; taken < maxBatch && !queue_.empty(); ++taken) {
      Queued q = std::move(queue_.front());
      queue_.pop_front();
      q.connection->release(q.body.size());
      out.push_back(std::make_unique<TcpIncoming>(std::move(q.connection), std::move(q.body)));
    }
    return Status::ok();
  }

  void interrupt() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      interrupted_ = true;
    }
    wake_.notify_all();
  }

  // Frees the port and stops every connection's reads before it returns; what they were
  // writing gets lingerMs. Unpolled messages are dropped. Idempotent.
  void close() {
    std::deque<Queued> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return;
      closed_ = true;
      dropped.swap(queue_);
    }
    wake_.notify_all();
    shared_->runOnIo([self = shared_from_this()] {
      ErrorCode ignored;
      self->acceptor_.close(ignored);
      self->retry_.cancel();
      const auto connections = std::move(self->connections_);
      self->connections_.clear();
      for (const auto& [raw, connection] : connections) connection->closeLingering();
    });
  }

 private:
  struct Queued {
    std::shared_ptr<ServerConnection> connection;
    std::string body;
  };

  void onAccept(const ErrorCode& ec, tcp::socket socket) {
    if (!acceptor_.is_open()) return;  // closed
    if (ec) {
      // Out of descriptors and the like: try again in a while rather than spin.
      shared_->count(shared_->acceptErrors_, LogLevel::kError, "accept failed: " + ec.message(),
                     "");
      retry_.expires_after(std::chrono::milliseconds(100));
      retry_.async_wait([self = shared_from_this()](const ErrorCode& e) {
        if (!e) self->accept();
      });
      return;
    }
    if (connections_.size() >= shared_->options_.maxConnections) {
      ErrorCode ignored;
      const tcp::endpoint remote = socket.remote_endpoint(ignored);
      shared_->count(shared_->connectionsRefused_, LogLevel::kWarning,
                     "refused a connection: maxConnections reached", endpointText(remote));
      closeSocket(socket);
    } else {
      shared_->connectionsAccepted_.fetch_add(1, std::memory_order_relaxed);
      configureSocket(socket, shared_->options_);
      auto connection = std::make_shared<ServerConnection>(shared_, weak_from_this(),
                                                           std::move(socket));
      connections_.emplace(connection.get(), connection);
      connection->start();
    }
    accept();
  }

  std::shared_ptr<TcpShared> shared_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Queued> queue_;  // guarded by mutex_
  bool interrupted_ = false;  // guarded by mutex_
  bool closed_ = false;       // guarded by mutex_
  // The I/O thread's:
  tcp::acceptor acceptor_;
  asio::steady_timer retry_;
  std::map<ServerConnection*, std::shared_ptr<ServerConnection>> connections_;
};

void ServerConnection::closeNow() {
  if (closed_) return;
  closed_ = true;
  open_.store(false);
  idleTimer_.cancel();
  lingerTimer_.cancel();
  closeSocket(socket_);
  for (const std::string& bytes : outgoing_) {
    release(bytes.size());
    shared_->count(shared_->repliesDropped_, LogLevel::kWarning,
                   "reply dropped: its connection is closed", peer_);
  }
  outgoing_.clear();
  if (auto listener = listener_.lock()) listener->forget(this);  // the caller holds a reference
}

void ServerConnection::onRead(const ErrorCode& ec, size_t n) {
  if (closed_ || closing_) return;
  if (ec) {
    if (ec != asio::error::eof) {
      shared_->options_.log(LogLevel::kDebug, kComponent, "connection lost: " + ec.message(),
                            {{"peer", peer_}});
    }
    return closeNow();
  }
  lastActivity_ = Clock::now();
  scanner_.append(readBuffer_.data(), n);
  std::string message, why;
  for (;;) {
    const FrameScanner::Step step = scanner_.next(message, why);
    if (step == FrameScanner::Step::kNeedMore) break;
    if (step == FrameScanner::Step::kBad) return badPeer(why);
    if (!isServerBound(message)) {
      return badPeer("not a request, notification or cancel array");
    }
    const std::shared_ptr<ListenerCore> listener = listener_.lock();
    const size_t size = message.size();
    hold(size);
    if (!listener || !listener->enqueue(shared_from_this(), std::move(message))) {
      release(size);
      return closeNow();
    }
  }
  if (held_.load() >= shared_->options_.maxBufferedBytes) {
    paused_ = true;  // release() resumes
    shared_->count(shared_->readsPaused_, LogLevel::kInfo,
                   "paused reading: maxBufferedBytes held for the connection", peer_);
    return;
  }
  read();
}

class TcpListener final : public Listener {
 public:
  explicit TcpListener(std::shared_ptr<ListenerCore> core) : core_(std::move(core)) {}
  ~TcpListener() override { close(); }
  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
    return core_->poll(deadline, maxBatch, out);
  }
  void interrupt() override { core_->interrupt(); }
  void close() override { core_->close(); }

 private:
  std::shared_ptr<ListenerCore> core_;
};

// A client channel: one connection at a time to the URL, made again after a loss. send() queues
// under mutex_; everything else is the I/O thread's. Callbacks run on the I/O thread under
// callbackMutex_, which close() takes to switch them off.
class ChannelCore : public std::enable_shared_from_this<ChannelCore> {
 public:
  ChannelCore(std::shared_ptr<TcpShared> shared, tcp::resolver::results_type endpoints,
              ReplyCallback onReply, LinkCallback onLink)
      : shared_(std::move(shared)),
        endpoints_(std::move(endpoints)),
        onReply_(std::move(onReply)),
        onLink_(std::move(onLink)),
        socket_(shared_->io_),
        retry_(shared_->io_),
        linger_(shared_->io_),
        scanner_(frameLimitsOf(shared_->options_)),
        readBuffer_(kReadChunk),
        backoffMs_(shared_->options_.reconnectIvlMs) {}

  void start() {
    asio::post(shared_->io_, [self = shared_from_this()] { self->connect(); });
  }

  Status send(std::string bytes, Deadline deadline) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return Status(StatusCode::kShuttingDown, "channel closed");
    if (queuedBytes_ + bytes.size() > shared_->options_.maxBufferedBytes) {
      return Status(StatusCode::kOverloaded,
                    "the channel holds maxBufferedBytes not yet written to " + shared_->url_);
    }
    queuedBytes_ += bytes.size();
    pending_.push_back({std::move(bytes), deadline});
    if (!flushPosted_) {
      flushPosted_ = true;
      asio::post(shared_->io_, [self = shared_from_this()] { self->flush(); });
    }
    return Status::ok();
  }

  // No callback runs once this returns; the I/O thread then writes what is queued (within
  // lingerMs) and closes the connection.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    {
      std::lock_guard<std::mutex> lock(callbackMutex_);
      callbacksOn_ = false;
    }
    asio::post(shared_->io_, [self = shared_from_this()] { self->closeOnIo(); });
  }

 private:
  struct Outgoing {
    std::string bytes;
    Deadline deadline;
  };

  void link(LinkEvent event, const std::string& detail) {
    std::lock_guard<std::mutex> lock(callbackMutex_);
    if (callbacksOn_ && onLink_) onLink_(event, detail);
  }

  // Drops the queued messages whose deadline passed (all of them with `all`), counted.
  void expire(bool all) {
    std::lock_guard<std::mutex> lock(mutex_);
    const Deadline now = Clock::now();
    std::erase_if(pending_, [&](const Outgoing& o) {
      if (!all && now < o.deadline) return false;
      queuedBytes_ -= o.bytes.size();
      shared_->count(shared_->sendsExpired_, LogLevel::kWarning,
                     all ? "message not sent before the channel closed"
                         : "request not sent before its deadline",
                     shared_->url_);
      return true;
    });
  }

  void connect() {
    if (closing_) return;
    expire(false);
    asio::async_connect(socket_, endpoints_,
                        [self = shared_from_this()](const ErrorCode& ec, const tcp::endpoint&) {
                          self->onConnect(ec);
                        });
  }

  void onConnect(const ErrorCode& ec) {
    if (closing_) return;
    if (ec) {
      link(LinkEvent::kRefused, "cannot connect to " + shared_->url_ + ": " + ec.message() +
                                    " (retrying in " + std::to_string(backoffMs_) + " ms)");
      return reconnectLater();
    }
    configureSocket(socket_, shared_->options_);
    connected_ = true;
    backoffMs_ = shared_->options_.reconnectIvlMs;
    link(LinkEvent::kUp, "connected to " + shared_->url_);
    read(generation_);
    flush();
  }

  void reconnectLater() {
    closeSocket(socket_);
    retry_.expires_after(std::chrono::milliseconds(backoffMs_));
    backoffMs_ = std::min(backoffMs_ * 2, shared_->options_.reconnectIvlMaxMs);
    retry_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
      if (!ec) self->connect();
    });
  }

  // The connection of generation_ is gone: what it was writing is lost; reconnect.
  void lost(const std::string& why) {
    ++generation_;
    connected_ = false;
    scanner_.reset();
    if (writing_) {
      writing_ = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queuedBytes_ -= writingBytes_;
      }
      for (size_t i = 0; i < writingCount_; ++i) {
        shared_->count(shared_->sendsLost_, LogLevel::kWarning,
                       "message lost with its connection", shared_->url_);
      }
    }
    if (closing_) return finishClose();
    link(LinkEvent::kDown, "lost the link to " + shared_->url_ + ": " + why);
    reconnectLater();
  }

  void read(uint64_t generation) {
    socket_.async_read_some(asio::buffer(readBuffer_),
                            [self = shared_from_this(), generation](const ErrorCode& ec, size_t n) {
                              self->onRead(generation, ec, n);
                            });
  }

  void onRead(uint64_t generation, const ErrorCode& ec, size_t n) {
    if (generation != generation_ || !connected_) return;  // a connection gone since
    if (ec) return lost(ec == asio::error::eof ? "closed by the peer" : ec.message());
    scanner_.append(readBuffer_.data(), n);
    std::string message, why;
    for (;;) {
      const FrameScanner::Step step = scanner_.next(message, why);
      if (step == FrameScanner::Step::kNeedMore) break;
      if (step == FrameScanner::Step::kBad) {
        shared_->count(shared_->badPeers_, LogLevel::kWarning,
                       "dropped the connection to a server: " + why, shared_->url_);
        return lost(why);
      }
      std::lock_guard<std::mutex> lock(callbackMutex_);
      const std::string_view reply = message;
      if (callbacksOn_ && onReply_) onReply_(std::span<const std::string_view>(&reply, 1));
    }
    read(generation);
  }

  void flush() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      flushPosted_ = false;
    }
    if (!connected_ || writing_) return;
    expire(false);
    auto batch = std::make_shared<std::vector<std::string>>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Outgoing& o : pending_) batch->push_back(std::move(o.bytes));
      pending_.clear();
    }
    if (batch->empty()) {
      if (closing_) finishClose();
      return;
    }
    writing_ = true;
    writingBytes_ = totalSize(*batch);
    writingCount_ = batch->size();
    asio::async_write(
        socket_, buffersOf(*batch),
        [self = shared_from_this(), batch, generation = generation_](const ErrorCode& ec, size_t) {
          self->onWrite(generation, ec);
        });
  }

  void onWrite(uint64_t generation, const ErrorCode& ec) {
    if (generation != generation_) return;  // lost() accounted for it
    if (ec) return lost(ec.message());
    writing_ = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queuedBytes_ -= writingBytes_;
    }
    flush();
  }

  void closeOnIo() {
    closing_ = true;
    retry_.cancel();
    if (!connected_) return finishClose();
    flush();  // finishes the close when nothing is left to write
    if (!finished_) {
      linger_.expires_after(std::chrono::milliseconds(shared_->options_.lingerMs));
      linger_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
        if (!ec) self->finishClose();
      });
    }
  }

  void finishClose() {
    if (finished_) return;
    finished_ = true;
    ++generation_;
    connected_ = false;
    retry_.cancel();
    linger_.cancel();
    closeSocket(socket_);
    expire(true);
  }

  std::shared_ptr<TcpShared> shared_;
  const tcp::resolver::results_type endpoints_;
  const ReplyCallback onReply_;
  const LinkCallback onLink_;
  std::mutex mutex_;
  std::deque<Outgoing> pending_;  // guarded by mutex_
  size_t queuedBytes_ = 0;        // guarded by mutex_: pending_ and the write in progress
  bool flushPosted_ = false;      // guarded by mutex_
  bool closed_ = false;           // guarded by mutex_
  std::mutex callbackMutex_;
  bool callbacksOn_ = true;  // guarded by callbackMutex_
  // The I/O thread's:
  tcp::socket socket_;
  asio::steady_timer retry_;
  asio::steady_timer linger_;
  FrameScanner scanner_;
  std::vector<char> readBuffer_;
  int backoffMs_;
  uint64_t generation_ = 0;  // of the connection: handlers of an older one do nothing
  bool connected_ = false;
  bool writing_ = false;
  size_t writingBytes_ = 0, writingCount_ = 0;  // of the write in progress
  bool closing_ = false;
  bool finished_ = false;
};

class TcpChannel final : public ClientChannel {
 public:
  explicit TcpChannel(std::shared_ptr<ChannelCore> core) : core_(std::move(core)) {}
  ~TcpChannel() override { core_->close(); }
  Status send(const Address&, std::string bytes, Deadline deadline) override {
    return core_->send(std::move(bytes), deadline);
  }

 private:
  std::shared_ptr<ChannelCore> core_;
};

// The endpoints of the URL's host and port. kTransportError when they cannot be resolved.
Result<tcp::resolver::results_type> resolve(TcpShared& shared, bool passive) {
  if (!shared.parsed_) return shared.parsed_.status();
  const HostPort& hp = *shared.parsed_;
  tcp::resolver resolver(shared.io_);
  ErrorCode ec;
  auto flags = tcp::resolver::numeric_service;
  if (passive) flags |= tcp::resolver::passive;
  tcp::resolver::results_type results = resolver.resolve(hp.host, hp.port, flags, ec);
  if (ec || results.empty()) {
    return Status(StatusCode::kTransportError,
                  "cannot resolve " + shared.url_ + ": " + (ec ? ec.message() : "no address"));
  }
  return results;
}

}  // namespace
}  // namespace detail

Status MsgpackRpcTcpTransport::checkUrl(std::string_view url) {
  return detail::parseUrl(url).status();
}

MsgpackRpcTcpTransport::MsgpackRpcTcpTransport(std::string url)
    : MsgpackRpcTcpTransport(std::move(url), Options{}) {}

MsgpackRpcTcpTransport::MsgpackRpcTcpTransport(std::string url, Options options)
    : shared_(std::make_shared<detail::TcpShared>(std::move(url), std::move(options))) {
  shared_->start();
}

MsgpackRpcTcpTransport::~MsgpackRpcTcpTransport() { shared_->stop(); }

Result<std::unique_ptr<Listener>> MsgpackRpcTcpTransport::listen(const Address&) {
  namespace asio = boost::asio;
  using asio::ip::tcp;
  Result<tcp::resolver::results_type> endpoints = detail::resolve(*shared_, true);
  if (!endpoints) return endpoints.status();
  const tcp::endpoint endpoint = endpoints->begin()->endpoint();
  tcp::acceptor acceptor(shared_->io_);
  boost::system::error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status(StatusCode::kTransportError, "cannot bind " + shared_->url_ + ": " + ec.message());
  }
  const tcp::endpoint bound = acceptor.local_endpoint(ec);
  {
    std::lock_guard<std::mutex> lock(shared_->mutex_);
    shared_->boundEndpoint_ = std::string(kScheme) + detail::endpointText(bound);
  }
  auto core = std::make_shared<detail::ListenerCore>(shared_, std::move(acceptor));
  asio::post(shared_->io_, [core] { core->accept(); });
  return std::unique_ptr<Listener>(std::make_unique<detail::TcpListener>(std::move(core)));
}

Result<std::unique_ptr<ClientChannel>> MsgpackRpcTcpTransport::openChannel(ReplyCallback onReply,
                                                                           LinkCallback onLink) {
  auto endpoints = detail::resolve(*shared_, false);
  if (!endpoints) return endpoints.status();
  auto core = std::make_shared<detail::ChannelCore>(shared_, std::move(endpoints).value(),
                                                    std::move(onReply), std::move(onLink));
  core->start();
  return std::unique_ptr<ClientChannel>(std::make_unique<detail::TcpChannel>(std::move(core)));
}

Status MsgpackRpcTcpTransport::publish(std::string_view, std::string) {
  return Status(StatusCode::kInvalidState,
                "msgpack+tcp:// carries calls and casts only: no notifications");
}

Result<std::unique_ptr<Listener>> MsgpackRpcTcpTransport::subscribe(const Subscription&) {
  return Status(StatusCode::kInvalidState,
                "msgpack+tcp:// carries calls and casts only: no notifications");
}

const std::string& MsgpackRpcTcpTransport::url() const { return shared_->url_; }

std::string MsgpackRpcTcpTransport::boundEndpoint() const {
  std::lock_guard<std::mutex> lock(shared_->mutex_);
  return shared_->boundEndpoint_;
}

MsgpackRpcTcpTransport::Stats MsgpackRpcTcpTransport::stats() const {
  const detail::TcpShared& s = *shared_;
  Stats out;
  out.received = s.received_.load();
  out.badPeers = s.badPeers_.load();
  out.repliesSent = s.repliesSent_.load();
  out.repliesDropped = s.repliesDropped_.load();
  out.sendsExpired = s.sendsExpired_.load();
  out.sendsLost = s.sendsLost_.load();
  out.connectionsAccepted = s.connectionsAccepted_.load();
  out.connectionsRefused = s.connectionsRefused_.load();
  out.idleClosed = s.idleClosed_.load();
  out.readsPaused = s.readsPaused_.load();
  return out;
}

}  // namespace switchboard
