#include "base/timer_queue.h"

#include <utility>

namespace switchboard {

ThreadTimerQueue::ThreadTimerQueue() : thread_([this] { run(); }) {}

ThreadTimerQueue::~ThreadTimerQueue() {
  std::map<std::pair<Deadline, TimerId>, std::function<void()>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    wake_.notify_all();
  }
  thread_.join();
  dropped.swap(tasks_);  // destroyed here, outside the lock, without running
}

TimerId ThreadTimerQueue::schedule(Deadline at, std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  const TimerId id = nextId_++;
  auto [it, inserted] = tasks_.emplace(std::make_pair(at, id), std::move(task));
  byId_.emplace(id, at);
  if (it == tasks_.begin()) wake_.notify_all();
  return id;
}

void ThreadTimerQueue::cancel(TimerId id) {
  std::function<void()> dropped;
  std::unique_lock<std::mutex> lock(mutex_);
  auto found = byId_.find(id);
  if (found != byId_.end()) {
    auto task = tasks_.find({found->second, id});
    dropped = std::move(task->second);
    tasks_.erase(task);
    byId_.erase(found);
  } else if (std::this_thread::get_id() != thread_.get_id()) {
    wake_.wait(lock, [&] { return running_ != id; });
  }
  lock.unlock();
  // `dropped` is destroyed here, outside the lock.
}

void ThreadTimerQueue::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (tasks_.empty()) {
      wake_.wait(lock);
      continue;
    }
    auto first = tasks_.begin();
    if (Clock::now() < first->first.first) {
      wake_.wait_until(lock, first->first.first);
      continue;
    }
    std::function<void()> task = std::move(first->second);
    running_ = first->first.second;
    byId_.erase(running_);
    tasks_.erase(first);
    lock.unlock();
    task();
    task = nullptr;
    lock.lock();
    running_ = 0;
    wake_.notify_all();
  }
}

}  // namespace switchboard
