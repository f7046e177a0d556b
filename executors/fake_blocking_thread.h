// FakeBlockingThread: a thread stand-in that creates no thread. Its target runs on whichever
// thread calls execute(); join() waits for that run to end, like joining a real thread.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "base/deadline.h"
#include "base/status.h"

namespace switchboard {

// start() marks it alive; execute() runs the target on the caller and, on exit (also by an
// exception), marks it dead and wakes every joiner. Thread-safe.
class FakeBlockingThread final {
 public:
  explicit FakeBlockingThread(std::function<void()> target);
  FakeBlockingThread(const FakeBlockingThread&) = delete;
  FakeBlockingThread& operator=(const FakeBlockingThread&) = delete;

  // kInvalidState if already alive.
  Status start();
  // Runs the target on the calling thread. kInvalidState if not started or already executing.
  Status execute();
  // Waits until the target has returned (or the thread was never started). kTimeout at the
  // deadline; kWouldDeadlock when called from inside execute().
  Status join(Deadline deadline = kNoDeadline);
  bool isAlive() const;
  // The thread running execute() now, if any.
  std::optional<std::thread::id> executingThread() const;

 private:
  const std::function<void()> target_;
  mutable std::mutex mutex_;
  std::condition_variable died_;
  bool alive_ = false;                          // guarded by mutex_
  std::optional<std::thread::id> executor_;     // guarded by mutex_
};

}  // namespace switchboard
