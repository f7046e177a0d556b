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
  std::condition_variable wakeup;  // idle threads but the watcher wait here
  std::condition_variable watch;   // the watcher waits here
  std::deque<QueuedTask> tasks;    // guarded by mutex: admitted, waiting for a thread
  size_t idle = 0;                 // guarded by mutex: threads asleep, the watcher included
  size_t wakeups = 0;              // guarded by mutex: wake-ups sent on `wakeup`, not yet taken
  size_t working = 0;              // guarded by mutex: threads running a task, not leading
  bool leaderTaken = false;        // guarded by mutex: a thread polls or is about to
  bool ended = false;              // guarded by mutex: the epoch is over; threads exit
  // The leader runs a batch nobody else drains itself, while one idle thread, the watcher,
  // takes the lead from it once a single task has held it for a watch period.
  bool leaderRunning = false;  // guarded by mutex: the leader runs a queued task
  uint64_t leaderTasks = 0;    // guarded by mutex: queued tasks the leader started
  uint64_t leaderTerm = 0;     // guarded by mutex: bumped when the watcher takes the lead
  bool watching = false;       // guarded by mutex: an idle thread is the watcher
  bool watcherTimed = false;   // guarded by mutex: the watcher's sleep ends each watch period
  bool watcherWoken = false;   // guarded by mutex: the watcher is woken to run tasks

  // Idle threads no wake-up is on its way to.
  bool anyAsleep() const { return idle > wakeups + (watcherWoken ? 1 : 0); }
  // Idle threads other than the watcher that no wake-up is on its way to.
  bool anySleeper() const { return idle - (watching ? 1 : 0) > wakeups; }
  // True when the oldest queued task has waited `patience` by `now` and a thread could take it.
  bool frontOverdue(Deadline now, Duration patience) const {
    return !tasks.empty() && anyAsleep() && now - tasks.front().queuedAt >= patience;
  }
  // No thread but the leader runs queued tasks or is about to.
  bool undrained() const { return working == 0 && wakeups == 0 && !watcherWoken; }
  // The leader drains the queue itself: nobody else does, and a watcher guards it.
  bool leaderDrains() const { return undrained() && watching; }
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
  bool signalWatcher = false;
  // Wakes an idle thread to run queued tasks or lead; precondition: q.anyAsleep().
  const auto wakeOne = [&] {
    wakeups_.fetch_add(1, std::memory_order_relaxed);
    if (q.anySleeper()) {
      ++q.wakeups;
      ++toSignal;
    } else {
      q.watcherWoken = true;
      signalWatcher = true;
    }
  };
  const auto unlockAndSignal = [&](std::unique_lock<std::mutex>& lock) {
    lock.unlock();
    for (; toSignal != 0; --toSignal) q.wakeup.notify_one();
    if (std::exchange(signalWatcher, false)) q.watch.notify_one();
  };
  // Runs a task with the lock released.
  const auto runUnlocked = [&](std::unique_lock<std::mutex>& lock, detail::QueuedTask item) {
    unlockAndSignal(lock);
    item.task->run();
    item.task.reset();  // frees its slot if run() did not
    item.work = WorkGuard();  // the epoch may end once the last task has finished
    lock.lock();
  };
  // Runs a task as one of the threads that are not leading.
  const auto runOne = [&](std::unique_lock<std::mutex>& lock, detail::QueuedTask item) {
    ++q.working;
    runUnlocked(lock, std::move(item));
    --q.working;
  };
  // Pops the oldest task; one that waited `patience` by `now` wakes another thread for those
  // behind it.
  const auto popFront = [&](Deadline now) {
    detail::QueuedTask item = std::move(q.tasks.front());
    q.tasks.pop_front();
    if (!q.tasks.empty() && q.anyAsleep() && now - item.queuedAt >= patience) wakeOne();
    return item;
  };
  bool leading = false;
  std::unique_lock<std::mutex> lock(q.mutex);
  for (;;) {
    if (!leading && !q.leaderTaken && !q.ended) leading = q.leaderTaken = true;
    if (leading) {
      // With tasks queued that only this thread drains, the poll only looks (they run next);
      // with tasks queued and a thread asleep, it ends when the oldest is overdue.
      Deadline pollUntil = kNoDeadline;
      if (!q.tasks.empty() && q.leaderDrains()) {
        pollUntil = Deadline{};
      } else if (!q.tasks.empty() && q.anyAsleep()) {
        pollUntil = q.tasks.front().queuedAt + patience;
      }
      unlockAndSignal(lock);
      if (!loop_.turn(collect, pollUntil)) {
        lock.lock();
        q.ended = true;  // no work guard is left, so no task is queued or running
        q.wakeup.notify_all();
        q.watch.notify_all();
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
      // A lone task runs here while an idle thread takes the lead: no hand-off on its way.
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
      // A queue nobody drains is drained here while a watcher keeps the lead from a task that
      // blocks (no hand-off for a batch of quick tasks); without a watcher, one thread is woken
      // for it. Another is woken whenever the oldest task is overdue.
      const bool drainHere = !mine.task && q.leaderDrains();
      const bool wakeDrainer = !mine.task && q.undrained() && !drainHere;
      if (q.frontOverdue(now, wakeDrainer ? Duration::zero() : patience)) wakeOne();
      if (!refused.empty()) {
        unlockAndSignal(lock);
        rejected_.fetch_add(refused.size());
        for (auto& [task, why] : refused) task->reject(std::move(why));
        refused.clear();
        lock.lock();
      }
      if (mine.task) {
        runOne(lock, std::move(mine));
        continue;
      }
      if (!drainHere) continue;
      // While a watcher watches, and for one watch period at most, so that a long queue does
      // not keep new messages unread: then it polls (only looks) and drains again.
      const Deadline pollAgainAt = now + watchPeriod();
      while (!q.tasks.empty() && q.watching && !q.watcherWoken) {
        const Deadline taskAt = Clock::now();
        if (taskAt >= pollAgainAt) break;
        detail::QueuedTask item = popFront(taskAt);
        ++q.leaderTasks;
        q.leaderRunning = true;
        if (!q.watcherTimed) {
          q.watcherTimed = true;  // the watcher's sleep gets its period
          signalWatcher = true;
          wakeups_.fetch_add(1, std::memory_order_relaxed);
        }
        const uint64_t term = q.leaderTerm;
        runUnlocked(lock, std::move(item));
        if (q.leaderTerm != term) {
          leading = false;  // the watcher leads now; this thread is one of the others
          break;
        }
        q.leaderRunning = false;
      }
      continue;
    }
    if (!q.tasks.empty()) {
      runOne(lock, popFront(Clock::now()));
      continue;
    }
    if (q.ended) return;
    ++q.idle;
    idle_.store(q.idle, std::memory_order_relaxed);
    if (!q.watching) {
      leading = watchLeader(lock);
    } else {
      q.wakeup.wait(lock, [&q] { return q.wakeups > 0 || q.ended; });
      if (q.wakeups > 0) --q.wakeups;
    }
    --q.idle;
    idle_.store(q.idle, std::memory_order_relaxed);
  }
}

bool ThreadPoolExecutor::watchLeader(std::unique_lock<std::mutex>& lock) {
  detail::WorkQueue& q = *queue_;
  q.watching = true;
  uint64_t seen = q.leaderTasks;
  bool timed = q.leaderRunning;
  bool takesLead = false;
  const Duration period = watchPeriod();
  const auto woken = [&q] { return q.watcherWoken || q.ended; };
  for (;;) {
    q.watcherTimed = timed;
    if (timed) {
      if (q.watch.wait_for(lock, period, woken)) break;
      if (q.leaderRunning && q.leaderTasks == seen) {
        // One task has held the leader for a whole period: lead in its place.
        ++q.leaderTerm;
        q.leaderRunning = false;
        takesLead = true;
        break;
      }
    } else {
      q.watch.wait(lock, [&] { return woken() || q.watcherTimed; });
      if (woken()) break;
    }
    // The sleep keeps its period while the leader runs a task or ran one in the last period.
    timed = q.leaderRunning || q.leaderTasks != seen;
    seen = q.leaderTasks;
  }
  q.watcherWoken = false;
  q.watching = false;
  q.watcherTimed = false;
  return takesLead;
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
