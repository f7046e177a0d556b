// Serving: the lifecycle of a messaging server over an Executor, shared by MessageHandlingServer
// and NotificationListener: open the transport side, run the executor on it, close it after.
#pragma once

#include <functional>
#include <string>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "executors/executor.h"
#include "executors/lifecycle.h"

namespace switchboard::detail {

// start() runs `open` (listen, subscribe), then starts `executor` on `source` (`close` undoes
// `open` when that fails); stop() runs `onStop`, then stops the executor; wait() waits for the
// executor, then runs `close`. The contract is Lifecycle's (executors/executor.h); wait() from
// an executor thread is kWouldDeadlock. The destructor stops and waits, logging a failed wait.
// `executor` and `source` must outlive this object. Thread-safe.
class Serving final {
 public:
  struct Hooks {
    std::function<Status()> open;
    std::function<void()> close;
    std::function<void()> onStop;  // may be empty
  };

  Serving(std::string component, Executor& executor, TaskSource& source, Hooks hooks,
          Duration hangWarningAfter, LogSink log)
      : component_(std::move(component)),
        executor_(executor),
        source_(source),
        hooks_(std::move(hooks)),
        log_(log),
        lifecycle_({component_, hangWarningAfter, std::move(log)},
                   [this] {
                     if (hooks_.onStop) hooks_.onStop();
                     executor_.stop();
                   },
                   [this](Deadline deadline) {
                     if (Status s = executor_.wait(deadline); !s) return s;
                     hooks_.close();
                     return Status::ok();
                   },
                   [this] { return executor_.isExecutorThread(); }) {}
  ~Serving() {
    stop();
    if (Status s = wait(); !s) log_(LogLevel::kError, component_, "destructor: " + s.toString());
  }
  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;

  Status start() {
    return lifecycle_.start([this] {
      if (Status s = hooks_.open(); !s) return s;
      if (Status s = executor_.start(source_); !s) {
        hooks_.close();
        return s;
      }
      return Status::ok();
    });
  }
  Status execute() { return executor_.execute(); }
  void stop() { lifecycle_.stop(); }
  Status wait(Deadline deadline = kNoDeadline) { return lifecycle_.wait(deadline); }
  bool isRunning() const { return lifecycle_.isRunning(); }

 private:
  const std::string component_;
  Executor& executor_;
  TaskSource& source_;
  const Hooks hooks_;
  const LogSink log_;
  Lifecycle lifecycle_;
};

}  // namespace switchboard::detail
