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
  Deadline queuedAt;
};
// The pool's shared state for one epoch.
struct WorkQueue {
  std::mutex mutex;
  std::condition_variable wakeup;  // idle threads wait here for a wake-up or the epoch's end
  std::deque<QueuedTask> tasks;    // guarded by mutex: admitted, waiting for a thread
  size_t idle = 0;                 // guarded by mutex: threads waiting on wakeup
  size_t wakeups = 0;              // guarded by mutex: wake-ups sent, not yet taken by a thread
  size_t working = 0;              // guarded by mutex: threads running a task, not leading
  bool leaderTaken = false;        // guarded by mutex: a thread polls or is about to
  bool ended = false;              // guarded by mutex: the epoch is over; threads exit

  // Idle threads no wake-up is on its way to.
  bool anyAsleep() const { return idle > wakeups; }
  // True when the oldest queued task has waited `patience` by `now` and a thread could take it.
  bool frontOverdue(Deadline now, Duration patience) const {
    return !tasks.empty() && anyAsleep() && now - tasks.front().queuedAt >= patience;
  }
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

Status ThreadPoolExecutor::admit(Task& task) {
  if (inFlight_.fetch_add(1) < options_.maxInFlight) {
    task.holdSlot(inFlight_);
    return Status::ok();
  }
  inFlight_.fetch_sub(1);
  return Status(StatusCode::kOverloaded, "server busy: in-flight limit reached");
}

void ThreadPoolExecutor::poolThreadMain() {
  detail::WorkQueue& q = *queue_;
  const Duration patience = options_.wakeAnotherAfter;
  std::vector<TaskPtr> batch;
  std::vector<detail::QueuedTask> admitted;
  std::vector<std::pair<TaskPtr, Status>> refused;
  const auto collect = [&batch](TaskPtr task) { batch.push_back(std::move(task)); };
  // Wake-ups are counted under the lock and signalled after it is released, so that a woken
  // thread does not at once block on the mutex its waker still holds.
  size_t toSignal = 0;
  const auto wakeOne = [&] {
    ++q.wakeups;
    ++toSignal;
    wakeups_.fetch_add(1, std::memory_order_relaxed);
  };
  const auto unlockAndSignal = [&](std::unique_lock<std::mutex>& lock) {
    lock.unlock();
    for (; toSignal != 0; --toSignal) q.wakeup.notify_one();
  };
  // Runs a task with the lock released; counted as working meanwhile.
  const auto runOne = [&](std::unique_lock<std::mutex>& lock, detail::QueuedTask item) {
    ++q.working;
    unlockAndSignal(lock);
    item.task->run();
    item.task.reset();  // frees its slot if run() did not
    item.work = WorkGuard();  // the epoch may end once the last task has finished
    lock.lock();
    --q.working;
  };
  bool leading = false;
  std::unique_lock<std::mutex> lock(q.mutex);
  for (;;) {
    if (!leading && !q.leaderTaken && !q.ended) leading = q.leaderTaken = true;
    if (leading) {
      // With tasks queued and a thread asleep, the poll ends when the oldest is overdue.
      const Deadline pollUntil =
          !q.tasks.empty() && q.anyAsleep() ? q.tasks.front().queuedAt + patience : kNoDeadline;
      unlockAndSignal(lock);
      if (!loop_.turn(collect, pollUntil)) {
        lock.lock();
        q.ended = true;  // no work guard is left, so no task is queued or running
        q.wakeup.notify_all();
        lock.unlock();
        loop_.end();
        return;
      }
      // Admission outside the pool's lock (the counter is atomic); refusals answer at once.
      for (TaskPtr& task : batch) {
        if (Status why = admit(*task); !why) {
          refused.emplace_back(std::move(task), std::move(why));
        } else {
          admitted.push_back({std::move(task), loop_.acquireWork(), {}});
        }
      }
      batch.clear();
      const Deadline now = Clock::now();
      lock.lock();
      detail::QueuedTask mine;
      auto next = admitted.begin();
      // A lone task runs here while an idle thread takes the lead: no hand-off on its way. A
      // batch means load: the leader keeps polling and the queue is drained by other threads
      // (waking a new leader for every batch cost more than it saved).
      if (admitted.size() == 1 && q.anyAsleep()) {
        mine = std::move(*next++);
        leading = q.leaderTaken = false;
        wakeOne();
      }
      for (; next != admitted.end(); ++next) {
        if (q.tasks.size() < std::max<size_t>(options_.queueCapacity, 1)) {
          next->queuedAt = now;
          q.tasks.push_back(std::move(*next));
        } else {
          next->task->releaseSlot();
          refused.emplace_back(std::move(next->task),
                               Status(StatusCode::kOverloaded, "server busy: queue full"));
        }
      }
      admitted.clear();
      // One thread for a queue nobody drains (a thread that runs a task takes the next one
      // after it), another whenever the oldest task is overdue.
      const bool undrained = q.working == 0 && q.wakeups == 0 && !mine.task;
      if (q.frontOverdue(now, undrained ? Duration::zero() : patience)) wakeOne();
      if (!mine.task && refused.empty()) continue;
      unlockAndSignal(lock);
      rejected_.fetch_add(refused.size());
      for (auto& [task, why] : refused) task->reject(std::move(why));
      refused.clear();
      lock.lock();
      if (mine.task) runOne(lock, std::move(mine));
      continue;
    }
    if (!q.tasks.empty()) {
      detail::QueuedTask item = std::move(q.tasks.front());
      q.tasks.pop_front();
      if (!q.tasks.empty() && q.anyAsleep() && Clock::now() - item.queuedAt >= patience) {
        wakeOne();  // this task waited too long: the queue needs one more thread
      }
      runOne(lock, std::move(item));
      continue;
    }
    if (q.ended) return;
    ++q.idle;
    idle_.store(q.idle, std::memory_order_relaxed);
    q.wakeup.wait(lock, [&q] { return q.wakeups > 0 || q.ended; });
    if (q.wakeups > 0) --q.wakeups;
    --q.idle;
    idle_.store(q.idle, std::memory_order_relaxed);
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

ThreadPoolExecutor::Stats ThreadPoolExecutor::stats() const {
  return {idle_.load(std::memory_order_relaxed), wakeups_.load(std::memory_order_relaxed),
          rejected_.load()};
}

bool ThreadPoolExecutor::isExecutorThread() const {
  const auto self = std::this_thread::get_id();
  std::lock_guard<std::mutex> lock(idsMutex_);
  return std::find(ids_.begin(), ids_.end(), self) != ids_.end();
}

}  // namespace switchboard
