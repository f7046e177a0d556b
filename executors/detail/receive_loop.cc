// ReceiveLoop: polling, hand-off, timers and the outstanding-work count of an executor epoch.
// The source's interrupt() is the loop's waker while it polls; wakeup_ once it is stopping.
#include "executors/detail/receive_loop.h"

#include <algorithm>
#include <exception>
#include <utility>

namespace switchboard::detail {

ReceiveLoop::ReceiveLoop(LogSink log, std::string component)
    : log_(std::move(log)), component_(std::move(component)) {}

void ReceiveLoop::arm(TaskSource& source) {
  std::lock_guard<std::mutex> lock(mutex_);
  source_ = &source;
  armed_ = true;
  stopRequested_ = false;
  sourceBroken_ = false;
  woken_ = false;
  done_ = false;
}

void ReceiveLoop::wake() {
  woken_ = true;
  wakeup_.notify_all();
  if (source_ != nullptr) source_->interrupt();
}

void ReceiveLoop::requestStop() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_ || stopRequested_) return;
  stopRequested_ = true;
  wake();
}

void ReceiveLoop::finishWithoutRunning() {
  std::multimap<Deadline, std::function<void()>> dropped;
  std::lock_guard<std::mutex> lock(mutex_);
  dropped.swap(timers_);  // destroyed after the lock is released (declared first)
  armed_ = false;
  source_ = nullptr;
  // Work guards taken before the stop still hold the epoch: the last release finishes it.
  done_ = outstanding_ == 0;
  if (done_) finished_.notify_all();
}

bool ReceiveLoop::waitFinished(Deadline deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  return finished_.wait_until(lock, deadline, [&] { return done_; });
}

Status ReceiveLoop::runAt(Deadline when, std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return Status(StatusCode::kShuttingDown, component_ + ": not running");
  timers_.emplace(when, std::move(fn));
  wake();
  return Status::ok();
}

WorkGuard ReceiveLoop::acquireWork() {
  if (!takeWork()) return WorkGuard();
  return WorkGuard([this] { releaseWork(); });
}

bool ReceiveLoop::takeWork() {
  // While a guard is live the epoch cannot end, so another is taken without the lock; the
  // first is taken under it.
  for (uint64_t live = outstanding_.load(); live != 0;) {
    if (outstanding_.compare_exchange_weak(live, live + 1)) return true;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return false;
  ++outstanding_;
  return true;
}

void ReceiveLoop::releaseWork() {
  for (uint64_t live = outstanding_.load(); live > 1;) {
    if (outstanding_.compare_exchange_weak(live, live - 1)) return;
  }
  // Perhaps the last: decremented under the lock, so that once turn() has seen no guard left
  // (and the epoch may end, and its owner go), no release still touches this loop.
  std::lock_guard<std::mutex> lock(mutex_);
  if (--outstanding_ != 0) return;
  if (stopRequested_) wake();
  if (!armed_ && !done_) {  // finished without running: this was the last guard
    done_ = true;
    finished_.notify_all();
  }
}

bool ReceiveLoop::turn(const Handoff& handoff, Deadline pollUntil) {
  Deadline next = pollUntil;
  TaskSource* source = nullptr;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    const Deadline now = Clock::now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      due_.push_back(std::move(timers_.begin()->second));
      timers_.erase(timers_.begin());
    }
    if (!timers_.empty()) next = std::min(next, timers_.begin()->first);
    if (due_.empty() && stopRequested_ && outstanding_ == 0) return false;
    source = source_;
    if (due_.empty() && sourceBroken_) {
      wakeup_.wait_until(lock, next, [&] { return woken_; });
      woken_ = false;
      return true;
    }
  }
  if (!due_.empty()) {
    for (auto& fn : due_) {
      try {
        fn();
      } catch (const std::exception& e) {
        log_(LogLevel::kError, component_, std::string("timer callback threw: ") + e.what());
      } catch (...) {
        log_(LogLevel::kError, component_, "timer callback threw a non-standard exception");
      }
    }
    due_.clear();
    return true;
  }
  // Polling goes on while a stopped epoch drains, so that what arrives meanwhile (new calls,
  // cancels of calls in flight) is answered instead of left unread.
  Status polled = source->poll(next, polled_);
  bool stopping = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping = stopRequested_;
    if (!polled) {
      sourceBroken_ = true;
      stopRequested_ = true;  // a broken source yields nothing more: drain and end
    }
  }
  if (!polled) log_(LogLevel::kError, component_, "task source failed: " + polled.toString());
  // After stop() has returned no task may run: what a poll takes from then on is refused,
  // which answers its sender.
  for (auto& task : polled_) {
    if (stopping) {
      task->reject(Status(StatusCode::kShuttingDown, component_ + ": stopping"));
    } else {
      handoff(std::move(task));
    }
  }
  polled_.clear();
  return true;
}

void ReceiveLoop::end() {
  std::multimap<Deadline, std::function<void()>> dropped;
  std::lock_guard<std::mutex> lock(mutex_);
  dropped.swap(timers_);  // destroyed after the lock is released (declared first)
  armed_ = false;
  source_ = nullptr;
  done_ = true;
  finished_.notify_all();
}

void ReceiveLoop::run(const Handoff& handoff) {
  while (turn(handoff)) {
  }
  end();
}

}  // namespace switchboard::detail
