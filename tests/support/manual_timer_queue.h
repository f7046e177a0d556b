// ManualTimerQueue: a TimerQueue whose clock moves only when the test says, running due tasks on
// the test's thread. Header-only.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "base/timer_queue.h"

namespace switchboard::testing {

class ManualTimerQueue final : public TimerQueue {
 public:
  Deadline now() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return now_;
  }

  TimerId schedule(Deadline at, std::function<void()> task) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const TimerId id = nextId_++;
    tasks_.emplace(std::make_pair(at, id), std::move(task));
    return id;
  }

  void cancel(TimerId id) override {
    std::function<void()> dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = tasks_.begin(); it != tasks_.end(); ++it) {
      if (it->first.second == id) {
        dropped = std::move(it->second);
        tasks_.erase(it);
        break;
      }
    }
  }

  // Moves the clock forward by `d`, running every task that falls due on the way (tasks it
  // schedules included), in time order, each at its own time.
  void advance(Duration d) {
    const Deadline target = now() + d;
    for (;;) {
      std::function<void()> task;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (tasks_.empty() || tasks_.begin()->first.first > target) {
          now_ = target;
          return;
        }
        auto first = tasks_.begin();
        now_ = std::max(now_, first->first.first);
        task = std::move(first->second);
        tasks_.erase(first);
      }
      task();
    }
  }
  // Runs the tasks due now.
  void runDue() { advance(Duration::zero()); }

  size_t scheduled() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return tasks_.size();
  }

 private:
  mutable std::mutex mutex_;
  Deadline now_ = Deadline() + std::chrono::hours(1);  // guarded by mutex_
  TimerId nextId_ = 1;                                 // guarded by mutex_
  std::map<std::pair<Deadline, TimerId>, std::function<void()>> tasks_;  // guarded by mutex_
};

}  // namespace switchboard::testing
