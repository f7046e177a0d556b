// What every ZeroMQ socket user of the project shares (the transport, the notification broker):
// the eventfd waker, sleeping in poll() (waitReadable) or epoll (EpollSet), socket options from
// limits, poll timeouts, ZMQ_EVENTS.
#pragma once

#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <span>
#include <system_error>
#include <zmq.hpp>

#include "base/deadline.h"
#include "transports/detail/eventfd.h"

namespace switchboard::detail {

// A waker for a thread asleep in poll() or epoll: an eventfd any thread may signal.
class Waker {
 public:
  Waker() : fd_(makeEventFd()) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  ~Waker() { ::close(fd_); }
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;
  void wake() { signalEventFd(fd_); }
  void drain() { drainEventFd(fd_); }
  int fd() const { return fd_; }

 private:
  int fd_;
};

// An epoll set of descriptors to wait for until readable, each one registered once; watch()
// turns a descriptor's reports off and on (never failing: it allocates nothing), and a thread
// asleep in wait() sees the change at once (turned on while readable, it wakes).
class EpollSet {
 public:
  EpollSet() : fd_(::epoll_create1(EPOLL_CLOEXEC)) {}
  ~EpollSet() {
    if (fd_ >= 0) ::close(fd_);
  }
  EpollSet(const EpollSet&) = delete;
  EpollSet& operator=(const EpollSet&) = delete;
  bool valid() const { return fd_ >= 0; }
  // False when the system refused (errno says why).
  bool add(int fd) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    return ::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &event) == 0;
  }
  // `fd` must have been add()ed.
  void watch(int fd, bool on) {
    epoll_event event{};
    event.events = on ? uint32_t{EPOLLIN} : uint32_t{0};
    event.data.fd = fd;
    [[maybe_unused]] int rc = ::epoll_ctl(fd_, EPOLL_CTL_MOD, fd, &event);
  }
  // Sleeps until a watched descriptor is readable or `timeoutMs` (-1: none) passed; returns how
  // many `ready` holds, or -1 on an error other than EINTR (a signal returns 0, like a timeout).
  int wait(std::span<epoll_event> ready, long timeoutMs) {
    const int n = ::epoll_wait(fd_, ready.data(), static_cast<int>(ready.size()),
                               static_cast<int>(timeoutMs));
    return n >= 0 ? n : (errno == EINTR ? 0 : -1);
  }

 private:
  int fd_;
};

// Linger, message size, ZMTP heartbeats and high-water marks from any options struct that has
// these fields (ZmqTransport::Options, ZmqNotificationBroker::Options). Throws zmq::error_t.
template <typename Limits>
void applySocketOptions(zmq::socket_t& socket, const Limits& o) {
  socket.set(zmq::sockopt::linger, o.lingerMs);
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(o.maxMessageBytes));
  socket.set(zmq::sockopt::heartbeat_ivl, o.heartbeatIvlMs);
  socket.set(zmq::sockopt::heartbeat_timeout, o.heartbeatTimeoutMs);
  socket.set(zmq::sockopt::heartbeat_ttl, o.heartbeatTimeoutMs);
  socket.set(zmq::sockopt::sndhwm, o.sendHighWaterMark);
  socket.set(zmq::sockopt::rcvhwm, o.sendHighWaterMark);
}

// Milliseconds for zmq::poll until `deadline`: -1 for none, rounded up so it never spins.
inline long pollTimeoutMs(Deadline deadline) {
  if (deadline == kNoDeadline) return -1;
  const auto left = deadline - Clock::now();
  if (left <= Duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > 3600 * 1000 ? 3600 * 1000 : static_cast<long>(ms);
}

// Sleeps until one of `fds` is ready (their revents say which) or `timeoutMs` (-1: none)
// passed, in one poll() system call; zmq::poll makes one with a zero timeout first, and reads
// ZMQ_EVENTS before and after for every ZeroMQ socket among its items. Wait on a socket's
// ZMQ_FD here only after isReadable() or a receive that found nothing (that descriptor signals
// changes only). False on an error other than EINTR (a signal wakes it like an event).
inline bool waitReadable(std::span<pollfd> fds, long timeoutMs) {
  return ::poll(fds.data(), fds.size(), static_cast<int>(timeoutMs)) >= 0 || errno == EINTR;
}

// True when `socket` has a message to read. Reading ZMQ_EVENTS also resets the socket's ZMQ_FD,
// which signals only changes: a thread that used the socket must look here before it (or
// another) sleeps on that descriptor.
inline bool isReadable(zmq::socket_t& socket) {
  return (socket.get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
}

}  // namespace switchboard::detail
