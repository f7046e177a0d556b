// Lifecycle, the state machine under every executor and the server, driven through its hooks:
// epochs, failed starts, waits, deadlock detection, the hang warning, and a late stop hook.
#include <gtest/gtest.h>

#include <atomic>
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

// A Lifecycle whose hooks record what they were asked to do.
struct Recorder {
  std::atomic<int> starts{0}, stops{0}, finishes{0};
  std::atomic<bool> owns{false};
  std::atomic<bool> finishOk{true};
  std::mutex mutex;
  std::vector<uint64_t> stoppedEpochs;  // guarded by mutex
  LogCapture log;                       // what the Lifecycle logs
  std::function<void(uint64_t)> onStop;  // extra behaviour, set before use

  Lifecycle make(Duration hangWarningAfter = 10s) {
    Lifecycle::Options options;
    options.component = "test";
    options.hangWarningAfter = hangWarningAfter;
    options.log = log.sink();
    return Lifecycle(
        options,
        [this](uint64_t epoch) {
          {
            std::lock_guard<std::mutex> lock(mutex);
            stoppedEpochs.push_back(epoch);
          }
          ++stops;
          if (onStop) onStop(epoch);
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
      return result;
    };
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

// The stop hook runs outside the mutex, so it can run after its epoch was waited for and a new
// one started. It is told which epoch it stops, so that it can leave the new one alone (the
// blocking executor and the server check it; without it a late stop killed the next epoch).
TEST(LifecycleTest, ALateStopHookIsToldTheEpochItStopped) {
  Recorder r;
  std::latch inHook(1);
  Gate release;
  r.onStop = [&](uint64_t epoch) {
    if (epoch == 1) {
      inHook.count_down();
      (void)release.wait(10s);
    }
  };
  Lifecycle lc = r.make();
  ASSERT_TRUE(lc.start(r.startHook()).isOk());
  std::thread stopper([&] { lc.stop(); });
  inHook.wait();  // the stop of epoch 1 is inside its hook
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  ASSERT_TRUE(lc.start(r.startHook()).isOk());  // epoch 2 begins under the late hook
  release.open();
  stopper.join();
  EXPECT_TRUE(lc.isRunning()) << "the late hook's stop belonged to epoch 1";
  lc.stop();
  ASSERT_TRUE(lc.wait(deadlineAfter(1s)).isOk());
  std::lock_guard<std::mutex> lock(r.mutex);
  EXPECT_EQ(r.stoppedEpochs, (std::vector<uint64_t>{1, 2}));
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
