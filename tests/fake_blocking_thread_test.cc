// FakeBlockingThread: start/execute/join semantics of the thread stand-in the blocking executor
// joins. No sleeps: "join is still blocked" is observed as join(deadline) returning kTimeout.
#include "executors/fake_blocking_thread.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <latch>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "base/deadline.h"
#include "base/status.h"
#include "tests/support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using switchboard::testing::readyWithin;

constexpr auto kLong = 5s;   // bound on every wait that is expected to succeed
constexpr auto kShort = 50ms;  // "still blocked" probe

// Keeps a target running while the test looks at its FakeBlockingThread: the target calls
// enterAndHold(), which reports that it runs and then blocks until the test calls release()
// (once). entered() waits (bounded by kLong) for that report.
class Hold {
 public:
  void enterAndHold() {
    entered_.set_value();
    release_.wait();
  }
  bool entered() { return readyWithin(enteredF_, kLong); }
  void release() { release_.count_down(); }

 private:
  std::latch release_{1};
  std::promise<void> entered_;
  std::future<void> enteredF_ = entered_.get_future();
};

TEST(FakeBlockingThreadTest, StartTwiceIsInvalidState) {
  FakeBlockingThread t([] {});
  ASSERT_TRUE(t.start());
  EXPECT_CODE(t.start(), StatusCode::kInvalidState);
  EXPECT_TRUE(t.isAlive());
  ASSERT_TRUE(t.execute());
  EXPECT_FALSE(t.isAlive());
}

TEST(FakeBlockingThreadTest, ExecuteBeforeStartIsInvalidState) {
  int runs = 0;
  FakeBlockingThread t([&] { ++runs; });
  EXPECT_CODE(t.execute(), StatusCode::kInvalidState);
  EXPECT_EQ(runs, 0);
  EXPECT_FALSE(t.isAlive());
}

TEST(FakeBlockingThreadTest, ExecuteRunsTargetOnCallingThread) {
  std::thread::id targetThread;
  std::optional<std::thread::id> executingInside;
  FakeBlockingThread* self = nullptr;
  FakeBlockingThread t([&] {
    targetThread = std::this_thread::get_id();
    executingInside = self->executingThread();
  });
  self = &t;
  EXPECT_FALSE(t.executingThread().has_value());
  ASSERT_TRUE(t.start());
  EXPECT_FALSE(t.executingThread().has_value());  // started, but nobody executes yet
  ASSERT_TRUE(t.execute());
  EXPECT_EQ(targetThread, std::this_thread::get_id());
  ASSERT_TRUE(executingInside.has_value());
  EXPECT_EQ(*executingInside, std::this_thread::get_id());
  EXPECT_FALSE(t.executingThread().has_value());
}

TEST(FakeBlockingThreadTest, ExecuteOnAnotherThreadRunsThere) {
  std::promise<std::thread::id> ran;
  FakeBlockingThread t([&] { ran.set_value(std::this_thread::get_id()); });
  ASSERT_TRUE(t.start());
  std::thread::id callerId;
  Status executed;
  std::thread caller([&] {
    callerId = std::this_thread::get_id();
    executed = t.execute();
  });
  auto f = ran.get_future();
  ASSERT_TRUE(readyWithin(f, kLong));
  caller.join();
  EXPECT_EQ(f.get(), callerId);
  EXPECT_NE(callerId, std::this_thread::get_id());
  EXPECT_TRUE(executed) << executed;
}

TEST(FakeBlockingThreadTest, AliveAfterStartDeadAfterExecuteReturns) {
  bool aliveInside = false;
  FakeBlockingThread* self = nullptr;
  FakeBlockingThread t([&] { aliveInside = self->isAlive(); });
  self = &t;
  EXPECT_FALSE(t.isAlive());
  ASSERT_TRUE(t.start());
  EXPECT_TRUE(t.isAlive());
  ASSERT_TRUE(t.execute());
  EXPECT_TRUE(aliveInside);
  EXPECT_FALSE(t.isAlive());
}

TEST(FakeBlockingThreadTest, JoinFromAnotherThreadBlocksUntilTargetReturns) {
  Hold hold;
  std::atomic<bool> targetReturned{false};
  FakeBlockingThread t([&] {
    hold.enterAndHold();
    targetReturned = true;
  });
  ASSERT_TRUE(t.start());
  Status executed;
  std::thread caller([&] { executed = t.execute(); });
  ASSERT_TRUE(hold.entered());

  std::promise<void> probed;  // the joiner's first (short) join timed out
  std::atomic<bool> sawReturned{false};
  Status probe;
  Status joined;
  std::thread joiner([&] {
    probe = t.join(deadlineAfter(kShort));
    probed.set_value();
    joined = t.join(deadlineAfter(kLong));
    sawReturned = targetReturned.load();
  });
  auto probedF = probed.get_future();
  ASSERT_TRUE(readyWithin(probedF, kLong));
  EXPECT_CODE(probe, StatusCode::kTimeout);  // join is still blocked while the target runs
  EXPECT_TRUE(t.isAlive());
  hold.release();
  joiner.join();
  caller.join();
  EXPECT_TRUE(joined) << joined;
  EXPECT_TRUE(sawReturned);  // join returned only after the target had returned
  EXPECT_TRUE(executed) << executed;
  EXPECT_FALSE(t.isAlive());
}

TEST(FakeBlockingThreadTest, JoinFromInsideTargetWouldDeadlock) {
  Status inner;
  Deadline before{};
  Deadline after{};
  FakeBlockingThread* self = nullptr;
  FakeBlockingThread t([&] {
    before = Clock::now();
    inner = self->join(deadlineAfter(kLong));
    after = Clock::now();
  });
  self = &t;
  ASSERT_TRUE(t.start());
  ASSERT_TRUE(t.execute());
  EXPECT_CODE(inner, StatusCode::kWouldDeadlock);
  EXPECT_LT(after - before, 1s);  // at once, not at the deadline
  EXPECT_FALSE(t.isAlive());
}

TEST(FakeBlockingThreadTest, JoinWithDeadlineWhileRunningTimesOut) {
  Hold hold;
  FakeBlockingThread t([&] { hold.enterAndHold(); });
  ASSERT_TRUE(t.start());
  std::thread caller([&] { (void)t.execute(); });
  ASSERT_TRUE(hold.entered());
  const Deadline start = Clock::now();
  Status s = t.join(deadlineAfter(kShort));
  EXPECT_CODE(s, StatusCode::kTimeout);
  EXPECT_GE(Clock::now() - start, kShort);
  EXPECT_TRUE(t.isAlive());
  hold.release();
  caller.join();
  EXPECT_TRUE(t.join(deadlineAfter(kLong)));
}

TEST(FakeBlockingThreadTest, JoinWithDeadlineWhenStartedButNotExecutedTimesOut) {
  FakeBlockingThread t([] {});
  ASSERT_TRUE(t.start());
  EXPECT_CODE(t.join(deadlineAfter(kShort)), StatusCode::kTimeout);
  ASSERT_TRUE(t.execute());
  EXPECT_TRUE(t.join(deadlineAfter(kLong)));
}

TEST(FakeBlockingThreadTest, MultipleJoinersAllReleased) {
  constexpr int kJoiners = 4;
  Hold hold;
  FakeBlockingThread t([&] { hold.enterAndHold(); });
  ASSERT_TRUE(t.start());
  std::thread caller([&] { (void)t.execute(); });
  ASSERT_TRUE(hold.entered());

  std::latch probed(kJoiners);
  std::vector<Status> probes(kJoiners);
  std::vector<std::promise<Status>> results(kJoiners);
  std::vector<std::thread> joiners;
  for (int i = 0; i < kJoiners; ++i) {
    joiners.emplace_back([&, i] {
      probes[i] = t.join(deadlineAfter(kShort));
      probed.count_down();
      results[i].set_value(t.join(deadlineAfter(kLong)));
    });
  }
  probed.wait();
  for (int i = 0; i < kJoiners; ++i) EXPECT_CODE(probes[i], StatusCode::kTimeout);
  hold.release();
  for (int i = 0; i < kJoiners; ++i) {
    auto f = results[i].get_future();
    ASSERT_TRUE(readyWithin(f, kLong));
    Status s = f.get();
    EXPECT_TRUE(s) << "joiner " << i << ": " << s;
  }
  for (auto& j : joiners) j.join();
  caller.join();
}

TEST(FakeBlockingThreadTest, ThrowingTargetMarksDeadAndWakesJoiners) {
  Hold hold;
  FakeBlockingThread t([&] {
    hold.enterAndHold();
    throw std::runtime_error("target failed");
  });
  ASSERT_TRUE(t.start());
  std::promise<std::string> thrown;
  std::thread caller([&] {
    try {
      (void)t.execute();
      thrown.set_value("<no exception>");
    } catch (const std::runtime_error& e) {
      thrown.set_value(e.what());
    }
  });
  ASSERT_TRUE(hold.entered());
  std::promise<void> probed;
  Status probe;
  std::promise<Status> joined;
  std::thread joiner([&] {
    probe = t.join(deadlineAfter(kShort));
    probed.set_value();
    joined.set_value(t.join(deadlineAfter(kLong)));
  });
  auto probedF = probed.get_future();
  ASSERT_TRUE(readyWithin(probedF, kLong));
  EXPECT_CODE(probe, StatusCode::kTimeout);
  hold.release();
  auto joinedF = joined.get_future();
  ASSERT_TRUE(readyWithin(joinedF, kLong));
  Status j = joinedF.get();
  EXPECT_TRUE(j) << j;
  auto thrownF = thrown.get_future();
  ASSERT_TRUE(readyWithin(thrownF, kLong));
  EXPECT_EQ(thrownF.get(), "target failed");
  joiner.join();
  caller.join();
  EXPECT_FALSE(t.isAlive());
  EXPECT_FALSE(t.executingThread().has_value());
  // Dead after the exception: it can be started and executed again.
  ASSERT_TRUE(t.start());
  EXPECT_TRUE(t.isAlive());
}

TEST(FakeBlockingThreadTest, JoinWhenNeverStartedReturnsOkAtOnce) {
  FakeBlockingThread t([] {});
  const Deadline before = Clock::now();
  EXPECT_TRUE(t.join());  // no deadline: would hang if it waited
  EXPECT_TRUE(t.join(deadlineAfter(kLong)));
  EXPECT_LT(Clock::now() - before, 1s);
}

TEST(FakeBlockingThreadTest, CanBeStartedAgainAfterItDied) {
  int runs = 0;
  std::vector<std::thread::id> runThreads;
  FakeBlockingThread t([&] {
    ++runs;
    runThreads.push_back(std::this_thread::get_id());
  });
  ASSERT_TRUE(t.start());
  ASSERT_TRUE(t.execute());
  EXPECT_FALSE(t.isAlive());
  EXPECT_TRUE(t.join(deadlineAfter(kLong)));
  EXPECT_CODE(t.execute(), StatusCode::kInvalidState);  // dead: not runnable until restarted

  ASSERT_TRUE(t.start());
  EXPECT_TRUE(t.isAlive());
  std::thread other([&] { EXPECT_TRUE(t.execute()); });
  other.join();
  EXPECT_FALSE(t.isAlive());
  EXPECT_TRUE(t.join(deadlineAfter(kLong)));
  EXPECT_EQ(runs, 2);
  ASSERT_EQ(runThreads.size(), 2u);
  EXPECT_EQ(runThreads[0], std::this_thread::get_id());
  EXPECT_NE(runThreads[1], std::this_thread::get_id());
}

TEST(FakeBlockingThreadTest, SecondExecuteWhileRunningIsInvalidState) {
  Hold hold;
  int runs = 0;
  FakeBlockingThread t([&] {
    ++runs;
    hold.enterAndHold();
  });
  ASSERT_TRUE(t.start());
  std::thread caller([&] { (void)t.execute(); });
  ASSERT_TRUE(hold.entered());
  EXPECT_CODE(t.execute(), StatusCode::kInvalidState);
  hold.release();
  caller.join();
  EXPECT_EQ(runs, 1);
}

}  // namespace
}  // namespace switchboard
