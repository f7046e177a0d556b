// BlockingExecutor: start() only arms it; execute() runs the receive/dispatch loop on the
// caller's thread until stop(). wait() from another thread joins that run (FakeBlockingThread).
#pragma once

#include <cstdint>
#include <mutex>

#include "executors/detail/receive_loop.h"
#include "executors/executor.h"
#include "executors/fake_blocking_thread.h"
#include "executors/lifecycle.h"

namespace switchboard {

// Tasks and timers run one at a time on the thread inside execute(). Thread-safe.
class BlockingExecutor final : public Executor {
 public:
  explicit BlockingExecutor(ExecutorOptions options = {});
  // stop() + wait(). Must not run inside execute().
  ~BlockingExecutor() override;

  Status start(TaskSource& source) override;
  // Runs the loop until stop(); ok also when stop() came first (then it returns at once).
  // kInvalidState when not started or already executing.
  Status execute() override;
  void stop() override;
  Status wait(Deadline deadline = kNoDeadline) override;
  Status runAt(Deadline when, std::function<void()> fn) override;
  WorkGuard acquireWork() override;
  bool isExecutorThread() const override;

 private:
  enum class Run { kIdle, kArmed, kExecuting, kSkipped };
  void runLoop();

  detail::ReceiveLoop loop_;
  FakeBlockingThread thread_;
  std::mutex mutex_;
  Run run_ = Run::kIdle;  // guarded by mutex_
  Lifecycle lifecycle_;
};

}  // namespace switchboard
