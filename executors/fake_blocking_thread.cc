// FakeBlockingThread: join semantics for a loop that runs on a caller's thread.
// alive_ and executor_ change only under mutex_; died_ wakes joiners.
#include "executors/fake_blocking_thread.h"

#include <utility>

namespace switchboard {

FakeBlockingThread::FakeBlockingThread(std::function<void()> target)
    : target_(std::move(target)) {}

Status FakeBlockingThread::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (alive_) return Status(StatusCode::kInvalidState, "FakeBlockingThread already started");
  alive_ = true;
  return Status::ok();
}

Status FakeBlockingThread::execute() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!alive_) return Status(StatusCode::kInvalidState, "FakeBlockingThread not started");
    if (executor_) return Status(StatusCode::kInvalidState, "FakeBlockingThread already running");
    executor_ = std::this_thread::get_id();
  }
  struct MarkDead {
    FakeBlockingThread* self;
    ~MarkDead() {
      std::lock_guard<std::mutex> lock(self->mutex_);
      self->alive_ = false;
      self->executor_.reset();
      self->died_.notify_all();
    }
  } markDead{this};
  target_();
  return Status::ok();
}

Status FakeBlockingThread::join(Deadline deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (executor_ == std::this_thread::get_id()) {
    return Status(StatusCode::kWouldDeadlock, "FakeBlockingThread joined from its own execute()");
  }
  if (!died_.wait_until(lock, deadline, [&] { return !alive_; })) {
    return Status(StatusCode::kTimeout, "FakeBlockingThread still running at the deadline");
  }
  return Status::ok();
}

bool FakeBlockingThread::isAlive() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return alive_;
}

std::optional<std::thread::id> FakeBlockingThread::executingThread() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return executor_;
}

}  // namespace switchboard
