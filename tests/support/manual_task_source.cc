// ManualTaskSource: a hand-fed TaskSource for executor tests.
// interrupt() is sticky, like a transport listener's.
#include "tests/support/manual_task_source.h"

namespace switchboard::testing {

void ManualTaskSource::push(TaskPtr task) {
  std::lock_guard<std::mutex> lock(mutex_);
  tasks_.push_back(std::move(task));
  ready_.notify_all();
}

void ManualTaskSource::push(std::function<void()> run, std::function<void(Status)> reject) {
  push(std::make_unique<FunctionTask>(std::move(run), std::move(reject)));
}

void ManualTaskSource::pushBatch(std::vector<std::function<void()>> runs) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& run : runs) tasks_.push_back(std::make_unique<FunctionTask>(std::move(run)));
  ready_.notify_all();
}

Status ManualTaskSource::poll(Deadline deadline, std::vector<TaskPtr>& out) {
  polls_.fetch_add(1);
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait_until(lock, deadline, [&] { return interrupted_ || !tasks_.empty(); });
  interrupted_ = false;
  while (!tasks_.empty()) {
    out.push_back(std::move(tasks_.front()));
    tasks_.pop_front();
  }
  return Status::ok();
}

void ManualTaskSource::interrupt() {
  std::lock_guard<std::mutex> lock(mutex_);
  interrupted_ = true;
  ready_.notify_all();
}

size_t ManualTaskSource::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tasks_.size();
}

}  // namespace switchboard::testing
