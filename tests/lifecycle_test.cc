// Lifecycle, the state machine under every executor and the server, driven through its hooks:
// epochs, failed starts, waits, deadlock detection, the hang warning, and a late stop hook.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <string>
#include <utility>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "executors/lifecycle.h"
#include "tests/support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::Gate;
using testing::LogCapture;
using testing::readyWithin;

// A Lifecycle whose hooks record what they were asked to do.
struct Recorder {
  std::atomic<int> starts{0}, stops{0}, finishes{0};
  std::atomic<bool> owns{false};
  std::atomic<bool> finishOk{true};
  std::mutex mutex;
  std::vector<std::string> events;  // guarded by mutex: "start", "stop ends", in order
  LogCapture log;                   // what the Lifecycle logs
  std::function<void()> onStop;     // extra behaviour, set before use

  Lifecycle make(Duration hangWarningAfter = 10s) {
    Lifecycle::Options options;
    options.component = "test";
    options.hangWarningAfter = hangWarningAfter;
    options.log = log.sink();
    return Lifecycle(
        options,
        [this] {
          ++stops;
          if (onStop) onStop();
          record("stop ends");
        },
        [this](Deadline) {
          ++finishes;
          return finishOk.load() ? Status::ok() : Status(StatusCode::kTimeout, "busy");
        },
        [this] { return owns.load(); });
  }
  Lifecycle::StartHook startHook(Status result = Status::ok()) {
    return [this, result] {
      ++starts;
      record("start");
      return result;
    };
  }
  void record(std::string event) {
    std::lock_guard<std::mutex> lock(mutex);
    events.push_back(std::move(event));
  }
};

TEST(LifecycleTest, EpochsRunStartStopWaitInOrder) {
  Recorder r;
  Lifecycle lc = r.make();
  EXPECT_TRUE(lc.wait(deadlineAfter(10ms)).isOk()) << "nothing started: nothing to wait for";
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  EXPECT_TRUE(lc.isRunning());
  EXPECT_TRUE(lc.start(r.startHook()).isOk());
  EXPECT_EQ(r.starts.load(), 1) << "a second start in the same epoch is a no-op";
  lc.stop();
  lc.stop();
  EXPECT_EQ(r.stops.load(), 1) << "stop is idempotent";
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  EXPECT_EQ(r.finishes.load(), 1);
  EXPECT_EQ(lc.completedEpochs(), 1u);
  EXPECT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  EXPECT_EQ(r.finishes.load(), 1) << "a finished epoch is not finished twice";
}

TEST(LifecycleTest, FailedStartStaysIdleAndCanBeRetried) {
  Recorder r;
  Lifecycle lc = r.make();
  EXPECT_EQ(lc.start(r.startHook(Status(StatusCode::kTransportError, "bind"))).code(),
            StatusCode::kTransportError);
  EXPECT_FALSE(lc.isRunning());
  lc.stop();
  EXPECT_EQ(r.stops.load(), 0) << "nothing to stop";
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  EXPECT_TRUE(lc.isRunning());
  lc.stop();
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
}

TEST(LifecycleTest, WaitWithoutStopTimesOutAndFromAnOwnedThreadFailsAtOnce) {
  Recorder r;
  Lifecycle lc = r.make();
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  EXPECT_EQ(lc.wait(deadlineAfter(20ms)).code(), StatusCode::kTimeout);
  r.owns = true;
  EXPECT_EQ(lc.wait(kNoDeadline).code(), StatusCode::kWouldDeadlock);
  lc.stop();
  EXPECT_EQ(lc.start(r.startHook()).code(), StatusCode::kWouldDeadlock)
      << "restarting from an owned thread would wait for itself";
  r.owns = false;
  EXPECT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
}

TEST(LifecycleTest, StartAfterStopWithoutWaitFinishesTheOldEpochFirst) {
  Recorder r;
  Lifecycle lc = r.make();
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  lc.stop();
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  EXPECT_EQ(r.finishes.load(), 1);
  EXPECT_EQ(lc.completedEpochs(), 1u);
  EXPECT_EQ(r.starts.load(), 2);
  lc.stop();
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
}

TEST(LifecycleTest, AFinishThatTimesOutIsRetriedByTheNextWaiter) {
  Recorder r;
  Lifecycle lc = r.make();
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  lc.stop();
  r.finishOk = false;
  EXPECT_EQ(lc.wait(deadlineAfter(10ms)).code(), StatusCode::kTimeout);
  r.finishOk = true;
  EXPECT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  EXPECT_EQ(lc.completedEpochs(), 1u);
}

TEST(LifecycleTest, HangWarningIsLoggedOncePerEpoch) {
  Recorder r;
  Lifecycle lc = r.make(5ms);
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  EXPECT_EQ(lc.wait(deadlineAfter(30ms)).code(), StatusCode::kTimeout);
  EXPECT_EQ(lc.wait(deadlineAfter(30ms)).code(), StatusCode::kTimeout);
  ASSERT_EQ(r.log.count(LogLevel::kWarning), 1) << r.log.dump();
  EXPECT_EQ(r.log.count(LogLevel::kWarning, "possible hang"), 1) << r.log.dump();
}

// The stop hook runs outside the mutex, so it can still be running after its epoch was waited
// for (here the finish hook does not need it). The next start() waits for it: a late stop hook
// never reaches the new epoch (before, each owner had to count epochs to ignore it, and the
// thread-pool and event-loop executors did not).
TEST(LifecycleTest, StartWaitsForALateStopHookOfThePreviousEpoch) {
  Recorder r;
  std::latch inHook(1);
  Gate release;
  bool first = true;
  r.onStop = [&] {
    if (std::exchange(first, false)) {
      inHook.count_down();
      (void)release.wait(10s);
    }
  };
  Lifecycle lc = r.make();
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  std::thread stopper([&] { lc.stop(); });
  inHook.wait();  // the stop of epoch 1 is inside its hook
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  std::promise<Status> started;
  std::thread starter([&] { started.set_value(lc.start(r.startHook())); });
  auto startedF = started.get_future();
  EXPECT_EQ(startedF.wait_for(50ms), std::future_status::timeout)
      << "epoch 2 began while epoch 1's stop hook ran";
  release.open();
  ASSERT_TRUE(readyWithin(startedF, 10s));
  EXPECT_TRUE(startedF.get().isOk());
  starter.join();
  stopper.join();
  EXPECT_TRUE(lc.isRunning());
  lc.stop();
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  std::lock_guard<std::mutex> lock(r.mutex);
  EXPECT_EQ(r.events, (std::vector<std::string>{"start", "stop ends", "start", "stop ends"}));
}

TEST(LifecycleTest, ConcurrentStartsRunTheHookOnce) {
  Recorder r;
  Lifecycle lc = r.make();
  std::latch go(4);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      if (lc.start(r.startHook())) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(r.starts.load(), 1);
  lc.stop();
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
}

}  // namespace
}  // namespace switchboard
