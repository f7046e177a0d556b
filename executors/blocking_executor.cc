// BlockingExecutor: the armed/executing split that keeps a stop() from another thread from
// being lost (the seed race), with FakeBlockingThread giving wait() real join semantics.
#include "executors/blocking_executor.h"

namespace switchboard {

BlockingExecutor::BlockingExecutor(ExecutorOptions options)
    : loop_(options.log, "blocking-executor"),
      thread_([this] { runLoop(); }),
      lifecycle_({"blocking-executor", options.hangWarningAfter, options.log},
                 [this] {
                   std::unique_lock<std::mutex> lock(mutex_);
                   loop_.requestStop();
                   if (run_ != Run::kArmed) return;
                   // Stopped before execute(): the fake thread ends without running the loop.
                   run_ = Run::kSkipped;
                   lock.unlock();
                   loop_.finishWithoutRunning();
                   (void)thread_.execute();
                 },
                 [this](Deadline deadline) {
                   // Joining the fake thread is what waits for execute() to return (the loop
                   // ends only once no work is left). An epoch stopped before execute() has no
                   // loop: there the work guards taken meanwhile are waited for directly.
                   Status joined = thread_.join(deadline);
                   bool skipped = false;
                   {
                     std::lock_guard<std::mutex> lock(mutex_);
                     skipped = run_ == Run::kSkipped;
                   }
                   if (joined && skipped && !loop_.waitFinished(deadline)) {
                     joined = Status(StatusCode::kTimeout, "work guards still held");
                   }
                   if (joined) {
                     std::lock_guard<std::mutex> lock(mutex_);
                     run_ = Run::kIdle;  // the epoch is over: execute() needs a new start()
                   }
                   return joined;
                 },
                 [this] { return isExecutorThread(); }) {}

BlockingExecutor::~BlockingExecutor() {
  stop();
  (void)wait();
}

Status BlockingExecutor::start(TaskSource& source) {
  return lifecycle_.start([&] {
    if (Status s = thread_.start(); !s) return s;
    std::lock_guard<std::mutex> lock(mutex_);
    loop_.arm(source);
    run_ = Run::kArmed;
    return Status::ok();
  });
}

Status BlockingExecutor::execute() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (run_ == Run::kSkipped) return Status::ok();
    if (run_ != Run::kArmed) {
      return Status(StatusCode::kInvalidState,
                    run_ == Run::kExecuting ? "execute() is already running"
                                            : "execute() before start()");
    }
    run_ = Run::kExecuting;
  }
  return thread_.execute();
}

void BlockingExecutor::runLoop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (run_ == Run::kSkipped) return;
  }
  loop_.run([](TaskPtr task) { task->run(); });
  std::lock_guard<std::mutex> lock(mutex_);
  run_ = Run::kIdle;
}

void BlockingExecutor::stop() { lifecycle_.stop(); }

Status BlockingExecutor::wait(Deadline deadline) { return lifecycle_.wait(deadline); }

Status BlockingExecutor::runAt(Deadline when, std::function<void()> fn) {
  return loop_.runAt(when, std::move(fn));
}

WorkGuard BlockingExecutor::acquireWork() { return loop_.acquireWork(); }

bool BlockingExecutor::isExecutorThread() const {
  return thread_.executingThread() == std::this_thread::get_id();
}

}  // namespace switchboard
