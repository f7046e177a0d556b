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

namespace switchboard {
namespace {

using namespace std::chrono_literals;

constexpr auto kLong = 5s;   // bound on every wait that is expected to succeed
constexpr auto kShort = 50ms;  // "still blocked" probe

// EXPECT_CODE(status, code): `status` is evaluated once and printed on failure.
#define EXPECT_CODE(status, expected)                                                         \
  switch (0)                                                                                  \
  case 0:                                                                                     \
  default:                                                                                    \
    if (const Status c_ = (status); c_.code() == (expected)) {                                \
    } else                                                                                    \
      ADD_FAILURE() << #status << " is \"" << c_ << "\", expected " << statusCodeName(expected)

template <typename T>
bool readyWithin(std::future<T>& f, std::chrono::milliseconds d = kLong) {
  return f.wait_for(d) == std::future_status::ready;
}

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
  ASSERT_TRUE(readyWithin(f));
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
  std::latch release(1);
  std::promise<void> entered;
  std::atomic<bool> targetReturned{false};
  FakeBlockingThread t([&] {
    entered.set_value();
    release.wait();
    targetReturned = true;
  });
  ASSERT_TRUE(t.start());
  Status executed;
  std::thread caller([&] { executed = t.execute(); });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF));

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
  ASSERT_TRUE(readyWithin(probedF));
  EXPECT_CODE(probe, StatusCode::kTimeout);  // join is still blocked while the target runs
  EXPECT_TRUE(t.isAlive());
  release.count_down();
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
  std::latch release(1);
  std::promise<void> entered;
  FakeBlockingThread t([&] {
    entered.set_value();
    release.wait();
  });
  ASSERT_TRUE(t.start());
  std::thread caller([&] { (void)t.execute(); });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF));
  const Deadline start = Clock::now();
  Status s = t.join(deadlineAfter(kShort));
  EXPECT_CODE(s, StatusCode::kTimeout);
  EXPECT_GE(Clock::now() - start, kShort);
  EXPECT_TRUE(t.isAlive());
  release.count_down();
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
  std::latch release(1);
  std::promise<void> entered;
  FakeBlockingThread t([&] {
    entered.set_value();
    release.wait();
  });
  ASSERT_TRUE(t.start());
  std::thread caller([&] { (void)t.execute(); });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF));

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
  release.count_down();
  for (int i = 0; i < kJoiners; ++i) {
    auto f = results[i].get_future();
    ASSERT_TRUE(readyWithin(f));
    Status s = f.get();
    EXPECT_TRUE(s) << "joiner " << i << ": " << s;
  }
  for (auto& j : joiners) j.join();
  caller.join();
}

TEST(FakeBlockingThreadTest, ThrowingTargetMarksDeadAndWakesJoiners) {
  std::latch release(1);
  std::promise<void> entered;
  FakeBlockingThread t([&] {
    entered.set_value();
    release.wait();
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
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF));
  std::promise<void> probed;
  Status probe;
  std::promise<Status> joined;
  std::thread joiner([&] {
    probe = t.join(deadlineAfter(kShort));
    probed.set_value();
    joined.set_value(t.join(deadlineAfter(kLong)));
  });
  auto probedF = probed.get_future();
  ASSERT_TRUE(readyWithin(probedF));
  EXPECT_CODE(probe, StatusCode::kTimeout);
  release.count_down();
  auto joinedF = joined.get_future();
  ASSERT_TRUE(readyWithin(joinedF));
  Status j = joinedF.get();
  EXPECT_TRUE(j) << j;
  auto thrownF = thrown.get_future();
  ASSERT_TRUE(readyWithin(thrownF));
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
  std::latch release(1);
  std::promise<void> entered;
  int runs = 0;
  FakeBlockingThread t([&] {
    ++runs;
    entered.set_value();
    release.wait();
  });
  ASSERT_TRUE(t.start());
  std::thread caller([&] { (void)t.execute(); });
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF));
  EXPECT_CODE(t.execute(), StatusCode::kInvalidState);
  release.count_down();
  caller.join();
  EXPECT_EQ(runs, 1);
}

}  // namespace
}  // namespace switchboard
