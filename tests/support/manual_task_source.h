// Test support: ManualTaskSource, a TaskSource the test feeds by hand, and FunctionTask, a Task
// built from two lambdas. Both count what happened so tests can assert it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "executors/executor.h"

namespace switchboard::testing {

// A Task whose run() and reject() call the given functions (either may be empty).
class FunctionTask final : public Task {
 public:
  explicit FunctionTask(std::function<void()> run, std::function<void(Status)> reject = {})
      : run_(std::move(run)), reject_(std::move(reject)) {}
  void run() noexcept override {
    if (run_) run_();
  }
  void reject(Status why) noexcept override {
    if (reject_) reject_(std::move(why));
  }

 private:
  std::function<void()> run_;
  std::function<void(Status)> reject_;
};

// Thread-safe. poll() hands out everything pushed so far, waiting until the deadline or an
// interrupt for the first task.
class ManualTaskSource final : public TaskSource {
 public:
  void push(TaskPtr task);
  // Pushes a FunctionTask.
  void push(std::function<void()> run, std::function<void(Status)> reject = {});
  // Pushes FunctionTasks at once: the next poll() hands them out together, as one batch.
  void pushBatch(std::vector<std::function<void()>> runs);

  Status poll(Deadline deadline, std::vector<TaskPtr>& out) override;
  void interrupt() override;

  size_t queued() const;
  int pollCount() const { return polls_.load(); }

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<TaskPtr> tasks_;  // guarded by mutex_
  bool interrupted_ = false;   // guarded by mutex_
  std::atomic<int> polls_{0};
};

}  // namespace switchboard::testing
