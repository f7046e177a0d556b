// ThreadPoolExecutor (the default): N+1 threads, one of which at a time (the leader) polls the
// source; past the queue or in-flight limit a task is rejected.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/deadline.h"
#include "executors/detail/receive_loop.h"
#include "executors/executor.h"
#include "executors/lifecycle.h"

namespace switchboard {

namespace detail {
struct WorkQueue;
}

// Leader/follower: the leader polls; when it receives one task and another pool thread is idle,
// it passes the lead to that thread and runs the task itself, so a lone call is not handed to
// another thread on its way (the hand-off, a wake-up, happens beside the call, not in front of
// it). A batch of several tasks goes to a bounded queue. When no other thread drains the queue,
// the leader drains it itself and then polls again, keeping the lead: a batch of quick tasks
// costs no hand-off and no wake-up. One idle thread, the watcher, sleeps with a deadline
// meanwhile and takes the lead from a leader one task has held for `takeLeadAfter` (up to twice
// that); a drain also ends after that long for a turn of the loop. So polling stops for at most
// about twice `takeLeadAfter`: cancels are read and excess calls answered kOverloaded while
// handlers run. When no thread watches, one idle thread is woken to drain the queue
// instead, and when no thread is idle the leader queues every task and keeps polling.
// Queued tasks wake as few threads as keep up with them (a sojourn-time rule, after CoDel):
// another thread only once a task has waited `wakeAnotherAfter` in the queue. The leader's poll
// ends by then, so a thread stuck in a slow task delays the tasks queued behind it by at most
// about that long (behind the leader's own task: about `takeLeadAfter` more).
// Thread-safe. Timers (runAt) run on the leader and must be short.
class ThreadPoolExecutor final : public Executor {
 public:
  struct Options : ExecutorOptions {
    size_t threads = 4;           // tasks run at once; the pool has one more thread to poll
    size_t queueCapacity = 1024;  // tasks waiting for a worker
    // Tasks queued or running; a running one stops counting once it answers
    // (Task::releaseSlot) or returns. More are rejected kOverloaded.
    size_t maxInFlight = 1024;
    // A task that waited this long in the queue wakes one more idle thread.
    Duration wakeAnotherAfter = std::chrono::microseconds(50);
    // A leader that one task has held this long (up to twice this; at least 10 us) loses the
    // lead to the watcher: the bound on how long polling stops for a task the leader runs.
    Duration takeLeadAfter = std::chrono::milliseconds(1);
  };
  struct Stats {
    size_t idle = 0;        // pool threads asleep, waiting for a task or the lead
    uint64_t wakeups = 0;   // threads woken for a task, the lead or to watch, since construction
    uint64_t rejected = 0;  // tasks rejected kOverloaded, since construction
  };

  explicit ThreadPoolExecutor(Options options);
  ThreadPoolExecutor();
  // stop() + wait(). Must not run on one of the pool's threads.
  ~ThreadPoolExecutor() override;

  // Starts the pool's threads; returns once every one has checked in.
  Status start(TaskSource& source) override;
  Status execute() override;  // kInvalidState
  void stop() override;
  Status wait(Deadline deadline = kNoDeadline) override;
  Status runAt(Deadline when, std::function<void()> fn) override;
  WorkGuard acquireWork() override;
  bool isExecutorThread() const override;

  Stats stats() const;

 private:
  void poolThreadMain();
  // An idle thread watches the leader until woken (false) or until it takes the lead from a
  // leader one task has held for a watch period (true). Precondition: no thread watches; the
  // pool's lock held; counted idle.
  bool watchLeader(std::unique_lock<std::mutex>& lock);
  Duration watchPeriod() const {
    return std::max<Duration>(options_.takeLeadAfter, std::chrono::microseconds(10));
  }
  // Counts `task` in flight until it releases its slot, or refuses it: kOverloaded past
  // maxInFlight.
  Status admit(Task& task);
  Status finish(Deadline deadline);

  const Options options_;
  detail::ReceiveLoop loop_;
  std::unique_ptr<detail::WorkQueue> queue_;  // per epoch; set by start, used by pool threads
  std::vector<std::thread> threads_;          // joined by finish
  mutable std::mutex idsMutex_;
  std::vector<std::thread::id> ids_;  // guarded by idsMutex_: threads of the current epoch
  std::atomic<size_t> inFlight_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<size_t> idle_{0};  // a copy of the queue's idle count, for stats()
  std::atomic<uint64_t> wakeups_{0};
  Lifecycle lifecycle_;
};

}  // namespace switchboard
