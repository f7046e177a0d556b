// ReceiveLoop: the loop every executor runs: poll the TaskSource, hand tasks off, run timers,
// and end once a stop was requested and no work is outstanding (asio's outstanding-work rule).
// While a stopped epoch drains, tasks still polled are rejected kShuttingDown.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "executors/executor.h"

namespace switchboard::detail {

// Thread-safe, except turn(), end() and run(): one thread at a time drives an epoch.
class ReceiveLoop final {
 public:
  using Handoff = std::function<void(TaskPtr)>;

  explicit ReceiveLoop(LogSink log, std::string component);
  ReceiveLoop(const ReceiveLoop&) = delete;
  ReceiveLoop& operator=(const ReceiveLoop&) = delete;

  // Begins an epoch that reads `source`. Precondition: the previous epoch finished.
  void arm(TaskSource& source);
  // One turn of the epoch on the calling thread: runs the timers that are due, or else polls the
  // source once (waiting at most until the next timer or `pollUntil`) and gives each task to
  // `handoff` (or rejects it kShuttingDown once stopping). Returns false, doing nothing, when the
  // epoch is over (stop requested, no work guard left); the caller then calls end(). Different
  // threads may take turns, one at a time (a thread pool's leader).
  bool turn(const Handoff& handoff, Deadline pollUntil = kNoDeadline);
  // Ends the epoch after turn() returned false: pending timers are destroyed, waiters woken.
  void end();
  // turn() until the epoch is over, then end().
  void run(const Handoff& handoff);
  // Non-blocking: no task is polled after the current batch.
  void requestStop();
  // Ends the epoch without run() (a blocking executor stopped before execute()): pending
  // timers are dropped; the epoch is finished once no work guard is left.
  void finishWithoutRunning();
  // True once run() has returned (or finishWithoutRunning() was called) for this epoch.
  bool waitFinished(Deadline deadline);

  Status runAt(Deadline when, std::function<void()> fn);
  WorkGuard acquireWork();

 private:
  void wake();  // lock held
  bool takeWork();  // counts one more live guard; false when not armed
  void releaseWork();

  const LogSink log_;
  const std::string component_;

  std::mutex mutex_;
  std::condition_variable wakeup_;    // the loop waits here once stopping
  std::condition_variable finished_;  // waitFinished() waits here
  TaskSource* source_ = nullptr;      // guarded by mutex_
  bool armed_ = false;                // guarded by mutex_: between arm() and the end of run()
  bool stopRequested_ = false;        // guarded by mutex_
  bool woken_ = false;                // guarded by mutex_
  bool done_ = true;                  // guarded by mutex_
  // Live work guards. Goes from 0 to 1 and from 1 to 0 only under mutex_; other changes take no
  // lock (guards of a thread pool's calls are taken and released several times per call).
  std::atomic<uint64_t> outstanding_{0};
  bool sourceBroken_ = false;         // guarded by mutex_: poll() failed this epoch
  std::vector<TaskPtr> polled_;       // used by the thread taking a turn
  std::vector<std::function<void()>> due_;  // used by the thread taking a turn
  std::multimap<Deadline, std::function<void()>> timers_;  // guarded by mutex_
};

}  // namespace switchboard::detail
