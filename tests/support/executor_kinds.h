// Test support: the executor kinds that typed suites run through, and ServingThread, which gives
// a blocking executor the caller thread its execute() needs.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "executors/blocking_executor.h"
#include "executors/event_loop_executor.h"
#include "executors/thread_pool_executor.h"
#include "messaging/server.h"

namespace switchboard::testing {

struct BlockingKind {
  static std::string name() { return "Blocking"; }
  static constexpr bool kBlocking = true;
  static std::unique_ptr<Executor> make(ExecutorOptions options = {}) {
    return std::make_unique<BlockingExecutor>(std::move(options));
  }
};
struct EventLoopKind {
  static std::string name() { return "EventLoop"; }
  static constexpr bool kBlocking = false;
  static std::unique_ptr<Executor> make(ExecutorOptions options = {}) {
    return std::make_unique<EventLoopExecutor>(std::move(options));
  }
};
struct ThreadPoolKind {
  static std::string name() { return "ThreadPool"; }
  static constexpr bool kBlocking = false;
  static std::unique_ptr<Executor> make(ExecutorOptions options = {}) {
    ThreadPoolExecutor::Options pool;
    static_cast<ExecutorOptions&>(pool) = std::move(options);
    pool.threads = 4;
    return std::make_unique<ThreadPoolExecutor>(std::move(pool));
  }
};

// For a blocking server (a MessageHandlingServer or a NotificationListener), runs execute() on a
// thread of its own (the "caller" of execute()); joins it on destruction. A no-op for the other
// kinds.
class ServingThread {
 public:
  template <typename Server>
  ServingThread(Server& server, bool blocking) {
    if (blocking) thread_ = std::thread([this, &server] { executeStatus_ = server.execute(); });
  }
  ~ServingThread() { join(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  const Status& executeStatus() const { return executeStatus_; }

 private:
  std::thread thread_;
  Status executeStatus_;
};

}  // namespace switchboard::testing
