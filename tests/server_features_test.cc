// Server features end to end over the in-memory transport: the Serializer hook, overload
// answered Overloaded, the built-ins, and ShuttingDown for calls that arrive while draining.
#include <gtest/gtest.h>

#include <latch>

#include "executors/thread_pool_executor.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/test_util.h"
#include "transports/in_memory_transport.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::Gate;
constexpr auto kWait = 10s;

// A method "block" that holds its calls: each counts `entered` down, then waits (bounded by
// kWait) until `release` opens, and returns 1. Declare it before the server that calls it.
struct HeldMethod {
  std::latch entered{1};  // counted down by the first call only
  std::atomic<int> calls{0};
  Gate release;

  void addTo(Endpoint& ep) {
    ep.method("block", [this]() {
      if (calls.fetch_add(1) == 0) entered.count_down();
      (void)release.wait(kWait);
      return 1;
    });
  }
};

// Wraps every entity as {"wrapped": x} on the way out and unwraps it on the way in, and turns
// the context's "user" into upper case on arrival: both directions are observable.
class WrappingSerializer final : public Serializer {
 public:
  Value serializeEntity(const Context&, Value entity) const override {
    return Map{{"wrapped", std::move(entity)}};
  }
  Value deserializeEntity(const Context&, Value wire) const override {
    const Value* inner = wire.find("wrapped");
    if (inner == nullptr) throw std::invalid_argument("entity not wrapped");
    return *inner;
  }
  Context deserializeContext(const Value& wire) const override {
    const Value* user = wire.find("user");
    if (user == nullptr || !user->isString()) return wire;
    std::string upper = user->asString();
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return Map{{"user", upper}};
  }
};

TEST(ServerFeaturesTest, SerializerConvertsContextAndEntitiesBothWays) {
  InMemoryTransport transport;
  WrappingSerializer serializer;
  Endpoint ep;
  ep.method("add", [](int64_t a, int64_t b) { return a + b; });
  ep.method("who", [](CallContext& ctx) { return ctx.context(); });
  MessageHandlingServer::Options serverOptions;
  serverOptions.serializer = &serializer;
  MessageHandlingServer server(transport, Target{.topic = "t", .server = "s"},
                               RpcDispatcher({ep}), testing::ThreadPoolKind::make(),
                               serverOptions);
  ASSERT_TRUE(server.start().isOk());
  RpcClient::Options clientOptions;
  clientOptions.serializer = &serializer;
  clientOptions.timeout = kWait;
  clientOptions.context = Map{{"user", "alice"}};
  RpcClient client = RpcClient::create(transport, Target{.topic = "t"}, clientOptions).value();
  EXPECT_EQ(client.call<int64_t>("add", 2, 3).value(), 5);
  EXPECT_EQ(client.callValue("who", {}).value(), Value(Map{{"user", "ALICE"}}));
  // A client without the serializer sends unwrapped entities: the server's serializer refuses.
  RpcClient plain = RpcClient::create(transport, Target{.topic = "t"}).value();
  EXPECT_EQ(plain.callValue("add", {2, 3}).status().code(), StatusCode::kBadArguments);
  server.stop();
  ASSERT_TRUE(server.wait(deadlineAfter(kWait)).isOk());
}

TEST(ServerFeaturesTest, AFullPoolAnswersOverloadedAndServesTheAdmittedCalls) {
  InMemoryTransport transport;
  HeldMethod held;
  Endpoint ep;
  held.addTo(ep);
  ThreadPoolExecutor::Options pool;
  pool.threads = 1;
  pool.queueCapacity = 1;
  pool.maxInFlight = 2;
  MessageHandlingServer server(transport, Target{.topic = "t", .server = "s"},
                               RpcDispatcher({ep}), std::make_unique<ThreadPoolExecutor>(pool));
  ASSERT_TRUE(server.start().isOk());
  RpcClient client = RpcClient::create(transport, Target{.topic = "t"}).value();
  auto first = client.callAsync("block", {});
  held.entered.wait();  // the one worker is busy
  std::vector<boost::future<Result<Value>>> more;
  for (int i = 0; i < 5; ++i) more.push_back(client.callAsync("block", {}));
  // The excess is answered at once, while the worker is still blocked.
  int overloaded = 0;
  for (int i = 1; i < 5; ++i) {
    ASSERT_EQ(more[i].wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    Result<Value> r = more[i].get();
    if (r.status().code() == StatusCode::kOverloaded) ++overloaded;
  }
  EXPECT_EQ(overloaded, 4);
  held.release.open();
  ASSERT_EQ(first.wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
  EXPECT_EQ(first.get().value(), Value(1));
  ASSERT_EQ(more[0].wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
  EXPECT_EQ(more[0].get().value(), Value(1)) << "the queued call is admitted and served";
  server.stop();
  ASSERT_TRUE(server.wait(deadlineAfter(kWait)).isOk());
  EXPECT_EQ(server.stats().rejected, 4u);
}

TEST(ServerFeaturesTest, CallsArrivingWhileDrainingAreAnsweredShuttingDown) {
  InMemoryTransport transport;
  HeldMethod held;
  Endpoint ep;
  held.addTo(ep);
  MessageHandlingServer server(transport, Target{.topic = "t", .server = "s"},
                               RpcDispatcher({ep}), testing::ThreadPoolKind::make());
  ASSERT_TRUE(server.start().isOk());
  RpcClient client = RpcClient::create(transport, Target{.topic = "t"}).value();
  auto inFlight = client.callAsync("block", {});
  held.entered.wait();
  server.stop();  // draining: the blocked call holds the epoch open
  EXPECT_EQ(client.callValue("_health", {}).status().code(), StatusCode::kShuttingDown);
  held.release.open();
  ASSERT_EQ(inFlight.wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
  EXPECT_EQ(inFlight.get().value(), Value(1));
  ASSERT_TRUE(server.wait(deadlineAfter(kWait)).isOk());
}

TEST(ServerFeaturesTest, BuiltInsReportHealthAndIntrospection) {
  InMemoryTransport transport;
  Endpoint ep("admin", Version{2, 1});
  ep.method("add", [](int64_t a, int64_t b) { return a + b; }, {"a", "b"});
  ep.method("_hidden", []() {});
  MessageHandlingServer server(transport, Target{.topic = "t", .server = "s"},
                               RpcDispatcher({ep}), testing::EventLoopKind::make());
  ASSERT_TRUE(server.start().isOk());
  RpcClient client = RpcClient::create(transport, Target{.topic = "t"}).value();
  EXPECT_EQ(client.call<std::string>("_health").value(), "serving");
  Value expected = Array{Map{{"namespace", "admin"},
                             {"version", "2.1"},
                             {"methods", Array{Map{{"name", "add"},
                                                   {"signature", "add(a: integer, b: integer) -> integer"}}}}}};
  EXPECT_EQ(client.callValue("_introspect", {}).value(), expected);
  server.stop();
  ASSERT_TRUE(server.wait(deadlineAfter(kWait)).isOk());
}

}  // namespace
}  // namespace switchboard

namespace switchboard {
namespace {

TEST(ServerFeaturesTest, StatsCountEachMethodsOutcomesAndLatency) {
  InMemoryTransport transport;
  HeldMethod held;
  Endpoint ep;
  ep.method("add", [](int64_t a, int64_t b) { return a + b; });
  held.addTo(ep);
  MessageHandlingServer server(transport, Target{.topic = "t", .server = "s"},
                               RpcDispatcher({ep}), testing::ThreadPoolKind::make());
  ASSERT_TRUE(server.start().isOk());
  RpcClient client =
      RpcClient::create(transport, Target{.topic = "t"}, {.timeout = kWait}).value();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(client.call<int64_t>("add", i, 1).value(), i + 1);
  EXPECT_CODE(client.callValue("add", {"x", 1}).status(), StatusCode::kBadArguments);
  for (int i = 0; i < 2; ++i) {
    EXPECT_CODE(client.callValue("made-up-" + std::to_string(i), {}).status(),
                StatusCode::kNoSuchMethod);
  }
  auto blocked = client.callAsync("block", {});
  held.entered.wait();
  EXPECT_EQ(server.stats().inFlight, 1u);
  held.release.open();
  EXPECT_EQ(blocked.get().value(), Value(1));

  const MessageHandlingServer::Stats stats = server.stats();
  EXPECT_EQ(stats.inFlight, 0u);
  const auto& add = stats.methods.at("add");
  EXPECT_EQ(add.outcomes.at("Ok"), 3u);
  EXPECT_EQ(add.outcomes.at("BadArguments"), 1u);
  EXPECT_EQ(add.latency.count, 4u);
  EXPECT_GT(add.latency.percentile(1.0).count(), 0);
  EXPECT_EQ(stats.methods.at("(unknown)").outcomes.at("NoSuchMethod"), 2u)
      << "names a caller makes up share one entry";
  EXPECT_EQ(stats.methods.count("made-up-0"), 0u);
  EXPECT_EQ(stats.methods.at("block").latency.count, 1u);
  server.stop();
  ASSERT_TRUE(server.wait(deadlineAfter(kWait)).isOk());
}

TEST(LatencyHistogramTest, BucketsBoundTheirSamplesAndPercentilesFollow) {
  for (uint64_t us : {0ull, 1ull, 4ull, 5ull, 8ull, 9ull, 1000ull, 123456ull, 1ull << 33}) {
    const size_t b = LatencyHistogram::bucketOf(us);
    EXPECT_GE(HistogramSnapshot::upperMicros(b), us) << us;
    if (b > 0 && us > 4) {
      EXPECT_LT(HistogramSnapshot::upperMicros(b - 1), us) << us;
    }
  }
  LatencyHistogram h;
  for (int i = 1; i <= 100; ++i) h.record(std::chrono::microseconds(i * 100));
  const HistogramSnapshot s = h.snapshot();
  EXPECT_EQ(s.count, 100u);
  EXPECT_EQ(s.mean(), std::chrono::microseconds(5050));
  // Bounds are at most a quarter of an octave above the exact value.
  EXPECT_GE(s.percentile(0.5), 5000us);
  EXPECT_LE(s.percentile(0.5), 6250us);
  EXPECT_GE(s.percentile(0.99), 9900us);
  EXPECT_LE(s.percentile(0.99), 12500us);
}

}  // namespace
}  // namespace switchboard
