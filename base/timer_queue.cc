#include "base/timer_queue.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <utility>

namespace switchboard {

// What the thread shares with the queue: it outlives the queue when shutdown() comes from a task.
struct ThreadTimerQueue::State {
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;                                                // guarded by mutex
  TimerId nextId = 1;                                                   // guarded by mutex
  TimerId running = 0;                                                  // guarded by mutex
  std::map<std::pair<Deadline, TimerId>, std::function<void()>> tasks;  // guarded by mutex
  std::map<TimerId, Deadline> byId;                                     // guarded by mutex

  void run() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      if (tasks.empty()) {
        wake.wait(lock);
        continue;
      }
      auto first = tasks.begin();
      if (const Deadline due = first->first.first; Clock::now() < due) {
        wake.wait_until(lock, due);  // a copy: cancel() may free the task's node meanwhile
        continue;
      }
      std::function<void()> task = std::move(first->second);
      running = first->first.second;
      byId.erase(running);
      tasks.erase(first);
      lock.unlock();
      task();
      task = nullptr;
      lock.lock();
      running = 0;
      wake.notify_all();
    }
  }
};

ThreadTimerQueue::ThreadTimerQueue() : state_(std::make_shared<State>()) {
  thread_ = std::thread([state = state_] { state->run(); });
}

ThreadTimerQueue::~ThreadTimerQueue() { shutdown(); }

bool ThreadTimerQueue::isQueueThread() const {
  return std::this_thread::get_id() == thread_.get_id();
}

void ThreadTimerQueue::shutdown() {
  std::map<std::pair<Deadline, TimerId>, std::function<void()>> dropped;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stopping = true;
    state_->wake.notify_all();
  }
  if (thread_.joinable()) {
    // From a task the thread cannot join itself; it ends as soon as the task returns.
    if (isQueueThread()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }
  std::lock_guard<std::mutex> lock(state_->mutex);
  dropped.swap(state_->tasks);  // destroyed without running, after the lock is released
  state_->byId.clear();
}

TimerId ThreadTimerQueue::schedule(Deadline at, std::function<void()> task) {
  std::unique_lock<std::mutex> lock(state_->mutex);
  const TimerId id = state_->nextId++;
  if (state_->stopping) {
    lock.unlock();
    return id;  // `task` is destroyed unrun
  }
  auto [it, inserted] = state_->tasks.emplace(std::make_pair(at, id), std::move(task));
  state_->byId.emplace(id, at);
  if (it == state_->tasks.begin()) state_->wake.notify_all();
  return id;
}

void ThreadTimerQueue::cancel(TimerId id) {
  std::function<void()> dropped;
  std::unique_lock<std::mutex> lock(state_->mutex);
  auto found = state_->byId.find(id);
  if (found != state_->byId.end()) {
    auto task = state_->tasks.find({found->second, id});
    dropped = std::move(task->second);
    state_->tasks.erase(task);
    state_->byId.erase(found);
  } else if (id != 0 && !isQueueThread()) {  // 0 is never an id: `running` is 0 when idle
    state_->wake.wait(lock, [&] { return state_->running != id; });
  }
  lock.unlock();
  // `dropped` is destroyed here, outside the lock.
}

}  // namespace switchboard
