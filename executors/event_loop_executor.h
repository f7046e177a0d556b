// EventLoopExecutor: one loop thread runs every task and timer. A task may finish later (a
// deferred reply holding a WorkGuard), so one loop serves many slow calls at once.
#pragma once

#include <atomic>
#include <mutex>
#include <thread>

#include "executors/detail/receive_loop.h"
#include "executors/executor.h"
#include "executors/lifecycle.h"

namespace switchboard {

// Thread-safe. Tasks must not block: a slow call defers its reply and completes it from a timer
// (runAt) or from another thread.
class EventLoopExecutor final : public Executor {
 public:
  explicit EventLoopExecutor(ExecutorOptions options = {});
  // stop() + wait(). Must not run on the loop thread.
  ~EventLoopExecutor() override;

  Status start(TaskSource& source) override;
  Status execute() override;  // kInvalidState: the loop has its own thread
  void stop() override;
  Status wait(Deadline deadline = kNoDeadline) override;
  Status runAt(Deadline when, std::function<void()> fn) override;
  WorkGuard acquireWork() override;
  bool isExecutorThread() const override;

 private:
  detail::ReceiveLoop loop_;
  std::thread thread_;                  // joined by the finish hook, outside any lock
  std::atomic<std::thread::id> loopId_;  // the running loop thread's id, for isExecutorThread()
  Lifecycle lifecycle_;
};

}  // namespace switchboard
