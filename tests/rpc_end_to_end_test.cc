// End-to-end: RpcClient -> InMemoryTransport -> MessageHandlingServer -> endpoints and back,
// for every executor: call, callAsync, cast, fanout, several servers, exchanges, errors.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <latch>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/test_util.h"
#include "transports/in_memory_transport.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::Events;
using testing::ServingThread;

constexpr auto kWait = 10s;  // the bound of every wait in these tests

struct QuotaExceeded : std::runtime_error {
  explicit QuotaExceeded(const std::string& what) : std::runtime_error(what) {}
};

// One server on a topic, with its serving thread when the executor is blocking.
template <typename Kind>
class Served {
 public:
  Served(Transport& transport, Target target, std::vector<Endpoint> endpoints,
         MessageHandlingServer::Options options = {})
      : server_(transport, std::move(target), RpcDispatcher(std::move(endpoints)), Kind::make(),
                std::move(options)) {
    EXPECT_TRUE(server_.start().isOk());
    serving_ = std::make_unique<ServingThread>(server_, Kind::kBlocking);
  }
  ~Served() {
    server_.stop();
    EXPECT_TRUE(server_.wait(deadlineAfter(kWait)).isOk());
    serving_.reset();
  }
  MessageHandlingServer& server() { return server_; }

 private:
  MessageHandlingServer server_;
  std::unique_ptr<ServingThread> serving_;
};

Endpoint calculator() {
  Endpoint ep;
  ep.method("add", [](int64_t a, int64_t b) { return a + b; }, {"a", "b"});
  ep.method("echo", [](Value v) { return v; });
  ep.method("fail", [](std::string message) -> int { throw std::runtime_error(message); });
  ep.method("quota", []() -> int { throw QuotaExceeded("over quota"); });
  ep.method("_secret", []() { return 42; });
  ep.method("whoami", [](CallContext& ctx) { return ctx.context(); });
  return ep;
}

template <typename Kind>
class RpcEndToEndTest : public ::testing::Test {
 protected:
  Target serverTarget(std::string name, std::string topic = "calc") {
    Target t;
    t.topic = std::move(topic);
    t.server = std::move(name);
    return t;
  }
  RpcClient client(std::string topic = "calc", Duration timeout = kWait) {
    Target t;
    t.topic = std::move(topic);
    RpcClient::Options options;
    options.timeout = timeout;
    return RpcClient::create(transport_, t, options).value();
  }

  InMemoryTransport transport_;
};

using Kinds = ::testing::Types<testing::BlockingKind, testing::EventLoopKind,
                               testing::ThreadPoolKind>;
TYPED_TEST_SUITE(RpcEndToEndTest, Kinds);

TYPED_TEST(RpcEndToEndTest, CallReturnsTypedResults) {
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {calculator()});
  RpcClient client = this->client();
  EXPECT_EQ(client.template call<int64_t>("add", 2, 3).value(), 5);
  EXPECT_EQ(client.template call<std::string>("echo", "hi").value(), "hi");
  Result<Value> nested = client.callValue("echo", {Value(Array{1, "two", Map{{"k", 3.5}}})});
  ASSERT_TRUE(nested.isOk()) << nested.status();
  EXPECT_EQ(*nested, Value(Array{1, "two", Map{{"k", 3.5}}}));
  served.server().stop();
  ASSERT_TRUE(served.server().wait(deadlineAfter(kWait)).isOk());
  EXPECT_EQ(served.server().stats().replied, 3u);
}

TYPED_TEST(RpcEndToEndTest, ManyAsyncCallsInFlightFromOneThread) {
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {calculator()});
  RpcClient client = this->client();
  constexpr int kCalls = 200;
  std::vector<boost::future<Result<Value>>> futures;
  for (int i = 0; i < kCalls; ++i) futures.push_back(client.callAsync("add", {i, 1}));
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_EQ(futures[i].wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    Result<Value> r = futures[i].get();
    ASSERT_TRUE(r.isOk()) << r.status();
    EXPECT_EQ(r->asInt(), i + 1);
  }
}

TYPED_TEST(RpcEndToEndTest, CallbackAndContinuationGetExactlyOneOutcome) {
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {calculator()});
  RpcClient client = this->client();
  std::promise<int64_t> viaCallback;
  client.callAsync("add", {40, 2}, [&](Result<Value> r) { viaCallback.set_value(r->asInt()); });
  auto viaFuture = viaCallback.get_future();
  ASSERT_EQ(viaFuture.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(viaFuture.get(), 42);

  boost::future<int64_t> chained = client.callAsync("add", {1, 1}).then(
      [](boost::future<Result<Value>> f) { return f.get()->asInt() * 10; });
  ASSERT_EQ(chained.wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
  EXPECT_EQ(chained.get(), 20);
}

TYPED_TEST(RpcEndToEndTest, CastRunsTheHandlerWithoutReply) {
  std::promise<std::string> got;
  Endpoint ep;
  ep.method("note", [&](std::string s) { got.set_value(s); });
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep});
  RpcClient client = this->client();
  ASSERT_TRUE(client.cast("note", "hello").isOk());
  auto f = got.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get(), "hello");
  EXPECT_EQ(served.server().stats().replied, 0u);
}

TYPED_TEST(RpcEndToEndTest, FanoutCastReachesEveryServerOnce) {
  constexpr int kServers = 3;
  std::latch all(kServers);
  std::mutex mutex;
  std::multiset<std::string> hits;
  auto endpointFor = [&](std::string name) {
    Endpoint ep;
    ep.method("ping", [&, name]() {
      {
        std::lock_guard<std::mutex> lock(mutex);
        hits.insert(name);
      }
      all.count_down();
    });
    return ep;
  };
  Served<TypeParam> a(this->transport_, this->serverTarget("a"), {endpointFor("a")});
  Served<TypeParam> b(this->transport_, this->serverTarget("b"), {endpointFor("b")});
  Served<TypeParam> c(this->transport_, this->serverTarget("c"), {endpointFor("c")});
  RpcClient fanout = this->client().prepare({.fanout = true});
  ASSERT_TRUE(fanout.cast("ping").isOk());
  all.wait();
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(hits, (std::multiset<std::string>{"a", "b", "c"}));
  EXPECT_EQ(fanout.callValue("ping", {}).status().code(), StatusCode::kInvalidTarget);
}

TYPED_TEST(RpcEndToEndTest, SeveralServersOnOneTopicShareTheCalls) {
  auto named = [](std::string name) {
    Endpoint ep;
    ep.method("name", [name]() { return name; });
    return ep;
  };
  Served<TypeParam> a(this->transport_, this->serverTarget("a"), {named("a")});
  Served<TypeParam> b(this->transport_, this->serverTarget("b"), {named("b")});
  RpcClient client = this->client();
  constexpr int kCalls = 100;
  std::vector<boost::future<Result<Value>>> futures;
  for (int i = 0; i < kCalls; ++i) futures.push_back(client.callAsync("name", {}));
  int answered = 0;
  for (auto& f : futures) {
    ASSERT_EQ(f.wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    Result<Value> r = f.get();
    ASSERT_TRUE(r.isOk()) << r.status();
    EXPECT_TRUE(r->asString() == "a" || r->asString() == "b");
    ++answered;
  }
  EXPECT_EQ(answered, kCalls);
  // A call addressed to one server goes to that server only.
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(client.prepare({.server = "b"}).template call<std::string>("name").value(), "b");
  }
}

TYPED_TEST(RpcEndToEndTest, ExchangesAreIsolated) {
  std::atomic<int> calls{0};
  Endpoint ep;
  ep.method("count", [&]() { return ++calls; });
  Target inA = this->serverTarget("s1");
  inA.exchange = "a";
  Served<TypeParam> served(this->transport_, inA, {ep});
  RpcClient client = this->client("calc", 100ms);
  EXPECT_EQ(client.prepare({.exchange = "b"}).callValue("count", {}).status().code(),
            StatusCode::kTimeout);
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(client.prepare({.exchange = "a", .timeout = kWait}).template call<int>("count").value(),
            1);
}

TYPED_TEST(RpcEndToEndTest, BusyServerMakesTheCallTimeOutAndSeesTheCancellation) {
  std::latch release(1);
  std::promise<bool> sawCancel;
  Endpoint ep;
  ep.method("slow", [&](CallContext& ctx) {
    release.wait();
    // Cancellation arrives as the cancel message or as the passing of the caller's deadline,
    // whichever the executor sees first; either must show within the bound.
    const Deadline bound = deadlineAfter(kWait);
    while (!ctx.isCancelled() && Clock::now() < bound) std::this_thread::yield();
    sawCancel.set_value(ctx.isCancelled() && ctx.deadline() != kNoDeadline);
  });
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep});
  RpcClient client = this->client("calc", 100ms);
  Result<Value> r = client.callValue("slow", {});
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(client.stats().timeouts, 1u);
  release.count_down();
  auto f = sawCancel.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(f.get()) << "the handler runs past the caller's deadline: it must see it";
}

TYPED_TEST(RpcEndToEndTest, RemoteErrorsComeBackTyped) {
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {calculator()});
  RpcClient client = this->client();
  Result<Value> failed = client.callValue("fail", {"boom"});
  EXPECT_EQ(failed.status().code(), StatusCode::kRemoteError);
  EXPECT_EQ(failed.status().remoteType(), "std::runtime_error");
  EXPECT_EQ(failed.status().message(), "boom");
  EXPECT_THROW(failed.value(), StatusError);

  client.registerException<QuotaExceeded>();
  Result<int> quota = client.template call<int>("quota");
  EXPECT_EQ(quota.status().remoteType(), demangledTypeName(typeid(QuotaExceeded)));
  EXPECT_THROW(quota.value(), QuotaExceeded);

  Result<Value> arity = client.callValue("add", {1});
  EXPECT_EQ(arity.status().code(), StatusCode::kBadArguments);
  Result<Value> type = client.callValue("add", {1, "x"});
  EXPECT_EQ(type.status().code(), StatusCode::kBadArguments);
  EXPECT_NE(type.status().message().find("argument 2 ('b')"), std::string::npos)
      << type.status().message();
  EXPECT_EQ(client.callValue("nope", {}).status().code(), StatusCode::kNoSuchMethod);
  EXPECT_EQ(client.callValue("_secret", {}).status().code(), StatusCode::kNoSuchMethod);
  // The server keeps serving after every error.
  EXPECT_EQ(client.template call<int64_t>("add", 1, 2).value(), 3);
}

TYPED_TEST(RpcEndToEndTest, NamespacesAndVersionsSelectTheEndpoint) {
  Endpoint v1("billing", Version{1, 2});
  v1.method("plan", []() { return std::string("v1"); });
  Endpoint v2("billing", Version{2, 0});
  v2.method("plan", []() { return std::string("v2"); });
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {v1, v2, calculator()});
  RpcClient client = this->client().prepare({.ns = "billing"});
  EXPECT_EQ(client.prepare({.version = Version{1, 1}}).template call<std::string>("plan").value(),
            "v1");
  EXPECT_EQ(client.prepare({.version = Version{2, 0}}).template call<std::string>("plan").value(),
            "v2");
  EXPECT_EQ(client.prepare({.version = Version{1, 3}}).callValue("plan", {}).status().code(),
            StatusCode::kUnsupportedVersion);
  EXPECT_EQ(client.prepare({.version = Version{3, 0}}).callValue("plan", {}).status().code(),
            StatusCode::kUnsupportedVersion);
  EXPECT_EQ(client.prepare({.ns = "other"}).callValue("plan", {}).status().code(),
            StatusCode::kUnsupportedVersion);
  EXPECT_EQ(client.prepare({.version = Version{1, 0}}).callValue("nope", {}).status().code(),
            StatusCode::kNoSuchMethod);

  RpcClient capped = client.prepare({.version = Version{2, 0}, .versionCap = Version{1, 5}});
  EXPECT_FALSE(capped.canSendVersion(Version{2, 0}));
  EXPECT_TRUE(capped.canSendVersion(Version{1, 5}));
  EXPECT_FALSE(capped.canSendVersion(Version{1, 6}));
  EXPECT_EQ(capped.callValue("plan", {}).status().code(), StatusCode::kUnsupportedVersion);
}

TYPED_TEST(RpcEndToEndTest, ContextTravelsWithTheCall) {
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {calculator()});
  Map context{{"user", "alice"}, {"request", 7}};
  RpcClient client = this->client().prepare({.context = Value(context)});
  Result<Value> r = client.callValue("whoami", {});
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, Value(context));
}

TYPED_TEST(RpcEndToEndTest, DeferredRepliesLetOneServerHoldManySlowCalls) {
  // Each call parks its reply; the test completes them all once every one has arrived, which
  // only works if no handler blocks its executor thread.
  constexpr int kCalls = 20;
  std::mutex mutex;
  std::vector<std::pair<DeferredReply, int64_t>> parked;
  std::latch allParked(kCalls);
  Endpoint ep;
  ep.method("later", [&](CallContext& ctx, int64_t x) {
    std::lock_guard<std::mutex> lock(mutex);
    parked.emplace_back(ctx.defer(), x);
    allParked.count_down();
  });
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep});
  RpcClient client = this->client();
  std::vector<boost::future<Result<Value>>> futures;
  for (int i = 0; i < kCalls; ++i) futures.push_back(client.callAsync("later", {i}));
  allParked.wait();
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto& [reply, x] : parked) reply.complete(x * 2);
  }
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_EQ(futures[i].wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    EXPECT_EQ(futures[i].get()->asInt(), i * 2);
  }
}

TYPED_TEST(RpcEndToEndTest, CallsPastMaxUnansweredCallsAreRefusedOverloaded) {
  // Deferred calls count as unanswered: with three parked, a fourth is refused at once, and
  // once one is answered the next call is taken again.
  constexpr int kLimit = 3;
  std::mutex mutex;
  std::vector<DeferredReply> parked;
  Events parkedCount;
  Endpoint ep;
  ep.method("later", [&](CallContext& ctx) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      parked.push_back(ctx.defer());
    }
    parkedCount.add();
  });
  MessageHandlingServer::Options options;
  options.maxUnansweredCalls = kLimit;
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep}, std::move(options));
  RpcClient client = this->client();
  std::vector<boost::future<Result<Value>>> futures;
  for (int i = 0; i < kLimit; ++i) futures.push_back(client.callAsync("later", {}));
  ASSERT_TRUE(parkedCount.waitFor(kLimit, kWait));

  Result<Value> refused = client.callValue("later", {});
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(refused.status().code(), StatusCode::kOverloaded) << refused.status();
  EXPECT_EQ(served.server().stats().rejected, 1u);
  EXPECT_EQ(served.server().stats().inFlight, static_cast<uint64_t>(kLimit));

  {
    std::lock_guard<std::mutex> lock(mutex);
    parked.front().complete(1);
  }
  ASSERT_EQ(futures.front().wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
  EXPECT_TRUE(futures.front().get().isOk());
  futures.push_back(client.callAsync("later", {}));
  ASSERT_TRUE(parkedCount.waitFor(kLimit + 1, kWait)) << "a call under the limit was not taken";
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = 1; i < parked.size(); ++i) parked[i].complete(2);
  }
  for (size_t i = 1; i < futures.size(); ++i) {
    ASSERT_EQ(futures[i].wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    EXPECT_TRUE(futures[i].get().isOk());
  }
}

TYPED_TEST(RpcEndToEndTest, DeferredReplyCompletedByAnExecutorTimer) {
  Endpoint ep;
  ep.method("sleep", [](CallContext& ctx, int64_t ms) {
    auto reply = std::make_shared<DeferredReply>(ctx.defer());
    Status scheduled = ctx.executor()->runAt(deadlineAfter(std::chrono::milliseconds(ms)),
                                             [reply, ms] { reply->complete(ms); });
    if (!scheduled) reply->fail(scheduled);
  });
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep});
  RpcClient client = this->client();
  EXPECT_EQ(client.template call<int64_t>("sleep", 20).value(), 20);
}

TYPED_TEST(RpcEndToEndTest, StopAnswersEveryAcceptedCallExactlyOnce) {
  constexpr int kCalls = 50;
  std::atomic<int> handled{0};
  Endpoint ep;
  ep.method("work", [&]() { return ++handled; });
  RpcClient client = this->client();
  std::vector<boost::future<Result<Value>>> futures;
  {
    Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep});
    for (int i = 0; i < kCalls; ++i) futures.push_back(client.callAsync("work", {}));
    ASSERT_EQ(futures.back().wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
  }
  for (auto& f : futures) {
    ASSERT_EQ(f.wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    EXPECT_TRUE(f.get().isOk());
  }
  EXPECT_EQ(handled.load(), kCalls);
}

TYPED_TEST(RpcEndToEndTest, CallMonitorHeartbeatsKeepALongCallAlive) {
  // The call takes 300 ms, six times the monitor's 50 ms: heartbeats must carry it through.
  Endpoint ep;
  ep.method("slow", [](CallContext& ctx) {
    auto reply = std::make_shared<DeferredReply>(ctx.defer());
    (void)ctx.executor()->runAt(deadlineAfter(300ms), [reply] { reply->complete(7); });
  });
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {ep});
  RpcClient client = this->client().prepare({.callMonitorTimeout = 50ms});
  Result<Value> r = client.callValue("slow", {});
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, Value(7));
  EXPECT_GE(client.stats().heartbeats, 3u);
}

TEST(RpcClientTest, CallMonitorFailsFastWhenNoServerAnswers) {
  InMemoryTransport transport;  // nobody listens: no heartbeat will ever come
  RpcClient::Options options;
  options.timeout = 60s;
  options.callMonitorTimeout = 50ms;
  RpcClient client = RpcClient::create(transport, Target{.topic = "void"}, options).value();
  Result<Value> r = client.callValue("x", {});
  EXPECT_EQ(r.status().code(), StatusCode::kPeerLost);
  EXPECT_EQ(client.stats().peerLost, 1u);
  EXPECT_EQ(client.stats().timeouts, 0u);
}

TEST(RpcClientTest, TargetsAreValidated) {
  InMemoryTransport transport;
  EXPECT_EQ(RpcClient::create(transport, Target{}).status().code(), StatusCode::kInvalidTarget);
  Target noServer;
  noServer.topic = "t";
  MessageHandlingServer server(transport, noServer, RpcDispatcher({}),
                               testing::ThreadPoolKind::make());
  EXPECT_EQ(server.start().code(), StatusCode::kInvalidTarget);
}

TEST(RpcClientTest, DestroyingTheClientAnswersCallsInFlight) {
  InMemoryTransport transport;  // nobody listens: the call stays queued
  Target t;
  t.topic = "void";
  std::promise<StatusCode> outcome;
  {
    RpcClient client = RpcClient::create(transport, t).value();
    client.callAsync("x", {}, [&](Result<Value> r) { outcome.set_value(r.status().code()); });
  }
  auto f = outcome.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get(), StatusCode::kShuttingDown);
}

// An outcome callback that throws (here on the thread that received the reply) takes neither
// the process nor the client down: the exception is logged and counted, whatever its type, and
// later calls are answered as before.
TYPED_TEST(RpcEndToEndTest, AnOutcomeCallbackThatThrowsIsLoggedAndCounted) {
  Served<TypeParam> served(this->transport_, this->serverTarget("s1"), {calculator()});
  testing::LogCapture logged;
  RpcClient::Options options;
  options.timeout = kWait;
  options.log = logged.sink();
  RpcClient client = RpcClient::create(this->transport_, Target{.topic = "calc"}, options).value();
  std::promise<void> called;
  client.callAsync("add", {1, 2}, [&](Result<Value> r) {
    EXPECT_TRUE(r.isOk()) << r.status();
    called.set_value();
    throw std::runtime_error("boom from a callback");
  });
  std::future<void> calledOnce = called.get_future();
  ASSERT_TRUE(testing::readyWithin(calledOnce, kWait));
  ASSERT_TRUE(logged.waitFor(LogLevel::kError, "boom from a callback")) << logged.dump();
  client.callAsync("add", {1, 2}, [](Result<Value>) { throw 42; });
  ASSERT_TRUE(logged.waitFor(LogLevel::kError, "not derived from std::exception"))
      << logged.dump();
  EXPECT_EQ(client.template call<int64_t>("add", 2, 3).value(), 5);
  EXPECT_EQ(client.stats().callbackErrors, 2u);
}

}  // namespace
}  // namespace switchboard
