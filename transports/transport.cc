#include "transports/transport.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace switchboard {

ReceiveWaker::ReceiveWaker() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

ReceiveWaker::~ReceiveWaker() {
  if (fd_ >= 0) ::close(fd_);
}

void ReceiveWaker::rearm() {
  owner_ = std::this_thread::get_id();
  woken_.store(false, std::memory_order_relaxed);
  if (signalled_.exchange(false, std::memory_order_acq_rel)) {
    uint64_t value;
    [[maybe_unused]] ssize_t n = ::read(fd_, &value, sizeof value);
  }
}

void ReceiveWaker::wake() {
  if (woken_.exchange(true, std::memory_order_acq_rel)) return;
  // The owner checks woken() between the replies it hands over; only a sleeping one needs fd_.
  if (std::this_thread::get_id() == owner_) return;
  signalled_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
}

}  // namespace switchboard
