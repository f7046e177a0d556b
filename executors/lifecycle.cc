// Lifecycle: the start/stop/wait state machine (see lifecycle.h and docs/ARCHITECTURE.md).
// All transitions happen under mutex_; the owner's hooks run outside it.
#include "executors/lifecycle.h"

#include <algorithm>
#include <utility>

namespace switchboard {

Lifecycle::Lifecycle(Options options, StopHook onStop, FinishHook onFinish,
                     OwnsThreadHook ownsThread)
    : options_(std::move(options)),
      onStop_(std::move(onStop)),
      onFinish_(std::move(onFinish)),
      ownsThread_(std::move(ownsThread)) {}

Status Lifecycle::start(const StartHook& onStart) {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return phase_ != Phase::kStarting && !stopHookRunning_; });
    if (phase_ == Phase::kRunning) return Status::ok();
    if (phase_ == Phase::kIdle) break;
    // Stopped but not yet waited: finish that epoch first so nothing of it leaks.
    if (ownsThread_()) {
      return Status(StatusCode::kWouldDeadlock,
                    options_.component + ": start() from a thread of the stopped epoch");
    }
    if (finishing_) {
      changed_.wait(lock, [&] { return !finishing_; });
      continue;
    }
    if (Status s = finishEpoch(lock, kNoDeadline); !s) return s;
  }
  phase_ = Phase::kStarting;
  lock.unlock();
  Status started = onStart();
  lock.lock();
  if (started) {
    ++epoch_;
    hangWarned_ = false;
    phase_ = Phase::kRunning;
  } else {
    phase_ = Phase::kIdle;
  }
  changed_.notify_all();
  return started;
}

void Lifecycle::stop() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return phase_ != Phase::kStarting; });
    if (phase_ != Phase::kRunning) return;
    phase_ = Phase::kStopped;
    stopHookRunning_ = true;
    changed_.notify_all();
  }
  onStop_();
  std::lock_guard<std::mutex> lock(mutex_);
  stopHookRunning_ = false;
  changed_.notify_all();
}

Status Lifecycle::wait(Deadline deadline) {
  if (ownsThread_()) {
    return Status(StatusCode::kWouldDeadlock,
                  options_.component + ": wait() called from one of its own threads");
  }
  const Deadline warnAt = deadlineAfter(options_.hangWarningAfter);
  std::unique_lock<std::mutex> lock(mutex_);
  // Waits for `done` until the deadline, logging the epoch's one hang warning on the way.
  auto waitFor = [&](auto done) {
    if (!hangWarned_ && warnAt < deadline) {
      if (changed_.wait_until(lock, warnAt, done)) return true;
      if (!hangWarned_) {
        hangWarned_ = true;
        options_.log(LogLevel::kWarning, options_.component,
                     "wait() is still waiting: possible hang (a handler that never returns, or "
                     "no stop())");
      }
    }
    return changed_.wait_until(lock, deadline, done);
  };
  if (!waitFor([&] { return phase_ != Phase::kStarting; })) {
    return Status(StatusCode::kTimeout, options_.component + ": wait() timed out during start()");
  }
  if (phase_ == Phase::kIdle) return Status::ok();  // never started, or already finished
  const uint64_t target = epoch_;
  for (;;) {
    const bool ready = waitFor([&] {
      return finishedEpoch_ >= target || (phase_ == Phase::kStopped && !finishing_);
    });
    if (finishedEpoch_ >= target) return Status::ok();
    if (!ready) {
      return Status(StatusCode::kTimeout,
                    options_.component + (phase_ == Phase::kRunning
                                              ? ": wait() timed out: not stopped"
                                              : ": wait() timed out: work still in flight"));
    }
    Deadline finishBy = deadline;
    if (!hangWarned_) finishBy = std::min(deadline, warnAt);
    Status s = finishEpoch(lock, finishBy);
    if (s) return s;
    if (s.code() != StatusCode::kTimeout) return s;
    if (Clock::now() >= deadline) return s;
    if (!hangWarned_) {
      hangWarned_ = true;
      options_.log(LogLevel::kWarning, options_.component,
                   "wait() is still waiting for in-flight work: possible hang");
    }
  }
}

Status Lifecycle::finishEpoch(std::unique_lock<std::mutex>& lock, Deadline deadline) {
  finishing_ = true;
  lock.unlock();
  Status finished = onFinish_(deadline);
  lock.lock();
  finishing_ = false;
  if (finished) {
    finishedEpoch_ = epoch_;
    phase_ = Phase::kIdle;
  }
  changed_.notify_all();
  return finished;
}

bool Lifecycle::isRunning() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return phase_ == Phase::kRunning;
}

uint64_t Lifecycle::completedEpochs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finishedEpoch_;
}

}  // namespace switchboard
