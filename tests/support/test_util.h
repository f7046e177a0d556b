// Test support shared by the suites: Status assertions (EXPECT_CODE, ASSERT_CODE, EXPECT_OK,
// ASSERT_OK), bounded waits on futures (readyWithin), Gate, Events and LogCapture. Header-only.
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/thread/future.hpp>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"

// EXPECT_CODE(status, code) << "context": passes if `status`'s code is `code`; otherwise a
// non-fatal failure that prints the expression, the expected code and the Status. `status` is
// evaluated exactly once. ASSERT_CODE is the same with a fatal failure (returns from the current
// function). Both are single statements that take a trailing `<<`, safe in an unbraced if/else.
#define SWITCHBOARD_TEST_CODE_(status, expected, fail)                                          \
  switch (0)                                                                                    \
  case 0:                                                                                       \
  default:                                                                                      \
    if (const ::switchboard::Status c_ = (status); c_.code() == (expected)) {                   \
    } else                                                                                      \
      fail() << #status << ": expected " << ::switchboard::statusCodeName(expected) << ", got " \
             << c_
#define EXPECT_CODE(status, expected) SWITCHBOARD_TEST_CODE_(status, expected, ADD_FAILURE)
#define ASSERT_CODE(status, expected) SWITCHBOARD_TEST_CODE_(status, expected, FAIL)

// EXPECT_OK(expr) << "context": passes if the Status `expr` is ok; otherwise a non-fatal failure
// that prints the expression and the Status. `expr` is evaluated exactly once. ASSERT_OK is the
// same with a fatal failure. Single statements, as above.
#define SWITCHBOARD_TEST_OK_(expr, fail)                      \
  switch (0)                                                  \
  case 0:                                                     \
  default:                                                    \
    if (const ::switchboard::Status s_ = (expr); s_.isOk()) { \
    } else                                                    \
      fail() << #expr << ": " << s_
#define EXPECT_OK(expr) SWITCHBOARD_TEST_OK_(expr, ADD_FAILURE)
#define ASSERT_OK(expr) SWITCHBOARD_TEST_OK_(expr, FAIL)

namespace switchboard::testing {

// Entries of a /proc/self directory: threads ("/proc/self/task") or descriptors ("/proc/self/fd").
inline size_t countEntries(const char* dir) {
  size_t n = 0;
  if (DIR* d = ::opendir(dir)) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

// The default bound of the waits below: they are expected to succeed, and reach the bound only
// when the code under test hangs. A suite with a bound of its own passes it explicitly.
inline constexpr Duration kDefaultWait = std::chrono::seconds(10);

// countEntries("/proc/self/task") once it is down to `expected`, or at `bound`. A joined
// thread's entry can outlive the join for a moment (the kernel wakes the joiner before it
// releases the task), so a count taken right after joins may still be high.
inline size_t threadsSettledTo(size_t expected, Duration bound = kDefaultWait) {
  const Deadline giveUp = deadlineAfter(bound);
  size_t n = countEntries("/proc/self/task");
  while (n > expected && Clock::now() < giveUp) {
    std::this_thread::yield();
    n = countEntries("/proc/self/task");
  }
  return n;
}

// readyWithin(f, bound): true once `f` is ready, false if `bound` passed first (0s: "is it ready
// now?"). Does not get() the value; `f` must be valid.
template <typename T>
bool readyWithin(std::future<T>& f, Duration bound = kDefaultWait) {
  return f.wait_for(bound) == std::future_status::ready;
}
template <typename T>
bool readyWithin(std::shared_future<T>& f, Duration bound = kDefaultWait) {
  return f.wait_for(bound) == std::future_status::ready;
}
// boost::future waits in boost::chrono: `bound` is taken in whole milliseconds.
template <typename T>
bool readyWithin(boost::future<T>& f, Duration bound = kDefaultWait) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(bound).count();
  return f.wait_for(boost::chrono::milliseconds(ms)) == boost::future_status::ready;
}

// A one-shot gate over a promise: closed when made; open() opens it for good and may be called
// any number of times, from any thread; wait() blocks until it is open, bounded, so a task or
// handler that blocks on a gate a failed test never opened cannot block for ever. Whoever makes
// gates for blocked work should open them on every way out (a fixture's TearDown, a scope guard).
// Not copyable or movable: keep it where the blocked work can reach it (a std::deque grows fine).
class Gate {
 public:
  void open() {
    std::call_once(once_, [this] { promise_.set_value(); });
  }
  // True once open; false if `bound` passed first. Thread-safe.
  bool wait(Duration bound = kDefaultWait) const {
    std::shared_future<void> opened = opened_;  // a copy per waiter: shared_future's rule
    return opened.wait_for(bound) == std::future_status::ready;
  }

 private:
  std::once_flag once_;
  std::promise<void> promise_;
  const std::shared_future<void> opened_ = promise_.get_future().share();
};

// Counts events from any thread: add() one; waitFor(n) blocks until at least n have happened
// (true) or `bound` passed (false); count() is how many so far.
class Events {
 public:
  void add() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++count_;
    cv_.notify_all();
  }
  bool waitFor(int n, Duration bound = kDefaultWait) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, bound, [&] { return count_ >= n; });
  }
  int count() {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_ = 0;  // guarded by mutex_
};

// A thread-safe LogSink that records every line. sink() refers to this object: it must outlive
// every component given the sink. count(level, containing) counts the lines of `level` whose
// message contains `containing` (every line of `level` by default); waitFor(...) blocks until
// there is one (true) or `bound` passed (false); dump() is every line as "[component] message\n",
// for failure messages and substring checks.
class LogCapture {
 public:
  struct Line {
    LogLevel level;
    std::string component;
    std::string message;  // with its fields, as formatLogRecord writes them
  };
  LogSink sink() {
    return [this](const LogRecord& record) {
      std::lock_guard<std::mutex> lock(mutex_);
      lines_.push_back({record.level, std::string(record.component), formatLogRecord(record)});
      cv_.notify_all();
    };
  }
  int count(LogLevel level, std::string_view containing = {}) {
    std::lock_guard<std::mutex> lock(mutex_);
    return countLocked(level, containing);
  }
  bool waitFor(LogLevel level, std::string_view containing, Duration bound = kDefaultWait) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, bound, [&] { return countLocked(level, containing) > 0; });
  }
  std::string dump() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    for (const auto& l : lines_) out += "[" + l.component + "] " + l.message + "\n";
    return out;
  }

 private:
  int countLocked(LogLevel level, std::string_view containing) {
    return static_cast<int>(std::count_if(lines_.begin(), lines_.end(), [&](const Line& l) {
      return l.level == level && l.message.find(containing) != std::string::npos;
    }));
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Line> lines_;  // guarded by mutex_
};

}  // namespace switchboard::testing
