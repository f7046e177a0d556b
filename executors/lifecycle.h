// Lifecycle: the start/stop/wait state machine shared by every executor and the server.
// One mutex, one condition variable, epochs; the owner supplies what each transition does.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"

namespace switchboard {

// States: idle -> starting -> running -> stopped -> (wait() finishes the epoch) -> idle.
// Thread-safe. The hooks run outside the mutex; each runs on the thread of the call that
// triggers it, never concurrently with itself.
class Lifecycle {
 public:
  struct Options {
    std::string component = "lifecycle";  // names the owner in log lines
    // wait() logs one "possible hang" warning after waiting this long in one epoch.
    Duration hangWarningAfter = std::chrono::seconds(10);
    LogSink log = stderrLogSink();
  };

  // Does a start; an error leaves the lifecycle idle (start() may be retried).
  using StartHook = std::function<Status()>;
  // Signals the stop of the running epoch; must not block. It runs after the transition,
  // outside the mutex; the next epoch's start() waits until it has returned, so a stop hook
  // always concerns the epoch it was called for, never a later one.
  using StopHook = std::function<void()>;
  // Waits until the epoch's work is done and its threads joined, no later than the deadline
  // (kTimeout then; it is called again by a later wait()). Several calls never overlap.
  using FinishHook = std::function<Status(Deadline)>;
  // True when the calling thread is one that wait() would wait for.
  using OwnsThreadHook = std::function<bool()>;

  Lifecycle(Options options, StopHook onStop, FinishHook onFinish, OwnsThreadHook ownsThread);
  Lifecycle(const Lifecycle&) = delete;
  Lifecycle& operator=(const Lifecycle&) = delete;

  // Runs `onStart` unless this epoch already started; see Executor for the contract. Waits
  // for a stop hook still running (a late stop never reaches the new epoch).
  Status start(const StartHook& onStart);
  void stop();
  Status wait(Deadline deadline);

  // True between a successful start() and the matching stop().
  bool isRunning() const;
  // Completed epochs so far (a successful wait() after stop() completes one).
  uint64_t completedEpochs() const;

 private:
  enum class Phase { kIdle, kStarting, kRunning, kStopped };

  Status finishEpoch(std::unique_lock<std::mutex>& lock, Deadline deadline);

  const Options options_;
  const StopHook onStop_;
  const FinishHook onFinish_;
  const OwnsThreadHook ownsThread_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // notified on every change of the fields below
  Phase phase_ = Phase::kIdle;       // guarded by mutex_
  uint64_t epoch_ = 0;               // guarded by mutex_: started epochs
  uint64_t finishedEpoch_ = 0;       // guarded by mutex_: epochs whose wait() completed
  bool finishing_ = false;           // guarded by mutex_: a waiter is running onFinish_
  bool hangWarned_ = false;          // guarded by mutex_: for the current epoch
  bool stopHookRunning_ = false;     // guarded by mutex_: a stop() is in onStop_ (unlocked)
};

}  // namespace switchboard
