// The eventfd a thread asleep in poll() or epoll is woken through: made non-blocking, signalled
// by adding one, drained by reading the count back to zero. Shared by the ZeroMQ wakers and
// ReceiveWaker.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace switchboard::detail {

// -1 (errno set) when the system has no descriptor left.
inline int makeEventFd() { return ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

// Makes `fd` readable until drained; never blocks.
inline void signalEventFd(int fd) {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

// Makes `fd` unreadable again; never blocks.
inline void drainEventFd(int fd) {
  uint64_t value;
  [[maybe_unused]] ssize_t n = ::read(fd, &value, sizeof value);
}

}  // namespace switchboard::detail
