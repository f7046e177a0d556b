// ThreadPoolExecutor: receiving thread + workers over a Boost.Thread sync_bounded_queue.
// In-flight tasks hold a WorkGuard, so the receiving loop ends only when they have finished.
#include "executors/thread_pool_executor.h"

#include <algorithm>
#include <latch>
#include <memory>
#include <boost/thread/concurrent_queues/sync_bounded_queue.hpp>

namespace switchboard {

namespace detail {
struct QueuedTask {
  TaskPtr task;
  WorkGuard work;
};
struct WorkQueue {
  explicit WorkQueue(size_t capacity) : queue(std::max<size_t>(capacity, 1)) {}
  boost::sync_bounded_queue<QueuedTask> queue;
};
}  // namespace detail

ThreadPoolExecutor::ThreadPoolExecutor() : ThreadPoolExecutor(Options{}) {}

ThreadPoolExecutor::ThreadPoolExecutor(Options options)
    : options_(std::move(options)),
      loop_(options_.log, "thread-pool-executor"),
      lifecycle_({"thread-pool-executor", options_.hangWarningAfter, options_.log},
                 [this](uint64_t) { loop_.requestStop(); },
                 [this](Deadline deadline) { return finish(deadline); },
                 [this] { return isExecutorThread(); }) {}

ThreadPoolExecutor::~ThreadPoolExecutor() {
  stop();
  (void)wait();
}

Status ThreadPoolExecutor::start(TaskSource& source) {
  return lifecycle_.start([&] {
    const size_t workers = std::max<size_t>(options_.threads, 1);
    queue_ = std::make_unique<detail::WorkQueue>(options_.queueCapacity);
    loop_.arm(source);
    {
      std::lock_guard<std::mutex> lock(idsMutex_);
      ids_.clear();
    }
    // Each thread registers its id, then checks in; start() returns once all have (folly's
    // handshake), so isExecutorThread() is right before any task runs.
    auto checkedIn = std::make_shared<std::latch>(static_cast<std::ptrdiff_t>(workers + 1));
    auto checkIn = [this, checkedIn] {
      {
        std::lock_guard<std::mutex> lock(idsMutex_);
        ids_.push_back(std::this_thread::get_id());
      }
      checkedIn->count_down();
    };
    try {
      threads_.emplace_back([this, checkIn] {
        checkIn();
        loop_.run([this](TaskPtr task) { handoff(std::move(task)); });
        queue_->queue.close();  // no task is outstanding: workers drain nothing and exit
      });
      for (size_t i = 0; i < workers; ++i) {
        threads_.emplace_back([this, checkIn] {
          checkIn();
          workerMain();
        });
      }
    } catch (const std::system_error& e) {
      // Unwind what was started: the receiver's loop ends at once, the workers on close().
      loop_.requestStop();
      queue_->queue.close();
      for (auto& t : threads_) t.join();
      threads_.clear();
      return Status(StatusCode::kInvalidState, std::string("cannot start pool thread: ") + e.what());
    }
    checkedIn->wait();
    return Status::ok();
  });
}

void ThreadPoolExecutor::handoff(TaskPtr task) {
  if (inFlight_.fetch_add(1) >= options_.maxInFlight) {
    inFlight_.fetch_sub(1);
    rejected_.fetch_add(1);
    task->reject(Status(StatusCode::kOverloaded, "server busy: in-flight limit reached"));
    return;
  }
  detail::QueuedTask item{std::move(task), loop_.acquireWork()};
  if (queue_->queue.try_push_back(std::move(item)) != boost::queue_op_status::success) {
    inFlight_.fetch_sub(1);
    rejected_.fetch_add(1);
    item.task->reject(Status(StatusCode::kOverloaded, "server busy: queue full"));
  }
}

void ThreadPoolExecutor::workerMain() {
  for (;;) {
    detail::QueuedTask item;
    if (queue_->queue.wait_pull_front(item) != boost::queue_op_status::success) return;
    item.task->run();
    item.task.reset();
    inFlight_.fetch_sub(1);
    // item.work released here: the loop may end once the last task has finished.
  }
}

Status ThreadPoolExecutor::finish(Deadline deadline) {
  if (!loop_.waitFinished(deadline)) {
    return Status(StatusCode::kTimeout, "thread pool still has tasks in flight");
  }
  for (auto& t : threads_) t.join();  // the loop ended and the queue is closed: prompt
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
