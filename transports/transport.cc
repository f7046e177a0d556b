#include "transports/transport.h"

#include <unistd.h>

#include "transports/detail/eventfd.h"

namespace switchboard {

ReceiveWaker::ReceiveWaker() : fd_(detail::makeEventFd()) {}

ReceiveWaker::~ReceiveWaker() {
  if (fd_ >= 0) ::close(fd_);
}

void ReceiveWaker::rearm() {
  owner_ = std::this_thread::get_id();
  woken_.store(false, std::memory_order_relaxed);
  if (signalled_.exchange(false, std::memory_order_acq_rel)) detail::drainEventFd(fd_);
}

void ReceiveWaker::wake() {
  if (woken_.exchange(true, std::memory_order_acq_rel)) return;
  // The owner checks woken() between the replies it hands over; only a sleeping one needs fd_.
  if (std::this_thread::get_id() == owner_) return;
  signalled_.store(true, std::memory_order_release);
  detail::signalEventFd(fd_);
}

}  // namespace switchboard
