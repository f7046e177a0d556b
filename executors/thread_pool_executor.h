// ThreadPoolExecutor (the default): a receiving thread polls the source and hands tasks to N
// workers through a bounded queue; past the queue or in-flight limit a task is rejected.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "executors/detail/receive_loop.h"
#include "executors/executor.h"
#include "executors/lifecycle.h"

namespace switchboard {

namespace detail {
struct WorkQueue;
}

// Thread-safe. Timers (runAt) run on the receiving thread and must be short.
class ThreadPoolExecutor final : public Executor {
 public:
  struct Options : ExecutorOptions {
    size_t threads = 4;           // workers
    size_t queueCapacity = 1024;  // tasks waiting for a worker
    size_t maxInFlight = 1024;    // tasks queued or running; more are rejected kOverloaded
  };

  explicit ThreadPoolExecutor(Options options);
  ThreadPoolExecutor();
  // stop() + wait(). Must not run on one of the pool's threads.
  ~ThreadPoolExecutor() override;

  // Starts the receiving thread and the workers; returns once every worker has checked in.
  Status start(TaskSource& source) override;
  Status execute() override;  // kInvalidState
  void stop() override;
  Status wait(Deadline deadline = kNoDeadline) override;
  Status runAt(Deadline when, std::function<void()> fn) override;
  WorkGuard acquireWork() override;
  bool isExecutorThread() const override;

  // Tasks rejected kOverloaded since construction.
  uint64_t rejectedCount() const { return rejected_.load(); }

 private:
  void handoff(TaskPtr task);
  void workerMain();
  Status finish(Deadline deadline);

  const Options options_;
  detail::ReceiveLoop loop_;
  std::unique_ptr<detail::WorkQueue> queue_;  // per epoch; set by start, used by pool threads
  std::vector<std::thread> threads_;          // receiver first, then workers; joined by finish
  mutable std::mutex idsMutex_;
  std::vector<std::thread::id> ids_;  // guarded by idsMutex_: threads of the current epoch
  std::atomic<size_t> inFlight_{0};
  std::atomic<uint64_t> rejected_{0};
  Lifecycle lifecycle_;
};

}  // namespace switchboard
