// Executor: runs the work a TaskSource yields (received messages) on some thread(s).
// Implementations: BlockingExecutor, EventLoopExecutor, ThreadPoolExecutor; one lifecycle contract.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"

namespace switchboard {

// One unit of work, e.g. a received message bound to its dispatcher. Exactly one of run() or
// reject() is called, once, on an executor thread; neither may throw.
class Task {
 public:
  virtual ~Task() { releaseSlot(); }
  virtual void run() noexcept = 0;
  // The executor refused the task (kOverloaded when full, kShuttingDown when stopping). The task
  // must still answer its sender: nothing accepted is dropped silently.
  virtual void reject(Status why) noexcept = 0;

  // An executor that bounds its tasks in flight counts this one in `slots` from admission until
  // releaseSlot(). The executor calls it before reject() and after run() (the destructor at the
  // latest); a task that answers its sender inside run() calls it just before the answer goes,
  // so the sender's next message finds the slot free. Called on the thread that has the task;
  // the first call frees the slot, later ones do nothing.
  void holdSlot(std::atomic<size_t>& slots) { slot_ = &slots; }
  void releaseSlot() {
    if (std::atomic<size_t>* slots = std::exchange(slot_, nullptr)) slots->fetch_sub(1);
  }

 private:
  std::atomic<size_t>* slot_ = nullptr;
};
using TaskPtr = std::unique_ptr<Task>;

// Where an executor takes its work from (the server adapts a transport Listener to it).
// poll() is thread-bound to the executor's receiving thread; interrupt() is thread-safe.
class TaskSource {
 public:
  virtual ~TaskSource() = default;
  // Appends ready tasks to `out`, waiting until `deadline` or interrupt() for the first. Returns
  // ok with nothing on a timeout or an interrupt; an error when the source is broken for good.
  virtual Status poll(Deadline deadline, std::vector<TaskPtr>& out) = 0;
  // Makes a blocked poll() return promptly, or the next one return at once.
  virtual void interrupt() = 0;
};

// Keeps an executor's epoch open while work that will finish later (a deferred reply) is
// outstanding, as asio's outstanding-work count does. Movable; releases on destruction.
class WorkGuard {
 public:
  WorkGuard() = default;
  explicit WorkGuard(std::function<void()> release) : release_(std::move(release)) {}
  WorkGuard(WorkGuard&& other) noexcept : release_(std::exchange(other.release_, nullptr)) {}
  WorkGuard& operator=(WorkGuard&& other) noexcept {
    if (this != &other) {
      reset();
      release_ = std::exchange(other.release_, nullptr);
    }
    return *this;
  }
  WorkGuard(const WorkGuard&) = delete;
  WorkGuard& operator=(const WorkGuard&) = delete;
  ~WorkGuard() { reset(); }
  void reset() {
    if (auto r = std::exchange(release_, nullptr)) r();
  }
  bool holdsWork() const { return release_ != nullptr; }

 private:
  std::function<void()> release_;
};

// What every executor is configured with.
struct ExecutorOptions {
  LogSink log = stderrLogSink();
  // wait() logs one "possible hang" warning after waiting this long.
  Duration hangWarningAfter = std::chrono::seconds(10);
};

// The executor lifecycle (the same for MessageHandlingServer; see docs/ARCHITECTURE.md):
//  start(source)  non-blocking; returns once stop() is safe. Concurrent callers wait for the one
//                 run; a second start() in the same epoch is a no-op; start() after a completed
//                 stop() finishes the previous epoch's wait() first and begins a new epoch.
//  execute()      blocking executor only: runs the loop on the caller's thread until stop().
//  stop()         non-blocking, idempotent, from any thread including a task; never overtakes a
//                 start() in progress. Afterwards no new task runs: while the epoch drains, tasks
//                 still polled are rejected kShuttingDown.
//  wait(deadline) blocks until stopped, every taken task finished, all work guards released and
//                 every thread joined. kTimeout at the deadline; kWouldDeadlock at once when
//                 called from a thread of this executor.
// Thread-safe.
class Executor {
 public:
  virtual ~Executor() = default;
  Executor() = default;
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // `source` must stay valid until the epoch's wait() has returned ok.
  virtual Status start(TaskSource& source) = 0;
  // kInvalidState unless this is a blocking executor that was started and not yet executed.
  virtual Status execute() = 0;
  virtual void stop() = 0;
  virtual Status wait(Deadline deadline = kNoDeadline) = 0;

  // Runs `fn` on an executor thread at or after `when`. Accepted from start() until the epoch's
  // loop ends, which is after stop() once no work guard is left: in-flight work keeps
  // scheduling while it drains. kShuttingDown afterwards. Timers still pending when the loop
  // ends are destroyed unrun, so a timer that owns a reply answers it from its destructor.
  virtual Status runAt(Deadline when, std::function<void()> fn) = 0;
  // A guard that keeps the current epoch open (wait() waits for it); empty when not running.
  virtual WorkGuard acquireWork() = 0;
  // True when called from a thread that runs this executor's tasks.
  virtual bool isExecutorThread() const = 0;
};

}  // namespace switchboard
