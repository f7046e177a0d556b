// MessageHandlingServer's lifecycle contract (messaging/server.h), row by row, and the seed
// interleavings, for every executor kind: the server is driven over an InMemoryTransport by an
// RpcClient. Latches, promises and futures synchronise; every wait is bounded; nothing sleeps.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "base/deadline.h"
#include "base/status.h"
#include "messaging/dispatcher.h"
#include "messaging/endpoint.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "messaging/target.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/mock_transport.h"
#include "tests/support/test_util.h"
#include "transports/in_memory_transport.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::Gate;
using testing::readyWithin;

constexpr Duration kWait = 10s;    // bound on every wait that is expected to succeed
constexpr Duration kShort = 50ms;  // "still blocked" probes
// readyWithin() and Gate::wait() wait as long by default.
static_assert(testing::kDefaultWait == kWait);

// Opens a gate when the scope ends (declared after the server and its Serving: a failed
// assertion releases the blocked handler before anything waits for it).
struct OpenOnExit {
  Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

// The caller thread a blocking server's execute() needs (testing::ServingThread's role), with a
// bounded check that execute() returned; a no-op for the other kinds. If the test ends with
// execute() still running (a failed assertion), the destructor stops the server first.
class Serving {
 public:
  Serving(MessageHandlingServer& server, bool blocking) : server_(&server) {
    if (blocking) {
      executed_ = std::async(std::launch::async, [&server] { return server.execute(); }).share();
    }
  }
  ~Serving() {
    if (executed_.valid() && server_ != nullptr &&
        executed_.wait_for(0s) != std::future_status::ready) {
      server_->stop();
    }
    // The last reference to std::async's state joins its thread.
  }
  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;

  // True once execute() has returned, waiting up to `bound`; always true when not blocking.
  bool returned(Duration bound = kWait) {
    return !executed_.valid() || readyWithin(executed_, bound);
  }
  // execute()'s outcome; ok when not blocking. Precondition: returned().
  Status status() const { return executed_.valid() ? executed_.get() : Status::ok(); }
  // The server is about to be destroyed by the test: never touch it again.
  void forgetServer() { server_ = nullptr; }

 private:
  MessageHandlingServer* server_;
  std::shared_future<Status> executed_;
};

// Forwards to another transport and counts listeners: made, and open now (from listen() until
// the listener's close() or destruction). Shows that no epoch leaks its listener.
class CountingTransport final : public Transport {
 public:
  explicit CountingTransport(Transport& inner) : inner_(inner) {}

  Result<std::unique_ptr<Listener>> listen(const Address& address) override {
    Result<std::unique_ptr<Listener>> listener = inner_.listen(address);
    if (!listener) return listener.status();
    made_.fetch_add(1);
    open_.fetch_add(1);
    return std::unique_ptr<Listener>(
        std::make_unique<Counted>(std::move(listener).value(), open_));
  }
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                     LinkCallback onLink) override {
    return inner_.openChannel(std::move(onReply), std::move(onLink));
  }
  Status publish(std::string_view topic, std::string bytes) override {
    return inner_.publish(topic, std::move(bytes));
  }
  Result<std::unique_ptr<Listener>> subscribe(const Subscription& subscription) override {
    return inner_.subscribe(subscription);
  }

  int made() const { return made_.load(); }
  int open() const { return open_.load(); }

 private:
  class Counted final : public Listener {
   public:
    Counted(std::unique_ptr<Listener> inner, std::atomic<int>& open)
        : inner_(std::move(inner)), open_(open) {}
    ~Counted() override { close(); }
    Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) override {
      return inner_->poll(deadline, maxBatch, out);
    }
    void interrupt() override { inner_->interrupt(); }
    void close() override {
      inner_->close();
      if (!closed_.exchange(true)) open_.fetch_sub(1);
    }

   private:
    const std::unique_ptr<Listener> inner_;
    std::atomic<int>& open_;
    std::atomic<bool> closed_{false};
  };

  Transport& inner_;
  std::atomic<int> made_{0};
  std::atomic<int> open_{0};
};

Endpoint calculator() {
  Endpoint ep;
  ep.method("add", [](int64_t a, int64_t b) { return a + b; }, {"a", "b"});
  ep.method("fail", [](std::string message) -> int { throw std::runtime_error(message); });
  return ep;
}

// Calls add(a, b) and checks the answer.
void expectAdds(const RpcClient& client, int64_t a, int64_t b) {
  Result<int64_t> r = client.call<int64_t>("add", a, b);
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, a + b);
}

// Waits (bounded) for an asynchronous call's outcome and checks that it is the integer `expected`.
void expectIntReply(boost::future<Result<Value>>& call, int64_t expected) {
  ASSERT_TRUE(readyWithin(call));
  Result<Value> r = call.get();
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(r->asInt(), expected);
}

// The usual end of a test's epoch: stop() from the test thread, then execute() (blocking kind)
// returned ok and wait() completed the epoch ok.
void expectCleanStop(MessageHandlingServer& server, Serving& serving) {
  server.stop();
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
  EXPECT_OK(server.wait(deadlineAfter(kWait)));
}

// A method "slow" whose handler is held at a gate: it reports that it entered, waits (bounded)
// for `release` to open, sets `finished` and returns 7 (-1 if the gate's bound passed first).
// Declare it before the server (it must outlive the handler); one call per test.
struct SlowMethod {
  Gate release;
  std::promise<void> entered;
  std::future<void> enteredF = entered.get_future();
  std::atomic<bool> finished{false};

  void addTo(Endpoint& ep) {
    ep.method("slow", [this]() {
      entered.set_value();
      const bool released = release.wait();
      finished = true;
      return released ? 7 : -1;
    });
  }
  // True once the handler is running (bounded).
  bool hasEntered() { return readyWithin(enteredF); }
};

template <typename Kind>
class ServerLifecycleTest : public ::testing::Test {
 protected:
  static constexpr bool kBlocking = Kind::kBlocking;

  static Target serverTarget() {
    Target t;
    t.topic = "life";
    t.server = "s1";
    return t;
  }
  RpcClient client(Duration timeout = kWait) {
    Target t;
    t.topic = "life";
    RpcClient::Options options;
    options.timeout = timeout;
    return RpcClient::create(transport_, t, options).value();
  }
  // A server of `endpoints` on `transport` (the in-memory one by default).
  std::unique_ptr<MessageHandlingServer> makeServer(std::vector<Endpoint> endpoints,
                                                    Transport* transport = nullptr,
                                                    Target target = serverTarget()) {
    return std::make_unique<MessageHandlingServer>(transport ? *transport : transport_,
                                                   std::move(target),
                                                   RpcDispatcher(std::move(endpoints)),
                                                   Kind::make());
  }

  InMemoryTransport transport_;  // declared first: outlives every server and client
};

using Kinds =
    ::testing::Types<testing::BlockingKind, testing::EventLoopKind, testing::ThreadPoolKind>;
struct KindNames {
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, testing::BlockingKind>) return "Blocking";
    if (std::is_same_v<T, testing::EventLoopKind>) return "EventLoop";
    return "ThreadPool";
  }
};
TYPED_TEST_SUITE(ServerLifecycleTest, Kinds, KindNames);

// ----- stop() before / racing start() -----------------------------------------------------------

TYPED_TEST(ServerLifecycleTest, StopBeforeStartIsANoOp) {
  auto server = this->makeServer({calculator()});
  server->stop();
  server->stop();
  EXPECT_FALSE(server->isRunning());
  EXPECT_OK(server->wait(deadlineAfter(kShort)));  // never started: nothing to wait for
  ASSERT_OK(server->start());
  EXPECT_TRUE(server->isRunning()) << "the early stop() must not stick to the next epoch";
  Serving serving(*server, TestFixture::kBlocking);
  ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 2, 3));
  server->stop();
  EXPECT_FALSE(server->isRunning());
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
  EXPECT_OK(server->wait(deadlineAfter(kWait)));
}

// stop() and start() released together from two threads (and, for the blocking executor,
// execute() from a third): whatever the order, nothing hangs and the epoch ends cleanly.
TYPED_TEST(ServerLifecycleTest, StopRacingStartFromTwoThreadsNeverHangs) {
  constexpr bool blocking = TestFixture::kBlocking;
  auto server = this->makeServer({calculator()});
  constexpr int kIterations = 200;
  for (int i = 0; i < kIterations; ++i) {
    std::latch go(blocking ? 3 : 2);
    Status started(StatusCode::kCancelled, "start() did not run");
    std::thread starter([&] {
      go.arrive_and_wait();
      started = server->start();
    });
    std::thread stopper([&] {
      go.arrive_and_wait();
      server->stop();
    });
    std::future<Status> executed;
    if (blocking) {
      executed = std::async(std::launch::async, [&] {
        go.arrive_and_wait();
        return server->execute();  // before start(): kInvalidState; after: serves until stop()
      });
    }
    starter.join();
    stopper.join();
    server->stop();  // the racing stop() may have come first (a no-op): this one ends the epoch
    ASSERT_OK(started) << " iteration " << i;
    if (blocking) {
      ASSERT_TRUE(readyWithin(executed, 5s)) << "execute() hung, iteration " << i;
      const Status s = executed.get();
      EXPECT_TRUE(s.isOk() || s.code() == StatusCode::kInvalidState)
          << "iteration " << i << ": " << s;
    }
    ASSERT_OK(server->wait(deadlineAfter(kWait))) << " iteration " << i;
    ASSERT_FALSE(server->isRunning()) << "iteration " << i;
  }
  ASSERT_OK(server->start());  // and it still serves
  Serving serving(*server, blocking);
  ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 20, 22));
  expectCleanStop(*server, serving);
}

// ----- seed interleavings: stop() from another thread around execute() -------------------------

// The seed race: start(); stop() from another thread, completed; only then execute(). The stop
// must not be lost: execute() returns at once (ok for the blocking executor, kInvalidState for
// the others, which have their own threads) and wait() completes the epoch.
TYPED_TEST(ServerLifecycleTest, SeedRaceStopFromAnotherThreadBeforeExecuteIsNotLost) {
  auto server = this->makeServer({calculator()});
  ASSERT_OK(server->start());
  std::thread([&] { server->stop(); }).join();
  EXPECT_FALSE(server->isRunning());
  auto executed = std::async(std::launch::async, [&] { return server->execute(); });
  ASSERT_TRUE(readyWithin(executed, 5s)) << "execute() after a stop() from another thread hung";
  const Status s = executed.get();
  if (TestFixture::kBlocking) {
    EXPECT_OK(s);
  } else {
    EXPECT_CODE(s, StatusCode::kInvalidState);
  }
  EXPECT_OK(server->wait(deadlineAfter(kWait)));

  ASSERT_OK(server->start());  // the next epoch is a normal one
  Serving serving(*server, TestFixture::kBlocking);
  ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 1, 2));
  expectCleanStop(*server, serving);
}

// The same race with stop() and execute() released together (200 times): execute() returns
// within the bound whichever wins.
TYPED_TEST(ServerLifecycleTest, SeedRaceStopConcurrentWithExecuteIsNotLost) {
  auto server = this->makeServer({calculator()});
  for (int i = 0; i < 200; ++i) {
    ASSERT_OK(server->start()) << " iteration " << i;
    std::latch go(2);
    std::thread stopper([&] {
      go.arrive_and_wait();
      server->stop();
    });
    auto executed = std::async(std::launch::async, [&] {
      go.arrive_and_wait();
      return server->execute();
    });
    stopper.join();
    ASSERT_TRUE(readyWithin(executed, 5s)) << "execute() hung, iteration " << i;
    const Status s = executed.get();
    if (TestFixture::kBlocking) {
      EXPECT_OK(s) << " iteration " << i;
    } else {
      EXPECT_CODE(s, StatusCode::kInvalidState) << "iteration " << i;
    }
    ASSERT_OK(server->wait(deadlineAfter(kWait))) << " iteration " << i;
  }
}

// execute() serves a started epoch only (executor.h: kInvalidState unless "a blocking executor
// that was started and not yet executed"): once an epoch is completed by wait() it is
// kInvalidState again.
TYPED_TEST(ServerLifecycleTest, ExecuteAfterACompletedEpochIsInvalidState) {
  auto server = this->makeServer({calculator()});
  ASSERT_OK(server->start());
  {
    Serving serving(*server, TestFixture::kBlocking);
    ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 1, 1));
    server->stop();
    ASSERT_TRUE(serving.returned());
    EXPECT_OK(serving.status());
  }
  ASSERT_OK(server->wait(deadlineAfter(kWait)));
  EXPECT_CODE(server->execute(), StatusCode::kInvalidState);  // the epoch is over
}

// LIBRARY BUG (deterministic for BlockingKind, hence DISABLED_; run with
// --gtest_also_run_disabled_tests): the same row when the completed epoch was stopped before
// its execute(). BlockingExecutor's stop hook (executors/blocking_executor.cc) sets
// run_ = Run::kSkipped, and nothing resets it when wait() completes the epoch, so every later
// execute() returns ok at once ("if (run_ == Run::kSkipped) return Status::ok();" in
// BlockingExecutor::execute) although nothing is started, until the next start() re-arms.
// It also answers ok to an execute() that overlaps the next start() before it armed.
TYPED_TEST(ServerLifecycleTest, ExecuteAfterACompletedSkippedEpochIsInvalidState) {
  auto server = this->makeServer({calculator()});
  ASSERT_OK(server->start());
  server->stop();  // before any execute(): the epoch is skipped
  auto skipped = std::async(std::launch::async, [&] { return server->execute(); });
  ASSERT_TRUE(readyWithin(skipped, 5s));
  const Status s = skipped.get();
  if (TestFixture::kBlocking) {
    EXPECT_OK(s);  // stop() came first: returns at once
  } else {
    EXPECT_CODE(s, StatusCode::kInvalidState);
  }
  ASSERT_OK(server->wait(deadlineAfter(kWait)));
  auto executed = std::async(std::launch::async, [&] { return server->execute(); });
  ASSERT_TRUE(readyWithin(executed, 5s));
  EXPECT_CODE(executed.get(), StatusCode::kInvalidState);  // BUG (Blocking): ok
}

// ----- stop() from a handler --------------------------------------------------------------------

TYPED_TEST(ServerLifecycleTest, StopFromInsideAHandlerRepliesAndEndsTheEpoch) {
  MessageHandlingServer* self = nullptr;  // set before start(): read by the handler only
  Endpoint ep;
  ep.method("stopServer", [&self]() {
    self->stop();
    return std::string("stopping");
  });
  auto server = this->makeServer({ep});
  self = server.get();
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  Result<std::string> r = this->client().template call<std::string>("stopServer");
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, "stopping");
  EXPECT_FALSE(server->isRunning());
  ASSERT_TRUE(serving.returned()) << "execute() must return once a handler stopped the server";
  EXPECT_OK(serving.status());
  EXPECT_OK(server->wait(deadlineAfter(kWait)));
  EXPECT_EQ(server->stats().replied, 1u);
}

// A cast whose handler does nothing but stop(): the test thread never calls stop(), yet its
// wait() completes (and the blocking executor's execute() returns).
TYPED_TEST(ServerLifecycleTest, HandlerOnlyCallsStop) {
  MessageHandlingServer* self = nullptr;
  Endpoint ep;
  ep.method("halt", [&self]() { self->stop(); });
  auto server = this->makeServer({ep});
  self = server.get();
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  ASSERT_OK(this->client().cast("halt"));
  EXPECT_OK(server->wait(deadlineAfter(kWait)));
  EXPECT_FALSE(server->isRunning());
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
  EXPECT_EQ(server->stats().received, 1u);
  EXPECT_EQ(server->stats().replied, 0u);  // a cast has no reply
}

// start() from a handler: a no-op while its epoch runs; after a stop() it would have to wait
// for the stopped epoch, i.e. for itself: kWouldDeadlock at once.
TYPED_TEST(ServerLifecycleTest, StartFromInsideAHandlerIsANoOpOrWouldDeadlock) {
  MessageHandlingServer* self = nullptr;
  Endpoint ep;
  ep.method("restartHere", [&self]() {
    const Status whileRunning = self->start();
    self->stop();
    const Status afterStop = self->start();
    return std::vector<std::string>{std::string(statusCodeName(whileRunning.code())),
                                    std::string(statusCodeName(afterStop.code()))};
  });
  auto server = this->makeServer({ep});
  self = server.get();
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  Result<std::vector<std::string>> r =
      this->client().template call<std::vector<std::string>>("restartHere");
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, (std::vector<std::string>{"Ok", "WouldDeadlock"}));
  EXPECT_FALSE(server->isRunning());
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
  EXPECT_OK(server->wait(deadlineAfter(kWait)));
}

// ----- wait() -----------------------------------------------------------------------------------

// The seed regression: wait() from another thread while a slow handler runs must not return
// before the handler has finished and its reply has gone out.
TYPED_TEST(ServerLifecycleTest, WaitFromAnotherThreadReturnsOnlyAfterSlowHandler) {
  SlowMethod slow;
  Endpoint ep;
  slow.addTo(ep);
  auto server = this->makeServer({ep});
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  OpenOnExit openOnExit{slow.release};
  RpcClient client = this->client();
  boost::future<Result<Value>> call = client.callAsync("slow", {});
  ASSERT_TRUE(slow.hasEntered());
  server->stop();
  auto waiter = std::async(std::launch::async, [&] { return server->wait(deadlineAfter(kWait)); });
  EXPECT_CODE(server->wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  EXPECT_FALSE(readyWithin(waiter, 0s)) << "wait() returned while a handler was still running";
  EXPECT_FALSE(slow.finished.load());
  slow.release.open();
  ASSERT_TRUE(readyWithin(waiter));
  EXPECT_OK(waiter.get());
  EXPECT_TRUE(slow.finished.load()) << "wait() returned before the handler finished";
  ASSERT_NO_FATAL_FAILURE(expectIntReply(call, 7));
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
}

// wait() from a handler would wait for itself: kWouldDeadlock at once, not at the deadline.
TYPED_TEST(ServerLifecycleTest, WaitFromInsideAHandlerFailsFast) {
  MessageHandlingServer* self = nullptr;
  Endpoint ep;
  ep.method("waitHere", [&self]() {
    return std::string(statusCodeName(self->wait(deadlineAfter(kWait)).code()));
  });
  auto server = this->makeServer({ep, calculator()});
  self = server.get();
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  RpcClient client = this->client(2 * kWait);
  const Deadline began = Clock::now();
  Result<std::string> r = client.template call<std::string>("waitHere");
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, statusCodeName(StatusCode::kWouldDeadlock));
  EXPECT_LT(Clock::now() - began, kWait / 2) << "wait() from a handler blocked";
  EXPECT_TRUE(server->isRunning());  // the refused wait() changed nothing
  ASSERT_NO_FATAL_FAILURE(expectAdds(client, 3, 4));
  expectCleanStop(*server, serving);
}

TYPED_TEST(ServerLifecycleTest, SeveralConcurrentWaitersAllReturnOkAfterTheSlowHandler) {
  SlowMethod slow;
  Endpoint ep;
  slow.addTo(ep);
  auto server = this->makeServer({ep});
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  OpenOnExit openOnExit{slow.release};
  RpcClient client = this->client();
  boost::future<Result<Value>> call = client.callAsync("slow", {});
  ASSERT_TRUE(slow.hasEntered());
  server->stop();
  constexpr int kWaiters = 4;
  std::vector<std::future<Status>> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.push_back(
        std::async(std::launch::async, [&] { return server->wait(deadlineAfter(kWait)); }));
  }
  EXPECT_CODE(server->wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  for (auto& w : waiters) EXPECT_FALSE(readyWithin(w, 0s)) << "a waiter returned early";
  slow.release.open();
  for (auto& w : waiters) {
    ASSERT_TRUE(readyWithin(w));
    EXPECT_OK(w.get());
  }
  ASSERT_NO_FATAL_FAILURE(expectIntReply(call, 7));
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
}

TYPED_TEST(ServerLifecycleTest, WaitWithDeadlineAndNoStopTimesOut) {
  auto server = this->makeServer({calculator()});
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  EXPECT_CODE(server->wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  EXPECT_CODE(server->wait(Clock::now()), StatusCode::kTimeout);  // a past deadline: at once
  EXPECT_TRUE(server->isRunning());  // a timed-out wait() stops nothing
  ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 5, 6));
  expectCleanStop(*server, serving);
}

// A deferred reply keeps the epoch open: wait() returns only after it was completed (from
// another thread, after stop()), and the caller gets that answer.
TYPED_TEST(ServerLifecycleTest, WaitWaitsForADeferredReplyCompletedAfterStop) {
  std::promise<DeferredReply> deferred;
  Endpoint ep;
  ep.method("later", [&](CallContext& ctx) {
    deferred.set_value(ctx.defer());
    return 0;  // ignored: the reply was deferred
  });
  auto server = this->makeServer({ep});
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  RpcClient client = this->client();
  boost::future<Result<Value>> call = client.callAsync("later", {});
  auto deferredF = deferred.get_future();
  ASSERT_TRUE(readyWithin(deferredF));
  DeferredReply reply = deferredF.get();
  ASSERT_TRUE(reply.pending());
  server->stop();
  EXPECT_CODE(server->wait(deadlineAfter(kShort)), StatusCode::kTimeout);
  EXPECT_FALSE(readyWithin(call, 0s));
  reply.completeWith(int64_t{99});
  EXPECT_OK(server->wait(deadlineAfter(kWait)));
  ASSERT_NO_FATAL_FAILURE(expectIntReply(call, 99));
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
}

// With refuseAfterStop, a stopped server with nothing in flight keeps its listener open and
// refuses what still arrives (kShuttingDown, marked refused: a Network sends it to another
// server) until the period is over; only then does wait() release the listener.
TYPED_TEST(ServerLifecycleTest, AStoppedServerRefusesNewCallsForItsRefusePeriodBeforeClosing) {
  constexpr Duration kRefuseFor = 2s;
  CountingTransport counting(this->transport_);
  MessageHandlingServer server(counting, TestFixture::serverTarget(), RpcDispatcher({calculator()}),
                               TypeParam::make(), {.refuseAfterStop = kRefuseFor});
  ASSERT_OK(server.start());
  Serving serving(server, TestFixture::kBlocking);
  RpcClient client = this->client();
  ASSERT_NO_FATAL_FAILURE(expectAdds(client, 1, 2));
  const Deadline stopped = Clock::now();
  server.stop();
  EXPECT_CODE(server.wait(stopped + kShort), StatusCode::kTimeout);
  EXPECT_EQ(counting.open(), 1) << "the listener closed before the refuse period was over";
  Result<int64_t> late = client.call<int64_t>("add", 3, 4);
  EXPECT_CODE(late.status(), StatusCode::kShuttingDown);
  EXPECT_TRUE(late.status().refused()) << late.status();
  EXPECT_OK(server.wait(deadlineAfter(kWait)));
  EXPECT_GE(Clock::now() - stopped, kRefuseFor);
  EXPECT_EQ(counting.open(), 0);
  ASSERT_TRUE(serving.returned());
  EXPECT_OK(serving.status());
}

// ----- restart ----------------------------------------------------------------------------------

TYPED_TEST(ServerLifecycleTest, RestartAfterStopAndWait) {
  CountingTransport counting(this->transport_);
  auto server = this->makeServer({calculator()}, &counting);
  RpcClient client = this->client();
  for (int round = 0; round < 3; ++round) {
    ASSERT_OK(server->start()) << " round " << round;
    EXPECT_TRUE(server->isRunning());
    Serving serving(*server, TestFixture::kBlocking);
    ASSERT_NO_FATAL_FAILURE(expectAdds(client, round, 10)) << "round " << round;
    server->stop();
    ASSERT_TRUE(serving.returned()) << "round " << round;
    EXPECT_OK(serving.status());
    ASSERT_OK(server->wait(deadlineAfter(kWait))) << " round " << round;
    EXPECT_OK(server->wait(deadlineAfter(kShort)));  // a finished epoch: at once
    EXPECT_EQ(counting.made(), round + 1);
    EXPECT_EQ(counting.open(), 0) << "wait() must release the listener, round " << round;
  }
  EXPECT_EQ(server->stats().received, 3u);  // counters span epochs
  EXPECT_EQ(server->stats().replied, 3u);
}

// start() after stop() without wait(): the old epoch is finished first (its slow handler
// completes and its listener is released) before the new one listens.
TYPED_TEST(ServerLifecycleTest, StartAfterStopWithoutWaitFinishesTheOldEpochFirst) {
  CountingTransport counting(this->transport_);
  SlowMethod slow;
  Endpoint ep = calculator();
  slow.addTo(ep);
  auto server = this->makeServer({ep}, &counting);
  ASSERT_OK(server->start());
  auto serving = std::make_unique<Serving>(*server, TestFixture::kBlocking);
  OpenOnExit openOnExit{slow.release};
  RpcClient client = this->client();
  boost::future<Result<Value>> call = client.callAsync("slow", {});
  ASSERT_TRUE(slow.hasEntered());
  server->stop();
  auto restarted = std::async(std::launch::async, [&] { return server->start(); });
  EXPECT_FALSE(readyWithin(restarted, kShort))
      << "start() returned while the stopped epoch still had a handler running";
  EXPECT_EQ(counting.made(), 1) << "the new epoch listened before the old one finished";
  slow.release.open();
  ASSERT_TRUE(readyWithin(restarted));
  ASSERT_OK(restarted.get());
  EXPECT_TRUE(server->isRunning());
  EXPECT_EQ(counting.made(), 2);
  EXPECT_EQ(counting.open(), 1) << "the old epoch's listener leaked";
  ASSERT_NO_FATAL_FAILURE(expectIntReply(call, 7));
  ASSERT_TRUE(serving->returned());  // the old epoch's execute() ended
  EXPECT_OK(serving->status());
  serving = std::make_unique<Serving>(*server, TestFixture::kBlocking);  // the new epoch's

  ASSERT_NO_FATAL_FAILURE(expectAdds(client, 4, 5));
  ASSERT_NO_FATAL_FAILURE(expectCleanStop(*server, *serving));
  EXPECT_EQ(counting.open(), 0);
}

// ----- failed start() ---------------------------------------------------------------------------

TYPED_TEST(ServerLifecycleTest, FailedStartCanBeRetried) {
  ::testing::StrictMock<testing::MockTransport> transport;  // listen() fails once, then works
  EXPECT_CALL(transport, listen(TestFixture::serverTarget().address()))
      .WillOnce([](const Address&) -> Result<std::unique_ptr<Listener>> {
        return Status(StatusCode::kTransportError, "bind failed");
      })
      .WillOnce([this](const Address& address) { return this->transport_.listen(address); });
  auto server = this->makeServer({calculator()}, &transport);
  const Status failed = server->start();
  EXPECT_CODE(failed, StatusCode::kTransportError);
  EXPECT_EQ(failed.message(), "bind failed");
  EXPECT_FALSE(server->isRunning());
  EXPECT_OK(server->wait(deadlineAfter(kShort)));             // nothing started
  EXPECT_CODE(server->execute(), StatusCode::kInvalidState);  // nothing to execute
  server->stop();                                             // harmless

  ASSERT_OK(server->start());
  EXPECT_TRUE(server->isRunning());
  Serving serving(*server, TestFixture::kBlocking);
  ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 8, 9));  // through the in-memory broker
  expectCleanStop(*server, serving);
}

// A Target that cannot serve fails every start() the same way; nothing is left half-started.
TYPED_TEST(ServerLifecycleTest, StartWithABadTargetKeepsFailingWithInvalidTarget) {
  Target noServer = TestFixture::serverTarget();
  noServer.server.clear();
  Target fanout = TestFixture::serverTarget();
  fanout.fanout = true;
  for (const Target& target : {noServer, fanout}) {
    CountingTransport counting(this->transport_);
    auto server = this->makeServer({calculator()}, &counting, target);
    for (int i = 0; i < 3; ++i) {
      EXPECT_CODE(server->start(), StatusCode::kInvalidTarget);
      EXPECT_FALSE(server->isRunning());
    }
    EXPECT_EQ(counting.made(), 0);  // refused before listening
    server->stop();
    EXPECT_OK(server->wait(deadlineAfter(kShort)));
    EXPECT_CODE(server->execute(), StatusCode::kInvalidState);
    EXPECT_CODE(server->start(), StatusCode::kInvalidTarget);
  }
}

// ----- stress -----------------------------------------------------------------------------------

// Three threads run start()/stop()/wait() cycles on one server (1002 cycles in all); for the
// blocking executor a fourth thread keeps calling execute(). No call fails or hangs, and the
// server serves normally afterwards.
TYPED_TEST(ServerLifecycleTest, OneThousandStartStopWaitCyclesFromSeveralThreads) {
  constexpr bool blocking = TestFixture::kBlocking;
  constexpr int kThreads = 3;
  constexpr int kCycles = 334;
  constexpr long kMaxExecutes = 5'000'000;  // the bound of the execute() thread's loop
  auto server = this->makeServer({calculator()});

  std::mutex failuresMutex;
  std::vector<std::string> failures;  // guarded by failuresMutex
  auto fail = [&](std::string what) {
    std::lock_guard<std::mutex> lock(failuresMutex);
    if (failures.size() < 10) failures.push_back(std::move(what));
  };

  std::atomic<bool> cyclesDone{false};
  std::atomic<long> executes{0};
  std::future<void> executor;
  if (blocking) {
    executor = std::async(std::launch::async, [&] {
      for (long n = 0; n < kMaxExecutes && !cyclesDone.load(); ++n) {
        const Status s = server->execute();
        executes.fetch_add(1);
        if (!s && s.code() != StatusCode::kInvalidState) fail("execute(): " + s.toString());
        std::this_thread::yield();  // execute() returned at once: let the cycling threads run
      }
    });
  }

  std::latch go(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      for (int c = 0; c < kCycles; ++c) {
        if (Status s = server->start(); !s) fail("start(): " + s.toString());
        server->stop();
        if (Status s = server->wait(deadlineAfter(5s)); !s) fail("wait(): " + s.toString());
      }
    });
  }
  for (auto& t : threads) t.join();
  cyclesDone = true;
  if (blocking) {
    ASSERT_TRUE(readyWithin(executor, 5s)) << "execute() hung after the cycles";
  }
  {
    std::lock_guard<std::mutex> lock(failuresMutex);
    EXPECT_TRUE(failures.empty()) << ::testing::PrintToString(failures);
  }
  EXPECT_FALSE(server->isRunning());  // every cycle's start() was followed by its stop()

  ASSERT_OK(server->start());
  Serving serving(*server, blocking);
  ASSERT_NO_FATAL_FAILURE(expectAdds(this->client(), 40, 2));
  expectCleanStop(*server, serving);
}

// ----- destructor -------------------------------------------------------------------------------

// Destroying a running server stops it and waits: a call in flight, completed by its handler
// only after another thread opens the gate (once the destructor has begun), still gets its reply.
TYPED_TEST(ServerLifecycleTest, DestructorStopsAndWaitsForTheCallInFlight) {
  SlowMethod slow;
  Endpoint ep;
  slow.addTo(ep);
  auto server = this->makeServer({ep});
  ASSERT_OK(server->start());
  auto serving = std::make_unique<Serving>(*server, TestFixture::kBlocking);
  RpcClient client = this->client();
  boost::future<Result<Value>> call = client.callAsync("slow", {});
  ASSERT_TRUE(slow.hasEntered());

  // The releaser watches for the destructor's stop(); the destructor cannot get past its wait()
  // before the gate opens, so reading isRunning() until then is safe.
  MessageHandlingServer* raw = server.get();
  std::thread releaser([&slow, raw] {
    const Deadline bound = deadlineAfter(kWait);
    while (raw->isRunning() && Clock::now() < bound) std::this_thread::yield();
    slow.release.open();
  });
  serving->forgetServer();
  server.reset();  // ~MessageHandlingServer: stop() + wait()
  releaser.join();
  EXPECT_TRUE(slow.finished.load()) << "the destructor returned before the handler finished";
  ASSERT_NO_FATAL_FAILURE(expectIntReply(call, 7));
  ASSERT_TRUE(serving->returned());
  EXPECT_OK(serving->status());
}

// ----- stats ------------------------------------------------------------------------------------

TYPED_TEST(ServerLifecycleTest, StatsCountReceivedRepliedAndFailed) {
  std::promise<std::string> noted;
  Endpoint ep = calculator();
  ep.method("note", [&](std::string s) { noted.set_value(std::move(s)); });
  auto server = this->makeServer({ep});
  ASSERT_OK(server->start());
  Serving serving(*server, TestFixture::kBlocking);
  RpcClient client = this->client();
  ASSERT_NO_FATAL_FAILURE(expectAdds(client, 1, 2));
  EXPECT_CODE(client.callValue("fail", {"boom"}).status(), StatusCode::kRemoteError);
  EXPECT_CODE(client.callValue("add", {1}).status(), StatusCode::kBadArguments);
  EXPECT_CODE(client.callValue("nope", {}).status(), StatusCode::kNoSuchMethod);
  ASSERT_OK(client.cast("note", "hi"));
  auto notedF = noted.get_future();
  ASSERT_TRUE(readyWithin(notedF));
  EXPECT_EQ(notedF.get(), "hi");
  server->stop();
  ASSERT_TRUE(serving.returned());
  ASSERT_OK(server->wait(deadlineAfter(kWait)));
  // Read after wait(): a reply reaches the client before the server bumps its counter.
  const MessageHandlingServer::Stats stats = server->stats();
  EXPECT_EQ(stats.received, 5u);  // four calls and a cast
  EXPECT_EQ(stats.replied, 4u);
  EXPECT_EQ(stats.failed, 3u);
  EXPECT_EQ(stats.rejected, 0u);
  EXPECT_EQ(stats.dropped, 0u);
  EXPECT_EQ(stats.cancelled, 0u);
}

}  // namespace
}  // namespace switchboard
