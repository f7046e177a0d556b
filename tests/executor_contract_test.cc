// The executor lifecycle contract (executors/executor.h), row by row, for every executor.
// BlockingExecutor runs its loop inside execute(): the fixture gives it a test-owned "caller
// thread" per epoch. No sleeps synchronise anything: latches, promises and condition variables
// do, and every wait is bounded by a deadline.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "executors/blocking_executor.h"
#include "executors/event_loop_executor.h"
#include "executors/executor.h"
#include "executors/thread_pool_executor.h"
#include "tests/support/manual_task_source.h"
#include "tests/support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using switchboard::testing::Events;
using switchboard::testing::Gate;
using switchboard::testing::LogCapture;
using switchboard::testing::ManualTaskSource;
using switchboard::testing::readyWithin;

constexpr Duration kLong = 5s;     // bound on every wait that is expected to succeed
constexpr Duration kShort = 50ms;  // "still blocked" probes
// Blocked tasks wait on their Gate with its default bound, twice this suite's: longer than any
// wait of the test that is expected to succeed.
static_assert(testing::kDefaultWait == 2 * kLong);

// Sets a flag when destroyed: proves a timer's function was dropped.
struct DestroyFlag {
  explicit DestroyFlag(std::atomic<bool>* f) : flag(f) {}
  ~DestroyFlag() { flag->store(true); }
  std::atomic<bool>* flag;
};

// Threads of this process, from /proc/self/task.
int threadCount() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)entry;
    ++n;
  }
  return n;
}

// A joined thread can linger in /proc/self/task for a moment after join() returned (the
// kernel clears the tid before it reaps the task): observe the count until it is <= `atMost`
// or the deadline passed, and return the last observation. Polls the kernel, not a test thread.
int settledThreadCount(int atMost, Duration d = kLong) {
  const Deadline deadline = deadlineAfter(d);
  int n = threadCount();
  while (n > atMost && Clock::now() < deadline) {
    std::this_thread::yield();
    n = threadCount();
  }
  return n;
}

// ----- Per-executor traits ----------------------------------------------------------------------

template <typename E>
struct ExecutorTraits;

template <>
struct ExecutorTraits<BlockingExecutor> {
  static constexpr bool kBlocking = true;
  static constexpr int kOwnThreads = 0;  // runs on the caller of execute()
  static constexpr const char* kName = "Blocking";
  static std::unique_ptr<BlockingExecutor> make(ExecutorOptions options) {
    return std::make_unique<BlockingExecutor>(std::move(options));
  }
};

template <>
struct ExecutorTraits<EventLoopExecutor> {
  static constexpr bool kBlocking = false;
  static constexpr int kOwnThreads = 1;  // the loop thread
  static constexpr const char* kName = "EventLoop";
  static std::unique_ptr<EventLoopExecutor> make(ExecutorOptions options) {
    return std::make_unique<EventLoopExecutor>(std::move(options));
  }
};

template <>
struct ExecutorTraits<ThreadPoolExecutor> {
  static constexpr bool kBlocking = false;
  static constexpr int kOwnThreads = 3;  // the receiving thread + 2 workers
  static constexpr const char* kName = "ThreadPool";
  static std::unique_ptr<ThreadPoolExecutor> make(ExecutorOptions options) {
    ThreadPoolExecutor::Options o;
    static_cast<ExecutorOptions&>(o) = std::move(options);
    o.threads = 2;
    o.queueCapacity = 64;
    o.maxInFlight = 64;
    return std::make_unique<ThreadPoolExecutor>(std::move(o));
  }
};

template <typename E>
class ExecutorContractTest : public ::testing::Test {
 protected:
  using Traits = ExecutorTraits<E>;
  static constexpr bool kBlocking = Traits::kBlocking;

  void SetUp() override { exec_ = make(options()); }

  void TearDown() override {
    for (auto& g : gates_) g.open();
    if (exec_) {
      exec_->stop();
      Status s = exec_->wait(deadlineAfter(kLong));
      EXPECT_TRUE(s.isOk()) << "TearDown wait(): " << s;
      if (!s) {  // something is stuck: do not hang in the destructor or in a join
        (void)exec_.release();
        for (auto& c : callers_) c.detach();
        callers_.clear();
      }
    }
    joinCallers();
    for (size_t i = 0; i < callerResults_.size(); ++i) {
      EXPECT_TRUE(callerResults_[i].isOk()) << "execute() #" << i << ": " << callerResults_[i];
    }
    EXPECT_EQ(log_->count(LogLevel::kError), 0) << log_->dump();
  }

  ExecutorOptions options(Duration hangWarningAfter = std::chrono::seconds(10)) {
    ExecutorOptions o;
    o.log = log_->sink();
    o.hangWarningAfter = hangWarningAfter;
    return o;
  }
  std::unique_ptr<E> make(ExecutorOptions o) { return Traits::make(std::move(o)); }

  // A gate for a task to block on; TearDown opens every one, so a failed assertion cannot leave
  // a task blocked.
  Gate& gate() { return gates_.emplace_back(); }

  // Blocking executor: a caller thread that runs execute() for the current epoch.
  void spawnCaller() {
    if constexpr (kBlocking) {
      E* e = exec_.get();
      auto result = std::make_shared<std::promise<Status>>();
      callerFutures_.push_back(result->get_future());
      callers_.emplace_back([e, result] { result->set_value(e->execute()); });
    }
  }
  // Joins every caller thread (each returns once its epoch ended) and records its result.
  void joinCallers() {
    for (auto& c : callers_) c.join();
    callers_.clear();
    for (auto& f : callerFutures_) callerResults_.push_back(f.get());
    callerFutures_.clear();
  }

  // start(); for the blocking executor also a caller thread that executes the epoch.
  Status start() {
    Status s = exec_->start(source_);
    if (s) spawnCaller();
    return s;
  }
  // Waits until a probe task has run: the loop is taking tasks (for the blocking executor, the
  // caller thread is inside execute()).
  void ensureRunning() {
    std::promise<void> ran;
    source_.push([&ran] { ran.set_value(); });
    auto f = ran.get_future();
    ASSERT_TRUE(readyWithin(f, kLong)) << "the executor runs no task";
  }
  // A work guard taken inside a task, returned once the task has; empty if no task ran in time.
  WorkGuard guardTakenByATask() {
    std::promise<WorkGuard> acquired;
    source_.push([&] { acquired.set_value(exec_->acquireWork()); });
    auto f = acquired.get_future();
    if (!readyWithin(f, kLong)) return WorkGuard();
    return f.get();
  }

  void startRunning() {
    ASSERT_OK(start());
    ASSERT_NO_FATAL_FAILURE(ensureRunning());
  }
  void stopAndWait() {
    exec_->stop();
    ASSERT_OK(exec_->wait(deadlineAfter(kLong)));
    joinCallers();
  }

  // Declared before exec_, so they outlive it.
  std::shared_ptr<LogCapture> log_ = std::make_shared<LogCapture>();
  std::deque<Gate> gates_;
  ManualTaskSource source_;
  std::unique_ptr<E> exec_;
  std::vector<std::thread> callers_;
  std::vector<std::future<Status>> callerFutures_;
  std::vector<Status> callerResults_;
};

using ExecutorTypes = ::testing::Types<BlockingExecutor, EventLoopExecutor, ThreadPoolExecutor>;
struct ExecutorNames {
  template <typename T>
  static std::string GetName(int) {
    return ExecutorTraits<T>::kName;
  }
};
TYPED_TEST_SUITE(ExecutorContractTest, ExecutorTypes, ExecutorNames);

// ----- start() ----------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, StartReturnsWithoutBlockingAndTasksRun) {
  auto& exec = *this->exec_;
  const Deadline before = Clock::now();
  // The blocking executor only arms: nobody executes yet, and start() still returns.
  ASSERT_OK(exec.start(this->source_));
  EXPECT_LT(Clock::now() - before, kLong);
  EXPECT_FALSE(exec.isExecutorThread());
  this->spawnCaller();

  constexpr int kTasks = 3;
  std::array<std::promise<bool>, kTasks> inside;
  for (auto& p : inside) {
    this->source_.push([&exec, &p] { p.set_value(exec.isExecutorThread()); });
  }
  for (int i = 0; i < kTasks; ++i) {
    auto f = inside[i].get_future();
    ASSERT_TRUE(readyWithin(f, kLong)) << "task " << i << " did not run";
    EXPECT_TRUE(f.get()) << "isExecutorThread() inside task " << i;
  }
  EXPECT_FALSE(exec.isExecutorThread());  // the test thread runs no task
  this->stopAndWait();
  EXPECT_FALSE(exec.isExecutorThread());
  EXPECT_EQ(this->source_.queued(), 0u);
}

TYPED_TEST(ExecutorContractTest, ExecuteIsOnlyForTheBlockingExecutor) {
  auto& exec = *this->exec_;
  EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);  // not started
  if constexpr (TestFixture::kBlocking) {
    ASSERT_NO_FATAL_FAILURE(this->startRunning());  // a caller thread is inside execute()
    EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);  // already executing
    this->stopAndWait();
    ASSERT_EQ(this->callerResults_.size(), 1u);
    EXPECT_OK(this->callerResults_[0]);                      // execute() returned after stop()
    EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);  // the epoch is over

    // stop() before execute(): execute() returns ok at once and the epoch completes.
    ASSERT_OK(exec.start(this->source_));
    exec.stop();
    EXPECT_OK(exec.execute());
    EXPECT_OK(exec.wait(deadlineAfter(kLong)));
  } else {
    ASSERT_NO_FATAL_FAILURE(this->startRunning());
    EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);  // returns at once: own threads
    exec.stop();
    EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);
    ASSERT_OK(exec.wait(deadlineAfter(kLong)));
    EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);
  }
}

TYPED_TEST(ExecutorContractTest, ConcurrentStartFromFourThreadsStartsOneLoop) {
  auto& exec = *this->exec_;
  constexpr int kStarters = 4;
  const int baseline = threadCount();
  std::latch go(kStarters);
  std::vector<Status> results(kStarters, Status(StatusCode::kCancelled, "not run"));
  std::vector<std::thread> starters;
  for (int i = 0; i < kStarters; ++i) {
    starters.emplace_back([&, i] {
      go.arrive_and_wait();
      results[i] = exec.start(this->source_);
    });
  }
  for (auto& t : starters) t.join();
  for (int i = 0; i < kStarters; ++i) EXPECT_OK(results[i]);
  // One epoch: no more than the executor's own threads were added. (LE, not EQ: the baseline
  // may still count a thread of an earlier test that is being reaped.)
  EXPECT_LE(settledThreadCount(baseline + TestFixture::Traits::kOwnThreads),
            baseline + TestFixture::Traits::kOwnThreads);
  this->spawnCaller();

  constexpr int kTasks = 20;
  std::array<std::atomic<int>, kTasks> runs{};
  std::mutex idsMutex;
  std::set<std::thread::id> ids;
  Events done;
  for (int i = 0; i < kTasks; ++i) {
    this->source_.push([&, i] {
      runs[i].fetch_add(1);
      {
        std::lock_guard<std::mutex> lock(idsMutex);
        ids.insert(std::this_thread::get_id());
      }
      done.add();
    });
  }
  ASSERT_TRUE(done.waitFor(kTasks, kLong));
  this->stopAndWait();
  for (int i = 0; i < kTasks; ++i) EXPECT_EQ(runs[i].load(), 1) << "task " << i;
  EXPECT_EQ(this->source_.queued(), 0u);
  if constexpr (std::is_same_v<TypeParam, ThreadPoolExecutor>) {
    EXPECT_LE(ids.size(), 3u);  // only the pool's threads (two task slots + the poller) ran tasks
  } else {
    EXPECT_EQ(ids.size(), 1u);  // one loop thread
  }
}

TYPED_TEST(ExecutorContractTest, SecondStartInTheSameEpochIsANoOp) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  const int running = threadCount();
  ASSERT_OK(exec.start(this->source_));
  ASSERT_OK(exec.start(this->source_));
  EXPECT_LE(settledThreadCount(running, 500ms), running);  // no second loop
  if constexpr (TestFixture::kBlocking) {
    EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);  // still the first execute()
  }
  std::atomic<int> runs{0};
  std::promise<void> ran;
  this->source_.push([&] {
    runs.fetch_add(1);
    ran.set_value();
  });
  auto f = ran.get_future();
  ASSERT_TRUE(readyWithin(f, kLong));
  // One stop() ends the one epoch.
  this->stopAndWait();
  EXPECT_EQ(runs.load(), 1);
}

// ----- stop() -----------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, StopIsIdempotentNonBlockingAndCallableFromAnyThread) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  Gate& gate = this->gate();
  std::promise<void> entered;
  std::atomic<bool> finished{false};
  this->source_.push([&] {
    entered.set_value();
    gate.wait();
    finished = true;
  });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));

  exec.stop();  // returns although a task is in flight (it cannot finish before the gate opens)
  exec.stop();
  std::promise<void> otherStopped;
  std::thread other([&] {
    exec.stop();
    otherStopped.set_value();
  });
  auto otherF = otherStopped.get_future();
  ASSERT_TRUE(readyWithin(otherF, kLong));
  other.join();
  EXPECT_FALSE(finished.load());  // every stop() returned while the task was still running
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);

  gate.open();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_TRUE(finished.load());
  exec.stop();  // after the epoch: still a no-op
  EXPECT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
}

TYPED_TEST(ExecutorContractTest, StopFromInsideATaskEndsTheEpoch) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  std::atomic<bool> stopReturned{false};
  this->source_.push([&] {
    exec.stop();
    stopReturned = true;
  });
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_TRUE(stopReturned.load());
  this->joinCallers();
  if constexpr (TestFixture::kBlocking) {
    ASSERT_EQ(this->callerResults_.size(), 1u);
    EXPECT_OK(this->callerResults_[0]);  // execute() returned after the task's stop()
  }
}

TYPED_TEST(ExecutorContractTest, StopBeforeStartIsHarmless) {
  auto& exec = *this->exec_;
  exec.stop();
  EXPECT_OK(exec.wait(deadlineAfter(kShort)));  // never started: at once
  ASSERT_NO_FATAL_FAILURE(this->startRunning());  // the early stop() did not stick
  std::promise<void> ran;
  this->source_.push([&] { ran.set_value(); });
  auto f = ran.get_future();
  ASSERT_TRUE(readyWithin(f, kLong));
  this->stopAndWait();
}

TYPED_TEST(ExecutorContractTest, StopRacingWithStartNeverHangs) {
  auto& exec = *this->exec_;
  for (int i = 0; i < 200; ++i) {
    std::latch go(2);
    Status started(StatusCode::kCancelled, "not run");
    std::thread starter([&] {
      go.arrive_and_wait();
      started = exec.start(this->source_);
    });
    std::thread stopper([&] {
      go.arrive_and_wait();
      exec.stop();
    });
    starter.join();
    stopper.join();
    ASSERT_OK(started) << " iteration " << i;
    // Blocking: execute() runs the epoch if the stop() came first, returns ok at once if the
    // epoch was stopped before it, or kInvalidState once that epoch has been waited for.
    std::promise<Status> executed;
    std::thread caller;
    if constexpr (TestFixture::kBlocking) {
      caller = std::thread([&] { executed.set_value(exec.execute()); });
    }
    // The stop() may have come first (a no-op); this one ends the epoch either way.
    exec.stop();
    const Status waited = exec.wait(deadlineAfter(kLong));
    if (!waited && caller.joinable()) caller.detach();  // stuck: fail instead of hanging
    ASSERT_OK(waited) << " iteration " << i;
    if (caller.joinable()) {
      caller.join();
      Status e = executed.get_future().get();
      EXPECT_TRUE(e.isOk() || e.code() == StatusCode::kInvalidState) << e;
    }
  }
}

// After stop() returns no task is taken. Deterministic form: stop() while the loop thread is busy
// in a timer (so it is not inside poll()); the task pushed after stop() stays in the source.
TYPED_TEST(ExecutorContractTest, NoTaskIsTakenAfterStopReturned) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  Gate& gate = this->gate();
  std::promise<void> entered;
  ASSERT_OK(exec.runAt(Clock::now(), [&] {
    entered.set_value();
    gate.wait();
  }));
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));  // the loop (pool: receiving) thread is in the timer
  exec.stop();
  std::atomic<bool> ran{false};
  this->source_.push([&] { ran = true; });
  gate.open();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
  EXPECT_FALSE(ran.load());
  EXPECT_EQ(this->source_.queued(), 1u);
}

// The same row with the loop idle inside TaskSource::poll(), where stop() races with the poll:
// stop() -> requestStop() interrupts the source and returns; the test pushes a task; the woken
// poll() may return the interrupt *and* that task (ManualTaskSource and InMemoryTransport both
// drain on an interrupt). Such a task must not run: it is still queued, or it was refused with
// kShuttingDown (which answers its sender). Regression: ReceiveLoop::run used to hand off a batch
// polled after requestStop() and run it (5-45% of epochs here, depending on the executor).
TYPED_TEST(ExecutorContractTest, NoTaskRunsAfterStopReturnedWhileTheLoopPolls) {
  auto& exec = *this->exec_;
  constexpr int kIterations = 300;
  int ranAfterStop = 0;
  int lost = 0;
  for (int i = 0; i < kIterations; ++i) {
    ASSERT_OK(this->start());
    // A probe notes the poll count when it runs on the loop thread; the loop is back in poll()
    // once the count grows. (The pool's receiver polls on while a worker runs the probe.)
    std::promise<int> probe;
    this->source_.push([&probe, this] { probe.set_value(this->source_.pollCount()); });
    auto probeF = probe.get_future();
    ASSERT_TRUE(readyWithin(probeF, kLong));
    const int polls = probeF.get();
    if constexpr (!std::is_same_v<TypeParam, ThreadPoolExecutor>) {
      const Deadline polling = deadlineAfter(kLong);
      while (this->source_.pollCount() <= polls && Clock::now() < polling) {
        std::this_thread::yield();
      }
    }
    exec.stop();
    auto ran = std::make_shared<std::atomic<bool>>(false);
    auto rejected = std::make_shared<std::atomic<int>>(0);
    this->source_.push([ran] { *ran = true; },
                       [rejected](Status why) {
                         rejected->fetch_add(why.code() == StatusCode::kShuttingDown ? 1 : 100);
                       });
    ASSERT_OK(exec.wait(deadlineAfter(kLong))) << " iteration " << i;
    this->joinCallers();
    const size_t queued = this->source_.queued();
    if (ran->load()) ++ranAfterStop;
    const bool stillQueued = queued == 1 && rejected->load() == 0;
    const bool refused = queued == 0 && rejected->load() == 1;
    if (!ran->load() && !stillQueued && !refused) ++lost;
    if (queued == 1) {  // run it in an epoch of its own, so the next iteration starts clean
      ASSERT_OK(this->start());
      std::promise<void> drained;
      this->source_.push([&drained] { drained.set_value(); });
      auto drainedF = drained.get_future();
      ASSERT_TRUE(readyWithin(drainedF, kLong));
      this->stopAndWait();
      ASSERT_EQ(this->source_.queued(), 0u);
    }
  }
  EXPECT_EQ(ranAfterStop, 0) << "of " << kIterations << " epochs ran a task after stop()";
  EXPECT_EQ(lost, 0) << "of " << kIterations << " epochs neither kept nor refused the task";
}

// ----- wait() -----------------------------------------------------------------------------------

// The seed regression (BlockingExecutor): wait() from another thread while execute() runs a slow
// handler returned before the handler had finished.
TYPED_TEST(ExecutorContractTest, WaitFromAnotherThreadReturnsOnlyAfterSlowHandler) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  Gate& gate = this->gate();
  std::promise<void> entered;
  std::atomic<bool> handlerDone{false};
  int sideEffect = 0;  // plain int: wait() must publish it
  this->source_.push([&] {
    entered.set_value();
    gate.wait();
    sideEffect = 42;
    handlerDone = true;
  });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));
  exec.stop();

  std::promise<bool> waiterSawDone;  // a waiter with no deadline, on yet another thread
  Status waiterStatus(StatusCode::kCancelled, "not run");
  std::thread waiter([&] {
    waiterStatus = exec.wait();
    waiterSawDone.set_value(handlerDone.load());
  });
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  EXPECT_FALSE(handlerDone.load());
  auto waiterF = waiterSawDone.get_future();
  EXPECT_EQ(waiterF.wait_for(0s), std::future_status::timeout);  // still waiting

  gate.open();
  ASSERT_TRUE(readyWithin(waiterF, kLong));
  EXPECT_TRUE(waiterF.get());  // wait() returned only after the handler had returned
  waiter.join();
  EXPECT_OK(waiterStatus);
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_EQ(sideEffect, 42);
  this->joinCallers();
}

TYPED_TEST(ExecutorContractTest, WaitFromInsideATaskWouldDeadlock) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  std::promise<std::pair<Status, Duration>> inner;
  this->source_.push([&] {
    const Deadline t0 = Clock::now();
    Status s = exec.wait(deadlineAfter(kLong));
    inner.set_value({s, Clock::now() - t0});
  });
  auto f = inner.get_future();
  ASSERT_TRUE(readyWithin(f, kLong));
  auto [s, took] = f.get();
  EXPECT_CODE(s, StatusCode::kWouldDeadlock);
  EXPECT_LT(took, 1s);  // at once, not at the deadline
  // Also after stop(), from a task still in flight while the epoch drains.
  Gate& gate = this->gate();
  std::promise<void> entered;
  std::promise<Status> afterStop;
  this->source_.push([&] {
    entered.set_value();
    gate.wait();
    afterStop.set_value(exec.wait(deadlineAfter(kLong)));
  });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));
  exec.stop();
  gate.open();
  auto afterStopF = afterStop.get_future();
  ASSERT_TRUE(readyWithin(afterStopF, kLong));
  EXPECT_CODE(afterStopF.get(), StatusCode::kWouldDeadlock);
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
}

TYPED_TEST(ExecutorContractTest, SeveralConcurrentWaitersAllReturnOkAfterStop) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  constexpr int kWaiters = 3;
  std::latch waiting(kWaiters);
  std::array<std::promise<Status>, kWaiters> results;
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      waiting.count_down();
      results[i].set_value(exec.wait(deadlineAfter(kLong)));
    });
  }
  waiting.wait();
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);  // not stopped
  std::array<std::future<Status>, kWaiters> futures;
  for (int i = 0; i < kWaiters; ++i) {
    futures[i] = results[i].get_future();
    EXPECT_EQ(futures[i].wait_for(0s), std::future_status::timeout) << "waiter " << i;
  }
  exec.stop();
  for (int i = 0; i < kWaiters; ++i) {
    ASSERT_TRUE(readyWithin(futures[i], kLong)) << "waiter " << i;
    EXPECT_OK(futures[i].get());
  }
  for (auto& w : waiters) w.join();
  this->joinCallers();
}

TYPED_TEST(ExecutorContractTest, WaitWithDeadlineWithoutStopTimesOut) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  const Deadline t0 = Clock::now();
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  EXPECT_GE(Clock::now() - t0, kShort);
  // The timed-out wait() changed nothing: tasks still run.
  std::promise<void> ran;
  this->source_.push([&] { ran.set_value(); });
  auto f = ran.get_future();
  ASSERT_TRUE(readyWithin(f, kLong));
  this->stopAndWait();
}

// ----- epochs -----------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, RestartRunsNewTasksAndCompletedEpochsBehave) {
  auto& exec = *this->exec_;
  std::vector<int> ranInEpoch;  // written by tasks, read after wait()
  for (int epoch = 0; epoch < 3; ++epoch) {
    ASSERT_OK(this->start());
    std::promise<void> ran;
    this->source_.push([&, epoch] {
      ranInEpoch.push_back(epoch);
      ran.set_value();
    });
    auto f = ran.get_future();
    ASSERT_TRUE(readyWithin(f, kLong)) << "epoch " << epoch;
    this->stopAndWait();
    // A completed epoch: wait() at once, stop() a no-op, no timers, no work guards.
    EXPECT_OK(exec.wait(deadlineAfter(kShort)));
    exec.stop();
    EXPECT_OK(exec.wait(deadlineAfter(kShort)));
    EXPECT_CODE(exec.runAt(deadlineAfter(1ms), [] {}), StatusCode::kShuttingDown);
    EXPECT_FALSE(exec.acquireWork().holdsWork());
    EXPECT_FALSE(exec.isExecutorThread());
  }
  EXPECT_EQ(ranInEpoch, (std::vector<int>{0, 1, 2}));

  // A task pushed between epochs waits in the source for the next one.
  std::promise<void> late;
  this->source_.push([&] { late.set_value(); });
  auto lateF = late.get_future();
  EXPECT_EQ(lateF.wait_for(kShort), std::future_status::timeout);
  EXPECT_EQ(this->source_.queued(), 1u);
  ASSERT_OK(this->start());
  ASSERT_TRUE(readyWithin(lateF, kLong));
  this->stopAndWait();
}

TYPED_TEST(ExecutorContractTest, StartAfterStopWithoutWaitFinishesThePreviousEpochFirst) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  Gate& gate = this->gate();
  std::promise<void> entered;
  std::atomic<bool> firstDone{false};
  this->source_.push([&] {
    entered.set_value();
    gate.wait();
    firstDone = true;
  });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));
  exec.stop();

  std::promise<std::pair<Status, bool>> restarted;  // start()'s result, firstDone at return
  std::thread starter([&] {
    Status s = exec.start(this->source_);
    restarted.set_value({s, firstDone.load()});
  });
  auto f = restarted.get_future();
  EXPECT_EQ(f.wait_for(kShort), std::future_status::timeout);  // finishing the first epoch
  gate.open();
  ASSERT_TRUE(readyWithin(f, kLong));
  starter.join();
  auto [s, doneAtReturn] = f.get();
  ASSERT_OK(s);
  EXPECT_TRUE(doneAtReturn);  // the first epoch's task finished before start() returned
  this->joinCallers();        // the first epoch's execute() has returned
  this->spawnCaller();

  std::promise<bool> second;  // the new epoch runs
  this->source_.push([&] { second.set_value(exec.isExecutorThread()); });
  auto secondF = second.get_future();
  ASSERT_TRUE(readyWithin(secondF, kLong));
  EXPECT_TRUE(secondF.get());
  this->stopAndWait();
}

TYPED_TEST(ExecutorContractTest, FiftyStartStopCyclesWithoutWaitLeakNoThread) {
  auto& exec = *this->exec_;
  const int baseline = threadCount();
  // The executor's threads, plus the blocking executor's caller thread.
  const int perEpoch = TestFixture::Traits::kOwnThreads + (TestFixture::kBlocking ? 1 : 0);
  int most = baseline;
  for (int cycle = 0; cycle < 50; ++cycle) {
    Status s = exec.start(this->source_);  // finishes the previous epoch first
    ASSERT_OK(s) << " cycle " << cycle;
    this->joinCallers();  // the previous epoch's execute() has returned
    this->spawnCaller();
    std::promise<void> ran;
    this->source_.push([&] { ran.set_value(); });
    auto f = ran.get_future();
    ASSERT_TRUE(readyWithin(f, kLong)) << "cycle " << cycle;
    most = std::max(most, settledThreadCount(baseline + perEpoch, 500ms));
    exec.stop();
  }
  EXPECT_LE(most, baseline + perEpoch);
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
  EXPECT_LE(settledThreadCount(baseline), baseline);
  for (const Status& r : this->callerResults_) EXPECT_OK(r);
}

// ----- work guards ------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, WorkGuardKeepsTheEpochOpenUntilReleased) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  WorkGuard guard = this->guardTakenByATask();  // the task has returned; its deferred work has not
  ASSERT_TRUE(guard.holdsWork());
  exec.stop();
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  guard.reset();  // from the test thread
  EXPECT_FALSE(guard.holdsWork());
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
}

// Guards taken and released on several threads at once, while another is live (they take no
// lock then), keep a stopped epoch open until the last of them goes, wherever it goes.
TYPED_TEST(ExecutorContractTest, WorkGuardsOnManyThreadsKeepTheEpochOpenUntilTheLastGoes) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  WorkGuard first = this->guardTakenByATask();
  ASSERT_TRUE(first.holdsWork());
  exec.stop();
  constexpr size_t kThreads = 4;
  constexpr int kRounds = 5000;
  std::atomic<int> empty{0};
  std::vector<WorkGuard> kept(kThreads);  // each thread's last guard, released later
  {
    std::latch go(kThreads);
    std::vector<std::jthread> takers;
    for (size_t i = 0; i < kThreads; ++i) {
      takers.emplace_back([&, i] {
        go.arrive_and_wait();
        for (int round = 0; round < kRounds; ++round) {
          if (!exec.acquireWork().holdsWork()) empty.fetch_add(1);
        }
        kept[i] = exec.acquireWork();
        if (!kept[i].holdsWork()) empty.fetch_add(1);
      });
    }
  }
  EXPECT_EQ(empty.load(), 0);
  first.reset();
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);  // the kept ones hold it
  {
    std::latch go(kThreads);
    std::vector<std::jthread> releasers;
    for (WorkGuard& guard : kept) {
      releasers.emplace_back([&go, &guard] {
        go.arrive_and_wait();
        guard.reset();
      });
    }
  }
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
}

TYPED_TEST(ExecutorContractTest, AcquireWorkWhenNotRunningIsEmpty) {
  auto& exec = *this->exec_;
  EXPECT_FALSE(exec.acquireWork().holdsWork());  // never started
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  {
    WorkGuard running = exec.acquireWork();
    EXPECT_TRUE(running.holdsWork());
  }
  this->stopAndWait();
  EXPECT_FALSE(exec.acquireWork().holdsWork());  // epoch completed
}

// ----- timers -----------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, RunAtRunsOnAnExecutorThreadAtOrAfterItsTime) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  struct Seen {
    bool onExecutorThread;
    Deadline at;
    Status waitInside;
  };
  std::promise<Seen> fired;
  const Deadline when = deadlineAfter(10ms);
  ASSERT_OK(exec.runAt(when, [&] {
    fired.set_value({exec.isExecutorThread(), Clock::now(), exec.wait(deadlineAfter(kLong))});
  }));
  auto f = fired.get_future();
  ASSERT_TRUE(readyWithin(f, kLong));
  Seen seen = f.get();
  EXPECT_TRUE(seen.onExecutorThread);
  EXPECT_GE(seen.at, when);
  EXPECT_CODE(seen.waitInside, StatusCode::kWouldDeadlock);
  this->stopAndWait();
}

// runAt() is accepted from start() until the epoch's loop ends; kShuttingDown outside that, and
// a refused function is destroyed, not kept or run.
TYPED_TEST(ExecutorContractTest, RunAtWhenNotRunningIsShuttingDown) {
  auto& exec = *this->exec_;
  std::atomic<bool> ran{false};
  std::atomic<bool> destroyed{false};
  {
    auto flag = std::make_shared<DestroyFlag>(&destroyed);
    EXPECT_CODE(exec.runAt(Clock::now(), [flag, &ran] { ran = true; }),
                StatusCode::kShuttingDown);  // never started
  }
  EXPECT_TRUE(destroyed.load());
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  this->stopAndWait();  // the loop has ended
  destroyed = false;
  {
    auto flag = std::make_shared<DestroyFlag>(&destroyed);
    EXPECT_CODE(exec.runAt(Clock::now(), [flag, &ran] { ran = true; }),
                StatusCode::kShuttingDown);
  }
  EXPECT_TRUE(destroyed.load());
  EXPECT_FALSE(ran.load());
}

// While a stopped epoch drains (a work guard is held), in-flight work may still schedule timers;
// they run on an executor thread, and the loop ends once the guard is gone.
TYPED_TEST(ExecutorContractTest, RunAtAfterStopWhileDrainingIsAccepted) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  WorkGuard guard = this->guardTakenByATask();
  ASSERT_TRUE(guard.holdsWork());
  exec.stop();
  std::promise<bool> fired;
  ASSERT_OK(exec.runAt(Clock::now(), [&] { fired.set_value(exec.isExecutorThread()); }));
  auto firedF = fired.get_future();
  ASSERT_TRUE(readyWithin(firedF, kLong));
  EXPECT_TRUE(firedF.get());
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);  // the guard holds it
  guard.reset();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  this->joinCallers();
  EXPECT_CODE(exec.runAt(Clock::now(), [] {}), StatusCode::kShuttingDown);
}

TYPED_TEST(ExecutorContractTest, PendingTimersAreDestroyedNotRunWhenTheLoopEnds) {
  auto& exec = *this->exec_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  std::atomic<bool> ran{false};
  std::atomic<bool> destroyed{false};
  {
    auto flag = std::make_shared<DestroyFlag>(&destroyed);
    ASSERT_OK(exec.runAt(deadlineAfter(std::chrono::hours(1)), [flag, &ran] { ran = true; }));
  }
  EXPECT_FALSE(destroyed.load());  // pending: the executor holds it
  this->stopAndWait();
  EXPECT_TRUE(destroyed.load());
  EXPECT_FALSE(ran.load());
}

// ----- hang warning -----------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, HangWarningIsLoggedOnceEvenWithTwoWaiters) {
  this->exec_ = this->make(this->options(20ms));
  auto& exec = *this->exec_;
  auto& log = *this->log_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  Gate& gate = this->gate();
  std::promise<void> entered;
  this->source_.push([&] {
    entered.set_value();
    gate.wait();
  });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));
  exec.stop();

  std::latch waiting(2);
  std::array<std::promise<Status>, 2> results;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 2; ++i) {
    waiters.emplace_back([&, i] {
      waiting.count_down();
      results[i].set_value(exec.wait(deadlineAfter(kLong)));
    });
  }
  waiting.wait();
  ASSERT_TRUE(log.waitFor(LogLevel::kWarning, "possible hang", kLong)) << log.dump();
  // A third waiter past its own warning time: the epoch's one warning was already logged.
  EXPECT_CODE(exec.wait(deadlineAfter(5 * kShort)), StatusCode::kTimeout);
  EXPECT_EQ(log.count(LogLevel::kWarning, "possible hang"), 1) << log.dump();
  gate.open();
  for (int i = 0; i < 2; ++i) {
    auto f = results[i].get_future();
    ASSERT_TRUE(readyWithin(f, kLong)) << "waiter " << i;
    EXPECT_OK(f.get());
  }
  for (auto& w : waiters) w.join();
  EXPECT_EQ(log.count(LogLevel::kWarning, "possible hang"), 1) << log.dump();
  EXPECT_EQ(log.count(LogLevel::kWarning), 1) << log.dump();
  this->joinCallers();
}

// ----- destructor -------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, DestroyingAStartedIdleExecutorReturns) {
  ASSERT_NO_FATAL_FAILURE(this->startRunning());  // blocking: the caller is inside execute()
  std::promise<void> destroyed;
  std::thread destroyer([&] {
    this->exec_.reset();  // stop() + wait()
    destroyed.set_value();
  });
  auto f = destroyed.get_future();
  const bool returned = readyWithin(f, kLong);
  if (!returned) destroyer.detach();  // do not hang the suite
  ASSERT_TRUE(returned) << "the destructor hangs";
  destroyer.join();
  this->joinCallers();  // the blocking executor's execute() returned ok
  for (const Status& r : this->callerResults_) EXPECT_OK(r);
}

TYPED_TEST(ExecutorContractTest, DestructorWaitsForADeferredWorkGuard) {
  this->exec_ = this->make(this->options(20ms));
  auto& log = *this->log_;
  ASSERT_NO_FATAL_FAILURE(this->startRunning());
  std::promise<WorkGuard> acquired;
  auto* exec = this->exec_.get();
  this->source_.push([&acquired, exec] { acquired.set_value(exec->acquireWork()); });
  auto acquiredF = acquired.get_future();
  ASSERT_TRUE(readyWithin(acquiredF, kLong));
  WorkGuard guard = acquiredF.get();
  ASSERT_TRUE(guard.holdsWork());

  std::latch destroying(1);
  std::atomic<bool> released{false};
  bool sawWarningBeforeRelease = false;
  std::thread releaser([&] {
    destroying.wait();
    // The destructor's wait() logs its hang warning while it waits for this guard.
    sawWarningBeforeRelease = log.waitFor(LogLevel::kWarning, "possible hang", kLong);
    released = true;
    guard.reset();
  });
  destroying.count_down();
  this->exec_.reset();  // stop() + wait(): returns only once the guard is released
  EXPECT_TRUE(released.load());
  releaser.join();
  EXPECT_TRUE(sawWarningBeforeRelease) << log.dump();
  this->joinCallers();
}

// ----- stress -----------------------------------------------------------------------------------

TYPED_TEST(ExecutorContractTest, ThousandStartStopWaitCyclesRacingFromThreeThreads) {
  auto& exec = *this->exec_;
  constexpr int kThreads = 3;
  constexpr int kPerThread = 334;  // ~1,000 cycles in all
  constexpr int kTasks = kThreads * kPerThread;
  std::vector<std::atomic<int>> runs(kTasks);
  std::vector<std::atomic<int>> rejects(kTasks);  // refused kShuttingDown by a racing stop()
  std::atomic<int> startFailures{0};
  std::atomic<int> waitFailures{0};
  std::atomic<int> badRejects{0};
  std::atomic<bool> finished{false};
  std::atomic<int> executed{0};
  std::atomic<int> unexpectedExecute{0};
  constexpr bool kIsBlocking = TestFixture::kBlocking;
  std::latch go(kThreads + (kIsBlocking ? 1 : 0));

  // Blocking: a dedicated caller thread executes whenever an epoch is armed (kInvalidState when
  // none is). Bounded by a count as well as by the stop flag.
  std::thread caller;
  if constexpr (kIsBlocking) {
    caller = std::thread([&] {
      go.arrive_and_wait();
      for (long attempt = 0; attempt < 50'000'000 && !finished.load(); ++attempt) {
        Status s = exec.execute();
        if (s) {
          executed.fetch_add(1);
        } else if (s.code() != StatusCode::kInvalidState) {
          unexpectedExecute.fetch_add(1);
        }
        std::this_thread::yield();
      }
    });
  }

  std::vector<std::thread> cyclers;
  for (int t = 0; t < kThreads; ++t) {
    cyclers.emplace_back([&, t] {
      go.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        if (!exec.start(this->source_)) startFailures.fetch_add(1);
        const int id = t * kPerThread + i;
        this->source_.push([&runs, id] { runs[id].fetch_add(1); },
                           [&rejects, &badRejects, id](Status why) {
                             rejects[id].fetch_add(1);
                             if (why.code() != StatusCode::kShuttingDown) badRejects.fetch_add(1);
                           });
        if (kIsBlocking) std::this_thread::yield();  // give the caller a chance at this epoch
        exec.stop();
        if (!exec.wait(deadlineAfter(kLong))) waitFailures.fetch_add(1);
      }
    });
  }
  for (auto& c : cyclers) c.join();
  exec.stop();
  EXPECT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_EQ(startFailures.load(), 0);
  EXPECT_EQ(waitFailures.load(), 0);
  EXPECT_EQ(badRejects.load(), 0);

  // No task got two outcomes; the ones with none are still queued.
  int outcomes = 0;
  for (int i = 0; i < kTasks; ++i) {
    EXPECT_LE(runs[i].load() + rejects[i].load(), 1) << "task " << i;
    outcomes += runs[i].load() + rejects[i].load();
  }
  EXPECT_EQ(outcomes + static_cast<int>(this->source_.queued()), kTasks);

  // A last epoch runs what is left (blocking: on the dedicated caller thread) and the test ends
  // with a final stop() + wait().
  std::promise<void> drained;
  if constexpr (kIsBlocking) {
    ASSERT_OK(exec.start(this->source_));
  } else {
    ASSERT_OK(this->start());
  }
  this->source_.push([&] { drained.set_value(); });
  auto f = drained.get_future();
  const bool drainedInTime = readyWithin(f, kLong);
  exec.stop();
  EXPECT_OK(exec.wait(deadlineAfter(kLong)));
  finished = true;
  if (caller.joinable()) caller.join();
  ASSERT_TRUE(drainedInTime);
  EXPECT_EQ(unexpectedExecute.load(), 0);
  if constexpr (kIsBlocking) {
    EXPECT_GT(executed.load(), 0);  // at least the last epoch ran on the caller thread
  }
  for (int i = 0; i < kTasks; ++i) {
    EXPECT_EQ(runs[i].load() + rejects[i].load(), 1) << "task " << i;
  }
  EXPECT_EQ(this->source_.queued(), 0u);
}

// ----- blocking executor only -------------------------------------------------------------------

// A WorkGuard taken after start() but before execute() keeps the epoch open when stop() comes
// before execute(). Regression: finishWithoutRunning() used to mark the epoch done whatever the
// outstanding count, so wait() returned ok while the guard lived, the count then held the *next*
// epoch open, and destroying the executor left the guard pointing at a freed ReceiveLoop.
TEST(BlockingExecutorTest, WaitWaitsForAGuardAcquiredBeforeExecute) {
  LogCapture log;
  ExecutorOptions o;
  o.log = log.sink();
  ManualTaskSource source;
  BlockingExecutor exec(o);
  ASSERT_OK(exec.start(source));
  WorkGuard guard = exec.acquireWork();
  ASSERT_TRUE(guard.holdsWork());  // started, so running: the guard is real
  exec.stop();                     // before any execute()
  EXPECT_CODE(exec.wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  EXPECT_OK(exec.execute());  // skipped epoch: returns at once
  guard.reset();
  EXPECT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_CODE(exec.execute(), StatusCode::kInvalidState);  // the epoch is over

  // The next epoch is not held by anything of the previous one.
  ASSERT_OK(exec.start(source));
  std::promise<Status> executed;
  std::thread caller([&] { executed.set_value(exec.execute()); });
  std::promise<void> ran;
  source.push([&] { ran.set_value(); });
  auto ranF = ran.get_future();
  EXPECT_TRUE(readyWithin(ranF, kLong));
  exec.stop();
  EXPECT_OK(exec.wait(deadlineAfter(kLong)));
  caller.join();
  EXPECT_OK(executed.get_future().get());
}

// ----- thread pool only -------------------------------------------------------------------------

struct Outcome {
  std::atomic<int> runs{0};
  std::atomic<int> rejects{0};
  std::atomic<int> overloaded{0};
};

TEST(ThreadPoolExecutorTest, ExcessTasksAreRejectedOverloadedAtTheInFlightLimit) {
  LogCapture log;
  ThreadPoolExecutor::Options o;
  o.log = log.sink();
  o.threads = 1;
  o.queueCapacity = 1;
  o.maxInFlight = 2;
  ManualTaskSource source;
  ThreadPoolExecutor exec(o);
  ASSERT_OK(exec.start(source));
  const uint64_t rejectedBefore = exec.stats().rejected;

  constexpr int kTasks = 5;
  std::array<Outcome, kTasks> out;
  Events rejected;
  Events ran;
  Gate gate;
  std::promise<void> entered;
  auto reject = [&](int i) {
    return [&, i](Status why) {
      out[i].rejects.fetch_add(1);
      if (why.code() == StatusCode::kOverloaded) out[i].overloaded.fetch_add(1);
      rejected.add();
    };
  };
  source.push(
      [&] {
        out[0].runs.fetch_add(1);
        entered.set_value();
        gate.wait();
        ran.add();
      },
      reject(0));
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));  // the only worker is busy: 1 in flight
  for (int i = 1; i < kTasks; ++i) {
    source.push(
        [&, i] {
          out[i].runs.fetch_add(1);
          ran.add();
        },
        reject(i));
  }
  // Task 1 is admitted (2 in flight, queued); tasks 2..4 exceed maxInFlight.
  ASSERT_TRUE(rejected.waitFor(kTasks - 2, kLong));
  EXPECT_EQ(exec.stats().rejected, rejectedBefore + (kTasks - 2));
  EXPECT_EQ(out[1].runs.load(), 0);  // admitted, waiting for the worker
  gate.open();
  ASSERT_TRUE(ran.waitFor(2, kLong));
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_EQ(out[0].runs.load(), 1);
  EXPECT_EQ(out[1].runs.load(), 1);
  for (int i = 0; i < kTasks; ++i) {
    EXPECT_EQ(out[i].runs.load() + out[i].rejects.load(), 1) << "task " << i;
    if (i >= 2) {
      EXPECT_EQ(out[i].overloaded.load(), 1) << "task " << i;
    }
  }
  EXPECT_EQ(rejected.count(), kTasks - 2);
  EXPECT_EQ(exec.stats().rejected, rejectedBefore + (kTasks - 2));
}

// A task that answers inside run() frees its in-flight slot then (Task::releaseSlot), not when
// run() returns: at maxInFlight 1, the task polled next is run while the first still runs.
TEST(ThreadPoolExecutorTest, ATaskThatReleasedItsSlotLetsTheNextOneIn) {
  class AnsweringTask final : public Task {
   public:
    AnsweringTask(std::promise<void>& answered, Gate& mayReturn)
        : answered_(answered), mayReturn_(mayReturn) {}
    void run() noexcept override {
      releaseSlot();  // as a server's task does just before its reply goes
      answered_.set_value();
      mayReturn_.wait();
    }
    void reject(Status) noexcept override { ADD_FAILURE() << "the first task is admitted"; }

   private:
    std::promise<void>& answered_;
    Gate& mayReturn_;
  };
  Gate mayReturn;  // declared before the pool, which joins the thread that waits on it
  std::promise<void> answered;
  std::promise<bool> nextRan;  // true: run; false: rejected
  ThreadPoolExecutor::Options o;
  o.threads = 2;
  o.maxInFlight = 1;
  ManualTaskSource source;
  ThreadPoolExecutor exec(o);
  ASSERT_OK(exec.start(source));
  source.push(std::make_unique<AnsweringTask>(answered, mayReturn));
  auto answeredF = answered.get_future();
  ASSERT_TRUE(readyWithin(answeredF, kLong));
  source.push([&] { nextRan.set_value(true); }, [&](Status) { nextRan.set_value(false); });
  auto nextRanF = nextRan.get_future();
  const bool decided = readyWithin(nextRanF, kLong);
  mayReturn.open();
  ASSERT_TRUE(decided);
  EXPECT_TRUE(nextRanF.get()) << "refused although the first task had freed its slot";
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_EQ(exec.stats().rejected, 0u);
}

TEST(ThreadPoolExecutorTest, TasksBeyondTheQueueCapacityAreRejectedOverloaded) {
  LogCapture log;
  ThreadPoolExecutor::Options o;
  o.log = log.sink();
  o.threads = 1;
  o.queueCapacity = 1;
  o.maxInFlight = 100;
  ManualTaskSource source;
  ThreadPoolExecutor exec(o);
  ASSERT_OK(exec.start(source));

  constexpr int kTasks = 4;
  std::array<Outcome, kTasks> out;
  Events rejected;
  Events ran;
  Gate gate;
  std::promise<void> entered;
  for (int i = 0; i < kTasks; ++i) {
    source.push(
        [&, i] {
          out[i].runs.fetch_add(1);
          if (i == 0) {
            entered.set_value();
            gate.wait();
          }
          ran.add();
        },
        [&, i](Status why) {
          out[i].rejects.fetch_add(1);
          if (why.code() == StatusCode::kOverloaded) out[i].overloaded.fetch_add(1);
          rejected.add();
        });
    if (i == 0) {
      auto enteredF = entered.get_future();
      ASSERT_TRUE(readyWithin(enteredF, kLong));
    }
  }
  // Task 1 takes the one queue slot; tasks 2 and 3 find the queue full.
  ASSERT_TRUE(rejected.waitFor(2, kLong));
  EXPECT_EQ(exec.stats().rejected, 2u);
  gate.open();
  ASSERT_TRUE(ran.waitFor(2, kLong));
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  for (int i = 0; i < kTasks; ++i) {
    EXPECT_EQ(out[i].runs.load() + out[i].rejects.load(), 1) << "task " << i;
    EXPECT_EQ(out[i].runs.load(), i < 2 ? 1 : 0) << "task " << i;
    EXPECT_EQ(out[i].overloaded.load(), i < 2 ? 0 : 1) << "task " << i;
  }
}

// Records which thread's poll() returned the last tasks (the pool's leader at that moment).
class PollerRecordingSource final : public TaskSource {
 public:
  Status poll(Deadline deadline, std::vector<TaskPtr>& out) override {
    const size_t before = out.size();
    Status polled = inner.poll(deadline, out);
    if (out.size() > before) lastPoller.store(std::this_thread::get_id());
    for (size_t i = before; i < out.size(); ++i) taken.add();
    return polled;
  }
  void interrupt() override { inner.interrupt(); }

  ManualTaskSource inner;
  std::atomic<std::thread::id> lastPoller;
  Events taken;  // tasks handed to the executor
};

TEST(ThreadPoolExecutorTest, AnIdlePoolRunsATaskOnTheThreadThatPolledIt) {
  // Leader/follower: with a pool thread idle, the leader passes the lead on and runs the task
  // itself instead of handing it over. Whether a thread is idle yet right after a task is not
  // observable, so the test tries up to 100 tasks one after another and needs one run by its
  // poller; a pool that always hands tasks over never has one.
  ThreadPoolExecutor::Options o;
  o.threads = 2;
  PollerRecordingSource source;
  ThreadPoolExecutor exec(o);
  ASSERT_OK(exec.start(source));
  int ranOnPoller = 0;
  for (int i = 0; i < 100 && ranOnPoller == 0; ++i) {
    std::promise<bool> ran;
    source.inner.push([&] { ran.set_value(source.lastPoller.load() == std::this_thread::get_id()); });
    auto ranF = ran.get_future();
    ASSERT_TRUE(readyWithin(ranF, kLong));
    if (ranF.get()) ++ranOnPoller;
  }
  EXPECT_EQ(ranOnPoller, 1);
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
}

TEST(ThreadPoolExecutorTest, AThreadKeepsPollingWhileEveryOtherRunsATask) {
  // The lead is passed on only to an idle thread: with every other thread blocked in a task, the
  // leader keeps polling, so new tasks are still taken (and queued) and timers still run.
  ThreadPoolExecutor::Options o;
  o.threads = 2;
  PollerRecordingSource source;
  ThreadPoolExecutor exec(o);
  ASSERT_OK(exec.start(source));
  Gate gate;
  Events entered;
  for (int i = 0; i < 2; ++i) {
    source.inner.push([&] {
      entered.add();
      gate.wait();
    });
  }
  ASSERT_TRUE(entered.waitFor(2, kLong));  // both task slots are blocked
  std::promise<void> timerRan;
  ASSERT_OK(exec.runAt(Clock::now(), [&] { timerRan.set_value(); }));
  auto timerF = timerRan.get_future();
  EXPECT_TRUE(readyWithin(timerF, kLong)) << "no thread was left polling";
  std::promise<void> queuedRan;
  source.inner.push([&] { queuedRan.set_value(); });
  ASSERT_TRUE(source.taken.waitFor(3, kLong)) << "the third task was not taken while the others ran";
  gate.open();
  auto queuedF = queuedRan.get_future();
  EXPECT_TRUE(readyWithin(queuedF, kLong));
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
}

// Waits until `threads` pool threads are asleep; polls the executor's stats, bounded.
bool idleWithin(const ThreadPoolExecutor& exec, size_t threads, Duration d = kLong) {
  const Deadline deadline = deadlineAfter(d);
  while (exec.stats().idle != threads) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// A started pool of `threads` task threads (and its leader) that wakes another thread for a
// task that waited `patience`, once its other threads sleep.
std::unique_ptr<ThreadPoolExecutor> startIdlePool(
    TaskSource& source, Duration patience,
    Duration takeLeadAfter = ThreadPoolExecutor::Options{}.takeLeadAfter, size_t threads = 4) {
  ThreadPoolExecutor::Options o;
  o.threads = threads;
  o.wakeAnotherAfter = patience;
  o.takeLeadAfter = takeLeadAfter;
  auto exec = std::make_unique<ThreadPoolExecutor>(o);
  EXPECT_OK(exec->start(source));
  EXPECT_TRUE(idleWithin(*exec, threads));
  return exec;
}

TEST(ThreadPoolExecutorTest, ABatchNobodyDrainsRunsOnItsPollerWhileItsTasksAreNotOverdue) {
  // The leader drains a queued batch itself, the lead kept: no task is handed over, and the only
  // thread woken is the watcher, whose sleep gets its deadline (here: one hour). Another thread
  // is woken only for a task that waited wakeAnotherAfter (here: never).
  PollerRecordingSource source;
  auto pool = startIdlePool(source, std::chrono::hours(1), std::chrono::hours(1));
  ThreadPoolExecutor& exec = *pool;
  const uint64_t wakeupsBefore = exec.stats().wakeups;

  constexpr int kTasks = 8;
  Gate gate;
  std::promise<void> firstEntered;
  Events ran;
  std::mutex idsMutex;
  std::set<std::thread::id> ranOn;
  std::vector<std::function<void()>> batch;
  for (int i = 0; i < kTasks; ++i) {
    batch.emplace_back([&, i] {
      {
        std::lock_guard<std::mutex> lock(idsMutex);
        ranOn.insert(std::this_thread::get_id());
      }
      if (i == 0) {
        firstEntered.set_value();
        gate.wait();
      }
      ran.add();
    });
  }
  source.inner.pushBatch(std::move(batch));
  auto enteredF = firstEntered.get_future();
  ASSERT_TRUE(readyWithin(enteredF, kLong));
  EXPECT_FALSE(ran.waitFor(1, kShort)) << "another thread was woken for the batch";
  EXPECT_EQ(exec.stats().wakeups, wakeupsBefore + 1);  // the watcher's sleep got its deadline
  gate.open();
  ASSERT_TRUE(ran.waitFor(kTasks, kLong));
  EXPECT_EQ(ranOn, std::set<std::thread::id>{source.lastPoller.load()});
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
}

TEST(ThreadPoolExecutorTest, ALeaderHeldByOneTaskLosesTheLeadToTheWatcher) {
  // The leader blocks in the first task of a batch it drains; the watcher takes the lead after
  // takeLeadAfter, so a timer still runs and a task sent later is still polled and run. No task
  // is overdue (wakeAnotherAfter: one hour), so only the lead's passing lets them through.
  PollerRecordingSource source;
  auto pool = startIdlePool(source, std::chrono::hours(1), std::chrono::milliseconds(1), 2);
  ThreadPoolExecutor& exec = *pool;
  Gate gate;
  std::promise<std::thread::id> blocked;
  Events ran;
  std::vector<std::function<void()>> batch;
  batch.emplace_back([&] {
    blocked.set_value(std::this_thread::get_id());
    gate.wait();
  });
  batch.emplace_back([&] { ran.add(); });
  source.inner.pushBatch(std::move(batch));
  auto blockedF = blocked.get_future();
  ASSERT_TRUE(readyWithin(blockedF, kLong));
  const std::thread::id heldLeader = blockedF.get();
  EXPECT_EQ(heldLeader, source.lastPoller.load());  // the batch ran on its poller
  std::promise<void> timerRan;
  ASSERT_OK(exec.runAt(Clock::now(), [&] { timerRan.set_value(); }));
  auto timerF = timerRan.get_future();
  EXPECT_TRUE(readyWithin(timerF, kLong)) << "nobody led while the leader ran a task";
  std::promise<std::thread::id> laterRan;
  source.inner.push([&] { laterRan.set_value(std::this_thread::get_id()); });
  auto laterF = laterRan.get_future();
  ASSERT_TRUE(readyWithin(laterF, kLong)) << "nobody polled while the leader ran a task";
  EXPECT_NE(laterF.get(), heldLeader);
  gate.open();
  EXPECT_TRUE(ran.waitFor(1, kLong));  // the rest of the held batch runs too
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
}

TEST(ThreadPoolExecutorTest, ALeaderDrainingALongBatchStillPollsEveryWatchPeriod) {
  // 1000 tasks of 10 us each (within the queue's capacity), all drained by the leader (no task
  // is overdue, and the watcher sees progress): the leader still takes a turn of the loop every
  // takeLeadAfter, so a timer due at once runs before the batch is done. Without that bound it
  // runs after the last task.
  PollerRecordingSource source;
  auto pool = startIdlePool(source, std::chrono::hours(1), std::chrono::milliseconds(1), 1);
  ThreadPoolExecutor& exec = *pool;
  constexpr int kTasks = 1000;
  std::atomic<int> ran{0};
  std::promise<void> started;
  std::vector<std::function<void()>> batch;
  for (int i = 0; i < kTasks; ++i) {
    batch.emplace_back([&, i] {
      if (i == 0) started.set_value();
      const Deadline busyUntil = deadlineAfter(std::chrono::microseconds(10));
      while (Clock::now() < busyUntil) {
      }
      ran.fetch_add(1);
    });
  }
  source.inner.pushBatch(std::move(batch));
  auto startedF = started.get_future();
  ASSERT_TRUE(readyWithin(startedF, kLong));
  std::promise<int> ranAtTimer;
  ASSERT_OK(exec.runAt(Clock::now(), [&] { ranAtTimer.set_value(ran.load()); }));
  auto timerF = ranAtTimer.get_future();
  ASSERT_TRUE(readyWithin(timerF, kLong));
  EXPECT_LT(timerF.get(), kTasks) << "the leader ran the whole batch before its next turn";
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_EQ(ran.load(), kTasks);
}

TEST(ThreadPoolExecutorTest, TasksQueuedBehindABlockedTaskGetAThreadOnceOverdue) {
  // Four tasks of one batch that can finish only together: the leader, draining the batch,
  // blocks in the first; the others run only because the watcher takes the lead, its poll ends
  // at once since the oldest queued task is overdue, and it wakes a thread, which wakes the next
  // for the task after it.
  ManualTaskSource source;
  auto pool = startIdlePool(source, std::chrono::milliseconds(1));
  ThreadPoolExecutor& exec = *pool;

  constexpr int kTasks = 4;
  Events arrived;
  std::atomic<int> metAll{0};
  std::vector<std::function<void()>> batch;
  for (int i = 0; i < kTasks; ++i) {
    batch.emplace_back([&] {
      arrived.add();
      if (arrived.waitFor(kTasks, kLong)) metAll.fetch_add(1);
    });
  }
  source.pushBatch(std::move(batch));
  ASSERT_TRUE(arrived.waitFor(kTasks, kLong)) << "a queued task was left behind a blocked one";
  exec.stop();
  ASSERT_OK(exec.wait(deadlineAfter(kLong)));
  EXPECT_EQ(metAll.load(), kTasks);
}

}  // namespace
}  // namespace switchboard
