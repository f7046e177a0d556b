// TcpRelay (header-only): a TCP relay for fault-injection tests on 127.0.0.1:0, forwarding each
// connection to a target in a mode switched at run time (pass, delay, blackhole, reset).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/deadline.h"

namespace switchboard::testing {

// One thread polls the listening socket, an eventfd (the waker) and both sockets of every
// connection; nothing blocks but that poll. Each direction of a connection buffers at most
// Options::bufferBytes and stops reading while full, so a slow side pushes back on the other
// through TCP. Modes, switched by setMode() from any thread:
//  - kPass: forward as fast as both sides take it (what kDelay held is released at once);
//  - kDelay: hold every chunk read for the given delay (at most Options::maxDelay), then forward;
//  - kBlackhole: accept new connections (and connect them to the target) but move nothing in
//    either direction: nothing is read, so TCP keeps every byte (and closes) pending, and the
//    connections stay open; switching back to kPass resumes them where they stood;
//  - kReset: close every connection on both sides with an RST (SO_LINGER 0), and reset each new
//    one as soon as it is accepted.
// A connection whose side closes is closed on the other side once what it sent is forwarded; a
// side that fails (reset, refused target) resets the other. The destructor stops and joins the
// thread and closes every socket. Thread-safe.
class TcpRelay {
 public:
  enum class Mode { kPass, kDelay, kBlackhole, kReset };

  struct Options {
    size_t bufferBytes = 256 << 10;  // per direction of a connection
    size_t chunkBytes = 16 << 10;    // largest read, and the unit kDelay holds
    size_t maxConnections = 64;      // more are reset as soon as accepted
    int socketBufferBytes = 0;       // SO_RCVBUF and SO_SNDBUF of every socket; 0: the kernel's
    Duration maxDelay = std::chrono::seconds(10);  // the bound of kDelay
  };

  struct Counters {
    uint64_t accepted = 0;         // connections accepted and relayed
    uint64_t refused = 0;          // connections reset when accepted (kReset, too many)
    uint64_t resets = 0;           // relayed connections closed with an RST
    uint64_t bytesUpstream = 0;    // forwarded client -> target
    uint64_t bytesDownstream = 0;  // forwarded target -> client
    size_t open = 0;               // relayed connections open now
  };

  // Relays to `targetUrl`, "tcp://HOST:PORT" with an IPv4 HOST. ok() tells whether it listens.
  explicit TcpRelay(const std::string& targetUrl) : TcpRelay(targetUrl, Options{}) {}
  TcpRelay(const std::string& targetUrl, Options options) : options_(options) {
    if (!parseTarget(targetUrl)) return;
    waker_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (waker_ < 0 || listener_ < 0) return;
    applyBufferSizes(listener_);  // accepted sockets inherit them
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener_, 64) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }

  // Stops and joins the thread; every socket is closed when it returns.
  ~TcpRelay() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
    if (listener_ >= 0) ::close(listener_);
    if (waker_ >= 0) ::close(waker_);
  }
  TcpRelay(const TcpRelay&) = delete;
  TcpRelay& operator=(const TcpRelay&) = delete;

  bool ok() const { return thread_.joinable(); }
  uint16_t port() const { return port_; }
  // What clients connect to instead of the target.
  std::string url() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

  // Switches the mode (`delay` is kDelay's, clamped to [0, Options::maxDelay]) and returns once
  // the relay's thread has applied it: true, or false if it did not within `bound`.
  bool setMode(Mode mode, Duration delay = Duration::zero(),
               Duration bound = std::chrono::seconds(5)) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!ok()) return false;
    mode_ = mode;
    delay_ = std::clamp(delay, Duration::zero(), options_.maxDelay);
    const uint64_t wanted = ++requested_;
    lock.unlock();
    wake();
    lock.lock();
    return applied_cv_.wait_for(lock, bound, [&] { return applied_ >= wanted; });
  }

  Counters counters() const {
    Counters c;
    c.accepted = accepted_.load();
    c.refused = refused_.load();
    c.resets = resets_.load();
    c.bytesUpstream = bytesUp_.load();
    c.bytesDownstream = bytesDown_.load();
    c.open = open_.load();
    return c;
  }

 private:
  struct Chunk {
    std::string bytes;
    Deadline releaseAt;
  };
  // One direction: what was read from `from` and not yet written to `to`.
  struct Flow {
    std::deque<Chunk> chunks;
    size_t buffered = 0;  // bytes in chunks, less what was written of the first
    size_t written = 0;   // of the first chunk
    bool eof = false;     // `from` closed its side: close the connection once drained
  };
  struct Connection {
    int client = -1;
    int target = -1;
    bool connecting = true;  // the target connect is in progress
    Flow up;                 // client -> target
    Flow down;               // target -> client
    bool dead = false;       // close now
    bool reset = false;      // with an RST
  };

  bool parseTarget(const std::string& url) {
    const std::string scheme = "tcp://";
    if (url.rfind(scheme, 0) != 0) return false;
    const size_t colon = url.rfind(':');
    if (colon == std::string::npos || colon < scheme.size()) return false;
    const std::string host = url.substr(scheme.size(), colon - scheme.size());
    const int port = std::atoi(url.c_str() + colon + 1);
    if (port <= 0 || port > 65535) return false;
    target_.sin_family = AF_INET;
    target_.sin_port = htons(static_cast<uint16_t>(port));
    return ::inet_pton(AF_INET, host.c_str(), &target_.sin_addr) == 1;
  }

  void applyBufferSizes(int fd) const {
    if (options_.socketBufferBytes <= 0) return;
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &options_.socketBufferBytes,
                       sizeof options_.socketBufferBytes);
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &options_.socketBufferBytes,
                       sizeof options_.socketBufferBytes);
  }

  void wake() const {
    const uint64_t one = 1;
    if (waker_ >= 0) (void)!::write(waker_, &one, sizeof one);
  }

  // Closes `fd`; with an RST instead of a FIN when `reset`.
  static void closeSocket(int fd, bool reset) {
    if (fd < 0) return;
    if (reset) {
      const linger abort{1, 0};
      (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
    }
    ::close(fd);
  }

  void closeConnection(Connection& c) {
    if (c.reset) resets_.fetch_add(1);
    closeSocket(c.client, c.reset);
    closeSocket(c.target, c.reset);
    c.client = c.target = -1;
    open_.fetch_sub(1);
  }

  void accept(Mode mode) {
    for (int i = 0; i < 64; ++i) {  // bounded per turn; the poll reports the rest
      const int client = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) return;  // EAGAIN, or an aborted connection: nothing more now
      if (mode == Mode::kReset || connections_.size() >= options_.maxConnections) {
        closeSocket(client, true);
        refused_.fetch_add(1);
        continue;
      }
      auto c = std::make_unique<Connection>();
      c->client = client;
      c->target = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      open_.fetch_add(1);
      accepted_.fetch_add(1);
      if (c->target >= 0) applyBufferSizes(c->target);
      if (c->target < 0 ||
          (::connect(c->target, reinterpret_cast<const sockaddr*>(&target_), sizeof target_) != 0 &&
           errno != EINPROGRESS)) {
        c->dead = c->reset = true;  // the target refused: so does the relay
      }
      connections_.push_back(std::move(c));
    }
  }

  // Reads what `from` has, up to the room left in `flow`.
  void readInto(int from, Flow& flow, Connection& c, Deadline releaseAt) {
    const size_t room = options_.bufferBytes - std::min(options_.bufferBytes, flow.buffered);
    if (room == 0 || flow.eof) return;
    std::string bytes(std::min(room, options_.chunkBytes), '\0');
    const ssize_t n = ::recv(from, bytes.data(), bytes.size(), 0);
    if (n > 0) {
      bytes.resize(static_cast<size_t>(n));
      flow.buffered += bytes.size();
      flow.chunks.push_back({std::move(bytes), releaseAt});
    } else if (n == 0) {
      flow.eof = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      c.dead = c.reset = true;
    }
  }

  // Writes the chunks of `flow` that are due to `to`.
  void writeFrom(Flow& flow, int to, Connection& c, std::atomic<uint64_t>& counter, Deadline now) {
    while (!flow.chunks.empty() && flow.chunks.front().releaseAt <= now) {
      Chunk& chunk = flow.chunks.front();
      const ssize_t n = ::send(to, chunk.bytes.data() + flow.written,
                               chunk.bytes.size() - flow.written, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c.dead = c.reset = true;
        return;
      }
      counter.fetch_add(static_cast<uint64_t>(n));
      flow.written += static_cast<size_t>(n);
      flow.buffered -= static_cast<size_t>(n);
      if (flow.written < chunk.bytes.size()) return;  // the socket is full
      flow.chunks.pop_front();
      flow.written = 0;
    }
  }

  static bool due(const Flow& flow, Deadline now) {
    return !flow.chunks.empty() && flow.chunks.front().releaseAt <= now;
  }

  // What to poll a side for: read while there is room, write while something is due.
  short eventsFor(const Flow& readFlow, const Flow& writeFlow, Mode mode, Deadline now) const {
    if (mode == Mode::kBlackhole) return 0;  // errors and hang-ups are reported anyway
    short events = 0;
    if (!readFlow.eof && readFlow.buffered < options_.bufferBytes) events |= POLLIN;
    if (due(writeFlow, now)) events |= POLLOUT;
    return events;
  }

  void run() {
    Mode mode = Mode::kPass;
    Duration delay{};
    std::vector<pollfd> fds;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) break;
        if (applied_ != requested_) {
          mode = mode_;
          delay = delay_;
          const Deadline now = Clock::now();
          for (auto& c : connections_) {
            if (mode == Mode::kReset) c->dead = c->reset = true;
            if (mode == Mode::kPass) {  // what kDelay held goes now
              for (Chunk& chunk : c->up.chunks) chunk.releaseAt = std::min(chunk.releaseAt, now);
              for (Chunk& chunk : c->down.chunks) chunk.releaseAt = std::min(chunk.releaseAt, now);
            }
          }
          reap();
          applied_ = requested_;
          applied_cv_.notify_all();
        }
      }
      const Deadline now = Clock::now();
      Deadline next = kNoDeadline;
      fds.clear();
      fds.push_back({waker_, POLLIN, 0});
      fds.push_back({listener_, POLLIN, 0});
      for (auto& c : connections_) {
        fds.push_back({c->client, eventsFor(c->up, c->down, mode, now), 0});
        const short targetEvents =
            c->connecting ? short{POLLOUT} : eventsFor(c->down, c->up, mode, now);
        fds.push_back({c->target, targetEvents, 0});
        if (mode != Mode::kBlackhole) {
          for (const Flow* flow : {&c->up, &c->down}) {
            if (!flow->chunks.empty() && flow->chunks.front().releaseAt > now) {
              next = std::min(next, flow->chunks.front().releaseAt);
            }
          }
        }
      }
      int timeoutMs = -1;
      if (next != kNoDeadline) {
        timeoutMs = static_cast<int>(std::clamp<int64_t>(
            std::chrono::ceil<std::chrono::milliseconds>(next - now).count(), 0, 60'000));
      }
      const int ready = ::poll(fds.data(), fds.size(), timeoutMs);
      if (ready < 0 && errno != EINTR) break;  // cannot happen with valid descriptors
      if (ready <= 0) continue;
      if (fds[0].revents != 0) {
        uint64_t count = 0;
        (void)!::read(waker_, &count, sizeof count);
      }
      const Deadline after = Clock::now();
      const Deadline releaseAt = mode == Mode::kDelay ? after + delay : after;
      const size_t polled = connections_.size();  // accept() appends after these
      for (size_t i = 0; i < polled; ++i) {
        Connection& c = *connections_[i];
        const short clientEvents = fds[2 + 2 * i].revents;
        const short targetEvents = fds[3 + 2 * i].revents;
        if (c.connecting && targetEvents != 0) {
          int error = 0;
          socklen_t len = sizeof error;
          (void)::getsockopt(c.target, SOL_SOCKET, SO_ERROR, &error, &len);
          if (error != 0) {
            c.dead = c.reset = true;
            continue;
          }
          c.connecting = false;
        } else if (!c.connecting && (targetEvents & POLLIN) != 0) {
          readInto(c.target, c.down, c, releaseAt);
        }
        if ((clientEvents & POLLIN) != 0) readInto(c.client, c.up, c, releaseAt);
        if ((clientEvents & POLLERR) != 0 || (!c.connecting && (targetEvents & POLLERR) != 0)) {
          c.dead = c.reset = true;
        } else if (((clientEvents | (c.connecting ? 0 : targetEvents)) & POLLHUP) != 0 &&
                   ((clientEvents | targetEvents) & POLLIN) == 0) {
          c.dead = true;  // both directions are closed
        }
        if (!c.dead && mode != Mode::kBlackhole) {
          if (!c.connecting) writeFrom(c.up, c.target, c, bytesUp_, after);
          writeFrom(c.down, c.client, c, bytesDown_, after);
        }
        // A side that closed, once what it sent went through, closes the connection.
        if ((c.up.eof && c.up.chunks.empty()) || (c.down.eof && c.down.chunks.empty())) {
          c.dead = true;
        }
      }
      if (fds[1].revents != 0) accept(mode);
      reap();
    }
    for (auto& c : connections_) closeConnection(*c);
    connections_.clear();
  }

  // Closes and forgets the dead connections.
  void reap() {
    for (auto& c : connections_) {
      if (c->dead) closeConnection(*c);
    }
    std::erase_if(connections_, [](const std::unique_ptr<Connection>& c) { return c->client < 0; });
  }

  const Options options_;
  sockaddr_in target_{};
  int listener_ = -1;
  int waker_ = -1;
  uint16_t port_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable applied_cv_;
  Mode mode_ = Mode::kPass;  // guarded by mutex_, with delay_: what setMode() asked
  Duration delay_{};         // guarded by mutex_
  uint64_t requested_ = 0;   // guarded by mutex_: setMode() calls
  uint64_t applied_ = 0;     // guarded by mutex_: those the thread has applied
  bool stopping_ = false;    // guarded by mutex_

  std::vector<std::unique_ptr<Connection>> connections_;  // the relay's thread only
  std::atomic<uint64_t> accepted_{0}, refused_{0}, resets_{0}, bytesUp_{0}, bytesDown_{0};
  std::atomic<size_t> open_{0};
  std::thread thread_;  // last: started once everything above is set
};

}  // namespace switchboard::testing
