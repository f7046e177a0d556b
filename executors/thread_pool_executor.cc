// ThreadPoolExecutor: leader/follower pool threads over one bounded queue (mutex + condition).
// In-flight tasks hold a WorkGuard, so the epoch ends only when they have finished.
#include "executors/thread_pool_executor.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <latch>
#include <memory>
#include <utility>

namespace switchboard {

namespace detail {
struct QueuedTask {
  TaskPtr task;
  WorkGuard work;
};
// The pool's shared state for one epoch.
struct WorkQueue {
  std::mutex mutex;
  std::condition_variable wakeup;  // idle threads wait here for a task or the lead
  std::deque<QueuedTask> tasks;    // guarded by mutex: admitted, waiting for a thread
  size_t idle = 0;                 // guarded by mutex: threads waiting on wakeup
  bool leaderTaken = false;        // guarded by mutex: a thread polls or is about to
  bool ended = false;              // guarded by mutex: the epoch is over; threads exit
};
}  // namespace detail

ThreadPoolExecutor::ThreadPoolExecutor() : ThreadPoolExecutor(Options{}) {}

ThreadPoolExecutor::ThreadPoolExecutor(Options options)
    : options_(std::move(options)),
      loop_(options_.log, "thread-pool-executor"),
      lifecycle_({"thread-pool-executor", options_.hangWarningAfter, options_.log},
                 [this] { loop_.requestStop(); },
                 [this](Deadline deadline) { return finish(deadline); },
                 [this] { return isExecutorThread(); }) {}

ThreadPoolExecutor::~ThreadPoolExecutor() {
  stop();
  (void)wait();
}

Status ThreadPoolExecutor::start(TaskSource& source) {
  return lifecycle_.start([&] {
    const size_t threads = std::max<size_t>(options_.threads, 1) + 1;
    queue_ = std::make_unique<detail::WorkQueue>();
    loop_.arm(source);
    {
      std::lock_guard<std::mutex> lock(idsMutex_);
      ids_.clear();
    }
    // Each thread registers its id, then checks in; start() returns once all have (folly's
    // handshake), so isExecutorThread() is right before any task runs.
    auto checkedIn = std::make_shared<std::latch>(static_cast<std::ptrdiff_t>(threads));
    try {
      for (size_t i = 0; i < threads; ++i) {
        threads_.emplace_back([this, checkedIn] {
          {
            std::lock_guard<std::mutex> lock(idsMutex_);
            ids_.push_back(std::this_thread::get_id());
          }
          checkedIn->count_down();
          poolThreadMain();
        });
      }
    } catch (const std::system_error& e) {
      // Unwind what was started: the epoch ends at the first turn, the threads with it.
      loop_.requestStop();
      if (threads_.empty()) loop_.finishWithoutRunning();
      for (auto& t : threads_) t.join();
      threads_.clear();
      return Status(StatusCode::kInvalidState, std::string("cannot start pool thread: ") + e.what());
    }
    checkedIn->wait();
    return Status::ok();
  });
}

Status ThreadPoolExecutor::admit() {
  if (inFlight_.fetch_add(1) < options_.maxInFlight) return Status::ok();
  inFlight_.fetch_sub(1);
  return Status(StatusCode::kOverloaded, "server busy: in-flight limit reached");
}

void ThreadPoolExecutor::poolThreadMain() {
  detail::WorkQueue& q = *queue_;
  std::vector<TaskPtr> batch;
  std::vector<detail::QueuedTask> admitted;
  std::vector<std::pair<TaskPtr, Status>> refused;
  const auto collect = [&batch](TaskPtr task) { batch.push_back(std::move(task)); };
  const auto runOne = [this](detail::QueuedTask item) {
    item.task->run();
    item.task.reset();
    inFlight_.fetch_sub(1);
    // item.work is released here: the epoch may end once the last task has finished.
  };
  bool leading = false;
  std::unique_lock<std::mutex> lock(q.mutex);
  for (;;) {
    if (!leading && !q.leaderTaken && !q.ended) leading = q.leaderTaken = true;
    if (leading) {
      lock.unlock();
      if (!loop_.turn(collect)) {
        lock.lock();
        q.ended = true;  // no work guard is left, so no task is queued or running
        q.wakeup.notify_all();
        lock.unlock();
        loop_.end();
        return;
      }
      // Admission outside the pool's lock (the counter is atomic); refusals answer at once.
      for (TaskPtr& task : batch) {
        if (Status why = admit(); !why) {
          refused.emplace_back(std::move(task), std::move(why));
        } else {
          admitted.push_back({std::move(task), loop_.acquireWork()});
        }
      }
      batch.clear();
      lock.lock();
      detail::QueuedTask mine;
      auto next = admitted.begin();
      // A lone task runs here while an idle thread takes the lead: no hand-off on its way. A
      // batch means load: the leader keeps polling and idle threads take the batch from the
      // queue (waking a new leader for every batch cost more than it saved).
      if (admitted.size() == 1 && q.idle > 0) {
        mine = std::move(*next++);
        leading = q.leaderTaken = false;
        q.wakeup.notify_one();
      }
      for (; next != admitted.end(); ++next) {
        if (q.tasks.size() < std::max<size_t>(options_.queueCapacity, 1)) {
          q.tasks.push_back(std::move(*next));
        } else {
          inFlight_.fetch_sub(1);
          refused.emplace_back(std::move(next->task),
                               Status(StatusCode::kOverloaded, "server busy: queue full"));
        }
      }
      admitted.clear();
      // One more thread for the queue; each that takes a task wakes the next while work is left.
      if (!q.tasks.empty() && q.idle > (mine.task ? 1u : 0u)) q.wakeup.notify_one();
      if (!mine.task && refused.empty()) continue;
      lock.unlock();
      rejected_.fetch_add(refused.size());
      for (auto& [task, why] : refused) task->reject(std::move(why));
      refused.clear();
      if (mine.task) runOne(std::move(mine));
      lock.lock();
      continue;
    }
    if (!q.tasks.empty()) {
      detail::QueuedTask item = std::move(q.tasks.front());
      q.tasks.pop_front();
      if (!q.tasks.empty() && q.idle > 0) q.wakeup.notify_one();
      lock.unlock();
      runOne(std::move(item));
      lock.lock();
      continue;
    }
    if (q.ended) return;
    ++q.idle;
    q.wakeup.wait(lock);  // woken for a task, the lead, or the end of the epoch
    --q.idle;
  }
}

Status ThreadPoolExecutor::finish(Deadline deadline) {
  if (!loop_.waitFinished(deadline)) {
    return Status(StatusCode::kTimeout, "thread pool still has tasks in flight");
  }
  for (auto& t : threads_) t.join();  // the epoch ended: every thread is on its way out
  threads_.clear();
  std::lock_guard<std::mutex> lock(idsMutex_);
  ids_.clear();
  return Status::ok();
}

Status ThreadPoolExecutor::execute() {
  return Status(StatusCode::kInvalidState, "execute() is for the blocking executor only");
}

void ThreadPoolExecutor::stop() { lifecycle_.stop(); }

Status ThreadPoolExecutor::wait(Deadline deadline) { return lifecycle_.wait(deadline); }

Status ThreadPoolExecutor::runAt(Deadline when, std::function<void()> fn) {
  return loop_.runAt(when, std::move(fn));
}

WorkGuard ThreadPoolExecutor::acquireWork() { return loop_.acquireWork(); }

bool ThreadPoolExecutor::isExecutorThread() const {
  const auto self = std::this_thread::get_id();
  std::lock_guard<std::mutex> lock(idsMutex_);
  return std::find(ids_.begin(), ids_.end(), self) != ids_.end();
}

}  // namespace switchboard
