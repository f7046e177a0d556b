// TimerQueue: runs tasks at points in time. The client network schedules every timeout, ping and
// back-off through one, so tests drive it with a manual clock (tests/support/manual_timer_queue.h)
// instead of sleeping.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "base/deadline.h"

namespace switchboard {

using TimerId = uint64_t;

// Thread-safe. Tasks run one at a time, on the queue's own thread, never under the caller's
// locks; a task may schedule and cancel (but not wait on itself).
class TimerQueue {
 public:
  virtual ~TimerQueue() = default;
  TimerQueue() = default;
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // The queue's clock: deadlines given to schedule() are on it.
  virtual Deadline now() const = 0;
  // Runs `task` once, at `at` or soon after. Ids are never 0 and never reused.
  virtual TimerId schedule(Deadline at, std::function<void()> task) = 0;
  // After it returns the task will not run and is not running (unless cancel is called from
  // the task itself), and it has been destroyed. Unknown or finished ids are ignored.
  virtual void cancel(TimerId id) = 0;
};

// A TimerQueue on the steady clock with one thread of its own, joined by shutdown() (or the
// destructor); tasks still scheduled then are destroyed without running.
class ThreadTimerQueue final : public TimerQueue {
 public:
  ThreadTimerQueue();
  ~ThreadTimerQueue() override;

  // Joins the thread (called from a task, lets it end right after the task instead); later
  // tasks are destroyed at once without running. Idempotent.
  void shutdown();
  // True on the queue's own thread (in a task).
  bool isQueueThread() const;

  Deadline now() const override { return Clock::now(); }
  TimerId schedule(Deadline at, std::function<void()> task) override;
  void cancel(TimerId id) override;

 private:
  struct State;
  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace switchboard
