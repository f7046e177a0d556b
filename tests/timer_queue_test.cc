// ThreadTimerQueue: order, cancel (before, during and after a task), shutdown from a task.
#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/timer_queue.h"
#include "support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;

TEST(ThreadTimerQueueTest, RunsTasksInDeadlineOrder) {
  ThreadTimerQueue timers;
  std::mutex mutex;
  std::vector<int> order;
  std::promise<void> last;
  const Deadline now = timers.now();
  auto record = [&](int n) {
    std::lock_guard<std::mutex> lock(mutex);
    order.push_back(n);
  };
  timers.schedule(now + 30ms, [&] {
    record(3);
    last.set_value();
  });
  timers.schedule(now + 10ms, [&] { record(1); });
  timers.schedule(now + 20ms, [&] { record(2); });
  std::future<void> done = last.get_future();
  ASSERT_TRUE(testing::readyWithin(done));
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

// Regression: the thread waited on a reference to the earliest task's deadline, inside the
// node that cancel() frees (ASan: heap-use-after-free).
TEST(ThreadTimerQueueTest, CancellingTheTaskTheThreadWaitsForIsSafe) {
  ThreadTimerQueue timers;
  for (int i = 0; i < 20; ++i) {
    const TimerId far = timers.schedule(timers.now() + 1h, [] { ADD_FAILURE() << "cancelled"; });
    // Once this task has run, the thread goes back to waiting for `far`.
    std::promise<void> ran;
    timers.schedule(timers.now(), [&] { ran.set_value(); });
    std::future<void> done = ran.get_future();
    ASSERT_TRUE(testing::readyWithin(done));
    timers.cancel(far);  // the next schedule() wakes the thread from that wait
  }
}

TEST(ThreadTimerQueueTest, CancellingTheUnusedIdZeroOnAnIdleQueueReturnsAtOnce) {
  // Leaked if cancel(0) hangs (nothing can release it): the stuck thread keeps using it.
  auto* timers = new ThreadTimerQueue;
  std::promise<void> returned;
  std::future<void> done = returned.get_future();
  std::thread canceller([timers, &returned] {
    timers->cancel(0);  // ids are never 0: ignored, as any unknown id
    returned.set_value();
  });
  if (!testing::readyWithin(done)) {
    canceller.detach();
    FAIL() << "cancel(0) waits for a task to run";
  }
  canceller.join();
  delete timers;
}

TEST(ThreadTimerQueueTest, CancelWaitsForARunningTaskAndDestroysAPendingOne) {
  ThreadTimerQueue timers;
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  bool finished = false;
  const TimerId running = timers.schedule(timers.now(), [&, released] {
    started.set_value();
    released.wait_for(testing::kDefaultWait);
    finished = true;
  });
  std::future<void> runningNow = started.get_future();
  ASSERT_TRUE(testing::readyWithin(runningNow));
  auto held = std::make_shared<int>(0);
  const TimerId pending = timers.schedule(timers.now() + 1h, [held] {});
  timers.cancel(pending);
  EXPECT_EQ(held.use_count(), 1) << "a cancelled task is destroyed by cancel()";
  std::future<void> cancelled = std::async(std::launch::async, [&] { timers.cancel(running); });
  EXPECT_FALSE(testing::readyWithin(cancelled, 50ms)) << "still blocked by the running task";
  release.set_value();
  ASSERT_TRUE(testing::readyWithin(cancelled));
  EXPECT_TRUE(finished);
}

TEST(ThreadTimerQueueTest, ShutdownFromATaskLetsItsThreadEndAndDropsTheRest) {
  auto timers = std::make_shared<ThreadTimerQueue>();
  std::promise<void> ran;
  auto held = std::make_shared<int>(0);
  timers->schedule(timers->now() + 1h, [held] {});
  timers->schedule(timers->now(), [&, queue = timers] {
    queue->shutdown();
    ran.set_value();
  });
  std::future<void> done = ran.get_future();
  ASSERT_TRUE(testing::readyWithin(done));
  EXPECT_EQ(held.use_count(), 1) << "tasks left are destroyed without running";
  timers->schedule(timers->now(), [] { ADD_FAILURE() << "after shutdown"; });
  timers.reset();
}

}  // namespace
}  // namespace switchboard
