// EventLoopExecutor: a ReceiveLoop on one owned thread; tasks run inline on it.
// The thread is created by start() and joined by the wait() that finishes the epoch.
#include "executors/event_loop_executor.h"

namespace switchboard {

EventLoopExecutor::EventLoopExecutor(ExecutorOptions options)
    : loop_(options.log, "event-loop-executor"),
      lifecycle_({"event-loop-executor", options.hangWarningAfter, options.log},
                 [this] { loop_.requestStop(); },
                 [this](Deadline deadline) {
                   if (!loop_.waitFinished(deadline)) {
                     return Status(StatusCode::kTimeout, "event loop still has work in flight");
                   }
                   thread_.join();  // the loop has returned: this is prompt
                   return Status::ok();
                 },
                 [this] { return isExecutorThread(); }) {}

EventLoopExecutor::~EventLoopExecutor() {
  stop();
  (void)wait();
}

Status EventLoopExecutor::start(TaskSource& source) {
  return lifecycle_.start([&] {
    loop_.arm(source);
    try {
      thread_ = std::thread([this] {
        loopId_ = std::this_thread::get_id();
        loop_.run([](TaskPtr task) { task->run(); });
        loopId_ = std::thread::id();
      });
    } catch (const std::system_error& e) {
      loop_.finishWithoutRunning();
      return Status(StatusCode::kInvalidState, std::string("cannot start loop thread: ") + e.what());
    }
    return Status::ok();
  });
}

Status EventLoopExecutor::execute() {
  return Status(StatusCode::kInvalidState, "execute() is for the blocking executor only");
}

void EventLoopExecutor::stop() { lifecycle_.stop(); }

Status EventLoopExecutor::wait(Deadline deadline) { return lifecycle_.wait(deadline); }

Status EventLoopExecutor::runAt(Deadline when, std::function<void()> fn) {
  return loop_.runAt(when, std::move(fn));
}

WorkGuard EventLoopExecutor::acquireWork() { return loop_.acquireWork(); }

bool EventLoopExecutor::isExecutorThread() const {
  return loopId_.load() == std::this_thread::get_id();
}

}  // namespace switchboard
