// The Registry contract over the in-memory and the Redis backends (a redis-server child per
// test), each backend's own cases (a manual clock for in-memory; outages for Redis), and the
// static registry with its file format.
#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "discovery/in_memory_registry.h"
#include "discovery/redis_registry.h"
#include "discovery/registry.h"
#include "discovery/static_registry.h"
#include "support/manual_timer_queue.h"
#include "support/redis_server.h"
#include "support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::kDefaultWait;
using testing::LogCapture;
using testing::ManualTimerQueue;
using testing::RedisServer;
using Urls = std::vector<std::string>;

constexpr Duration kTtl = 300ms;
constexpr Duration kRefresh = 100ms;
const std::string A = "tcp://127.0.0.1:1001", B = "tcp://127.0.0.1:1002";

// Every list a watch was given, in order. Must outlive the watch it records.
class WatchRecord {
 public:
  Registry::WatchCallback callback() {
    return [this](const Urls& urls) {
      std::lock_guard<std::mutex> lock(mutex_);
      lists_.push_back(urls);
      cv_.notify_all();
    };
  }
  // True once the latest list is `expected`; false if `bound` passed first.
  bool waitForLatest(const Urls& expected, Duration bound = kDefaultWait) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, bound, [&] { return !lists_.empty() && lists_.back() == expected; });
  }
  std::vector<Urls> lists() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lists_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Urls> lists_;  // guarded by mutex_
};

RedisRegistry::Options redisOptions(const RedisServer& server, LogSink log) {
  return {.url = server.url(),
          .connectTimeout = 500ms,
          .commandTimeout = 500ms,
          .refreshInterval = kRefresh,
          .backoffInitial = 20ms,
          .backoffMax = 200ms,
          .log = std::move(log)};
}

std::unique_ptr<Registry> makeRedisRegistry(RedisRegistry::Options options) {
  Result<std::unique_ptr<RedisRegistry>> made = RedisRegistry::create(std::move(options));
  EXPECT_OK(made.status());
  return made ? std::move(*made) : nullptr;
}

struct InMemoryKind {
  void setUp() {}
  std::unique_ptr<Registry> make(LogSink log) {
    return std::make_unique<InMemoryRegistry>(
        store, InMemoryRegistry::Options{.refreshInterval = kRefresh, .log = std::move(log)});
  }
  InMemoryRegistryStore store;
};

struct RedisKind {
  void setUp() { SWITCHBOARD_START_REDIS(server); }
  std::unique_ptr<Registry> make(LogSink log) {
    return makeRedisRegistry(redisOptions(*server, std::move(log)));
  }
  std::optional<RedisServer> server;
};

template <typename Kind>
class RegistryContractTest : public ::testing::Test {
 protected:
  void SetUp() override { kind_.setUp(); }
  // A registry on the shared backend: another process's, as far as the others can tell.
  std::unique_ptr<Registry> make() { return kind_.make(log_.sink()); }
  std::unique_ptr<Registry::Registration> registerServer(Registry& r, const std::string& server,
                                                         const std::string& url) {
    auto made = r.registerServer({.topic = "t", .server = server, .url = url}, kTtl);
    EXPECT_OK(made.status());
    return made ? std::move(*made) : nullptr;
  }
  std::unique_ptr<Registry::Watch> watch(Registry& r, const std::string& key, WatchRecord& record) {
    auto made = r.watch(key, record.callback());
    EXPECT_OK(made.status());
    return made ? std::move(*made) : nullptr;
  }
  Urls lookup(Registry& r, std::string_view key) {
    Result<Urls> urls = r.lookup(key);
    EXPECT_OK(urls.status()) << key;
    return urls.valueOr({});
  }

  LogCapture log_;
  Kind kind_;
};

using Kinds = ::testing::Types<InMemoryKind, RedisKind>;
class KindNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, RedisKind> ? "Redis" : "InMemory";
  }
};
TYPED_TEST_SUITE(RegistryContractTest, Kinds, KindNames);

TYPED_TEST(RegistryContractTest, RegisteredServerIsFoundByTopicAndByServer) {
  auto registry = this->make();
  auto registration = this->registerServer(*registry, "s1", A);
  auto client = this->make();
  EXPECT_EQ(this->lookup(*client, "t"), Urls{A});
  EXPECT_EQ(this->lookup(*client, "t.s1"), Urls{A});
  EXPECT_EQ(this->lookup(*client, "t.s2"), Urls{});
  EXPECT_EQ(this->lookup(*client, "other"), Urls{});
  EXPECT_EQ(registry->stats().registrations, 1u);
}

TYPED_TEST(RegistryContractTest, TopicListsEveryServerSortedWithoutDuplicates) {
  auto registry = this->make();
  auto second = this->registerServer(*registry, "s2", B);
  auto first = this->registerServer(*registry, "s1", A);
  auto sameUrl = this->registerServer(*registry, "s3", A);
  EXPECT_EQ(this->lookup(*registry, "t"), (Urls{A, B}));
  EXPECT_EQ(this->lookup(*registry, "t.s3"), Urls{A});
  EXPECT_EQ(this->lookup(*registry, "t.s2"), Urls{B});
}

TYPED_TEST(RegistryContractTest, CloseRemovesTheEntryAndIsIdempotent) {
  auto registry = this->make();
  auto registration = this->registerServer(*registry, "s1", A);
  auto kept = this->registerServer(*registry, "s2", B);
  EXPECT_OK(registration->close());
  EXPECT_EQ(this->lookup(*registry, "t"), Urls{B});
  EXPECT_EQ(this->lookup(*registry, "t.s1"), Urls{});
  EXPECT_OK(registration->close());
  kept.reset();  // the destructor closes too
  EXPECT_EQ(this->lookup(*registry, "t"), Urls{});
  EXPECT_EQ(registry->stats().unregistrations, 2u);
}

TYPED_TEST(RegistryContractTest, RefreshedRegistrationOutlivesItsTtl) {
  auto registry = this->make();
  auto registration = this->registerServer(*registry, "s1", A);
  auto client = this->make();
  WatchRecord record;
  auto watch = this->watch(*client, "t", record);
  EXPECT_FALSE(record.waitForLatest({}, 4 * kTtl)) << "expired although refreshed";
  EXPECT_EQ(record.lists(), std::vector<Urls>{{A}});
  EXPECT_GE(registry->stats().refreshes, 3u);
}

// A server that dies without unregistering: its registry goes (refreshes stop, nothing is
// removed), and the entry expires by its TTL.
TYPED_TEST(RegistryContractTest, AbandonedRegistrationExpires) {
  auto client = this->make();
  WatchRecord record;
  auto watch = this->watch(*client, "t", record);
  auto dying = this->make();
  auto registration = this->registerServer(*dying, "s1", A);
  ASSERT_TRUE(record.waitForLatest({A}));
  const Deadline died = Clock::now();
  dying.reset();
  EXPECT_CODE(registration->close(), StatusCode::kShuttingDown);
  ASSERT_TRUE(record.waitForLatest({}));
  EXPECT_GE(Clock::now() - died, kTtl - kTtl / 3) << "gone before its TTL";
  EXPECT_EQ(this->lookup(*client, "t.s1"), Urls{});
  EXPECT_EQ(record.lists(), (std::vector<Urls>{{}, {A}, {}}));
}

TYPED_TEST(RegistryContractTest, WatchGetsTheInitialListThenJoinsAndLeaves) {
  auto servers = this->make();
  auto first = this->registerServer(*servers, "s1", A);
  auto client = this->make();
  WatchRecord record;
  auto watch = this->watch(*client, "t", record);
  EXPECT_EQ(record.lists(), std::vector<Urls>{{A}}) << "the initial list comes before watch() returns";
  auto second = this->registerServer(*servers, "s2", B);
  ASSERT_TRUE(record.waitForLatest({A, B}));
  EXPECT_OK(first->close());
  ASSERT_TRUE(record.waitForLatest({B}));
  EXPECT_EQ(record.lists(), (std::vector<Urls>{{A}, {A, B}, {B}}));
  EXPECT_GE(client->stats().watchCallbacks, 3u);
}

TYPED_TEST(RegistryContractTest, WatchOfAServerKeySeesThatServerOnly) {
  auto client = this->make();
  WatchRecord record;
  auto watch = this->watch(*client, "t.s2", record);
  auto servers = this->make();
  auto first = this->registerServer(*servers, "s1", A);
  auto second = this->registerServer(*servers, "s2", B);
  ASSERT_TRUE(record.waitForLatest({B}));
  EXPECT_EQ(record.lists(), (std::vector<Urls>{{}, {B}}));
}

TYPED_TEST(RegistryContractTest, ReleasedWatchIsNotCalledAgain) {
  auto client = this->make();
  WatchRecord released, kept;
  auto watch = this->watch(*client, "t", released);
  auto keptWatch = this->watch(*client, "t", kept);
  watch->release();
  watch->release();
  auto registry = this->make();
  auto registration = this->registerServer(*registry, "s1", A);
  ASSERT_TRUE(kept.waitForLatest({A}));
  EXPECT_EQ(released.lists(), std::vector<Urls>{{}});
}

TYPED_TEST(RegistryContractTest, ReleaseWaitsForARunningCallback) {
  auto client = this->make();
  testing::Gate entered, proceed;
  auto watch = client->watch("t", [&](const Urls& urls) {
    if (urls.empty()) return;  // the initial list
    entered.open();
    proceed.wait();
  });
  ASSERT_OK(watch.status());
  auto registry = this->make();
  auto registration = this->registerServer(*registry, "s1", A);
  ASSERT_TRUE(entered.wait());
  auto releasing = std::async(std::launch::async, [&] { (*watch)->release(); });
  EXPECT_FALSE(testing::readyWithin(releasing, 50ms)) << "release() did not wait for the callback";
  proceed.open();
  EXPECT_TRUE(testing::readyWithin(releasing));
}

TYPED_TEST(RegistryContractTest, ReleaseFromTheCallbackDoesNotWaitForItself) {
  auto client = this->make();
  std::unique_ptr<Registry::Watch> self;  // set before the change that calls back on it
  std::promise<void> released;
  auto watch = client->watch("t", [&](const Urls& urls) {
    if (urls.empty()) return;  // the initial list
    self->release();
    released.set_value();
  });
  ASSERT_OK(watch.status());
  self = std::move(*watch);
  auto registry = this->make();
  auto registration = this->registerServer(*registry, "s1", A);
  auto done = released.get_future();
  EXPECT_TRUE(testing::readyWithin(done));
}

TYPED_TEST(RegistryContractTest, BadInputIsATypedError) {
  auto registry = this->make();
  EXPECT_CODE(registry->registerServer({.topic = "", .server = "s", .url = A}, kTtl).status(),
              StatusCode::kInvalidTarget);
  EXPECT_CODE(registry->registerServer({.topic = "t", .server = "", .url = A}, kTtl).status(),
              StatusCode::kInvalidTarget);
  EXPECT_CODE(registry->registerServer({.topic = "t", .server = "s", .url = ""}, kTtl).status(),
              StatusCode::kInvalidTarget);
  EXPECT_CODE(registry->registerServer({.topic = "t t", .server = "s", .url = A}, kTtl).status(),
              StatusCode::kInvalidTarget);
  EXPECT_CODE(registry->registerServer({.topic = "t", .server = "s", .url = A}, 2ms).status(),
              StatusCode::kBadArguments);
  EXPECT_CODE(registry->lookup("").status(), StatusCode::kInvalidTarget);
  EXPECT_CODE(registry->lookup("a\nb").status(), StatusCode::kInvalidTarget);
  EXPECT_CODE(registry->watch("t", nullptr).status(), StatusCode::kBadArguments);
  EXPECT_CODE(registry->watch("", [](const Urls&) {}).status(), StatusCode::kInvalidTarget);
  EXPECT_EQ(registry->stats().registrations, 0u);
}

// --- In memory, on a manual clock: expiry exactly when the TTL says -------------------------

class InMemoryRegistryTest : public ::testing::Test {
 protected:
  InMemoryRegistry::Options options() {
    return {.refreshInterval = kRefresh, .timers = &timers_, .log = log_.sink()};
  }
  LogCapture log_;
  ManualTimerQueue timers_;
  InMemoryRegistryStore store_{[this] { return timers_.now(); }};
};

TEST_F(InMemoryRegistryTest, AbandonedEntryExpiresExactlyAtItsTtl) {
  InMemoryRegistry client(store_, options());
  WatchRecord record;
  auto watch = client.watch("t", record.callback());
  ASSERT_OK(watch.status());
  auto dying = std::make_unique<InMemoryRegistry>(store_, options());
  auto registration = dying->registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
  ASSERT_OK(registration.status());
  timers_.runDue();
  EXPECT_EQ(record.lists(), (std::vector<Urls>{{}, {A}}));
  timers_.advance(kTtl / 3);  // refreshed once
  dying.reset();              // expiry now 300 ms after that refresh
  timers_.advance(kTtl - 1ms);
  EXPECT_EQ(client.lookup("t").valueOr({}), Urls{A});
  timers_.advance(1ms);
  EXPECT_EQ(record.lists(), (std::vector<Urls>{{}, {A}, {}}));
  EXPECT_EQ(client.lookup("t.s1").valueOr({A}), Urls{});
}

TEST_F(InMemoryRegistryTest, RefreshesEveryThirdOfTheTtl) {
  InMemoryRegistry registry(store_, options());
  auto registration = registry.registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
  ASSERT_OK(registration.status());
  timers_.advance(10 * kTtl);
  EXPECT_EQ(registry.stats().refreshes, 30u);
  EXPECT_EQ(registry.lookup("t").valueOr({}), Urls{A});
}

TEST_F(InMemoryRegistryTest, DestroyedRegistryLeavesNoTimer) {
  {
    InMemoryRegistry registry(store_, options());
    auto registration = registry.registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
    auto watch = registry.watch("t", [](const Urls&) {});
    EXPECT_GT(timers_.scheduled(), 0u);
  }
  EXPECT_EQ(timers_.scheduled(), 0u);
}

// --- Redis: key layout, notifications, outages ----------------------------------------------

class RedisRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { SWITCHBOARD_START_REDIS(redis_); }
  std::unique_ptr<Registry> make(LogCapture& log) {
    return makeRedisRegistry(redisOptions(*redis_, log.sink()));
  }
  std::string redisCommand(const std::string& command) {
    return testing::redisInlineCommand(redis_->port(), command, deadlineAfter(kDefaultWait))
        .value_or("(no reply)");
  }

  LogCapture serverLog_, clientLog_;
  std::optional<RedisServer> redis_;
};

TEST_F(RedisRegistryTest, KeysAreSortedSetsThatExpireThemselves) {
  auto registry = make(serverLog_);
  auto registration = registry->registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
  ASSERT_OK(registration.status());
  EXPECT_EQ(redisCommand("TYPE switchboard:t"), "+zset");
  EXPECT_EQ(redisCommand("ZCARD switchboard:t"), ":1");
  EXPECT_EQ(redisCommand("ZCARD switchboard:t.s1"), ":1");
  const std::string pttl = redisCommand("PTTL switchboard:t");
  ASSERT_EQ(pttl.substr(0, 1), ":") << pttl;
  const int ms = std::stoi(pttl.substr(1));
  EXPECT_GT(ms, 0);
  EXPECT_LE(ms, 300);
  EXPECT_OK((*registration)->close());
  EXPECT_EQ(redisCommand("EXISTS switchboard:t"), ":0");
}

// The client re-reads only on notifications (its periodic re-read is an hour away).
TEST_F(RedisRegistryTest, ChangesArriveByPublishedNotifications) {
  RedisRegistry::Options options = redisOptions(*redis_, clientLog_.sink());
  options.refreshInterval = 1h;
  auto client = makeRedisRegistry(options);
  WatchRecord record;
  auto watch = client->watch("t", record.callback());
  ASSERT_OK(watch.status());
  auto registry = make(serverLog_);
  auto registration = registry->registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
  ASSERT_TRUE(record.waitForLatest({A}));
  EXPECT_GE(client->stats().notifications, 1u);
}

TEST_F(RedisRegistryTest, RedisStoppedAndRestartedWhileWatchesAndRegistrationsContinue) {
  auto registry = make(serverLog_);
  auto registration = registry->registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
  ASSERT_OK(registration.status());
  auto client = make(clientLog_);
  WatchRecord record;
  auto watch = client->watch("t", record.callback());
  ASSERT_OK(watch.status());
  ASSERT_EQ(record.lists(), std::vector<Urls>{{A}});

  redis_->kill();
  // Four failed re-reads later, the client still has its list and the watch was not emptied.
  ASSERT_TRUE(clientLog_.waitFor(LogLevel::kWarning, "keep their last lists (failures=4"))
      << clientLog_.dump();
  EXPECT_EQ(client->lookup("t").valueOr({}), Urls{A});
  EXPECT_EQ(record.lists(), std::vector<Urls>{{A}});
  const RegistryStats outage = client->stats();
  EXPECT_GE(outage.lookupsFromCache, 4u);
  EXPECT_EQ(outage.outages, 1u);
  EXPECT_CODE(client->lookup("never.read").status(), StatusCode::kTransportError);
  ASSERT_TRUE(serverLog_.waitFor(LogLevel::kWarning, "registry failing")) << serverLog_.dump();

  ASSERT_TRUE(redis_->restart()) << redis_->error();
  // The refresher writes the entry again (the new server started empty)...
  auto fresh = make(clientLog_);
  WatchRecord freshRecord;
  auto freshWatch = fresh->watch("t", freshRecord.callback());
  ASSERT_OK(freshWatch.status());
  ASSERT_TRUE(freshRecord.waitForLatest({A}));
  // ...and the first client follows changes again.
  auto second = registry->registerServer({.topic = "t", .server = "s2", .url = B}, kTtl);
  ASSERT_OK(second.status());
  ASSERT_TRUE(record.waitForLatest({A, B}));
  EXPECT_TRUE(clientLog_.waitFor(LogLevel::kInfo, "registry reachable again"));
  EXPECT_GE(client->stats().reconnects, 1u);
  EXPECT_OK((*registration)->close());
  ASSERT_TRUE(record.waitForLatest({B}));
}

TEST_F(RedisRegistryTest, UnreachableAtFirstThenRegisteredOnceRedisAnswers) {
  const int port = redis_->port();
  redis_->kill();
  auto registry = make(serverLog_);
  auto registration = registry->registerServer({.topic = "t", .server = "s1", .url = A}, kTtl);
  ASSERT_OK(registration.status()) << "a backend that fails the first write is not an error";
  EXPECT_CODE(registry->lookup("t").status(), StatusCode::kTransportError);
  ASSERT_TRUE(redis_->restart()) << redis_->error();
  ASSERT_EQ(redis_->port(), port);
  auto client = make(clientLog_);
  WatchRecord record;
  auto watch = client->watch("t", record.callback());
  ASSERT_OK(watch.status());
  EXPECT_TRUE(record.waitForLatest({A}));
}

// Against the Redis the environment runs (SWITCHBOARD_REDIS_URL: .ci/run starts one on a
// loopback port with Redis's stock settings), not one the test started: two registries, as a
// server host and a client host would have, under keys no other run uses.
TEST(ProvidedRedisTest, RegisterWatchAndUnregisterOnTheEnvironmentsRedis) {
  const std::string url = testing::envOr("SWITCHBOARD_REDIS_URL", "");
  if (url.empty()) GTEST_SKIP() << "SWITCHBOARD_REDIS_URL is not set (.ci/run sets it)";
  LogCapture log;
  RedisRegistry::Options options{.url = url, .refreshInterval = kRefresh, .log = log.sink()};
  std::unique_ptr<Registry> server = makeRedisRegistry(options);
  std::unique_ptr<Registry> client = makeRedisRegistry(options);
  ASSERT_TRUE(server && client);
  const std::string topic = "provided-" + std::to_string(::getpid());
  WatchRecord record;
  auto watch = client->watch(topic, record.callback());
  ASSERT_OK(watch.status());
  auto registration = server->registerServer({.topic = topic, .server = "s1", .url = A}, 2s);
  ASSERT_OK(registration.status());
  ASSERT_TRUE(record.waitForLatest({A}));
  EXPECT_EQ(client->lookup(topic + ".s1").value(), Urls{A});
  ASSERT_OK((*registration)->close());
  ASSERT_TRUE(record.waitForLatest({}));
  EXPECT_EQ(client->stats().failures, 0u) << log.dump();
}

TEST(RedisRegistryOptionsTest, BadUrlsAndTimeoutsAreTypedErrors) {
  for (const char* url : {"", "http://h:1", "redis://", "redis://h:", "redis://h:0", "redis://h:65536",
                          "redis://h:x", "redis://h/x", "redis://h/-1", "redis://[::1", "redis://[::1]x",
                          "redis://:1"}) {
    EXPECT_CODE(RedisRegistry::create({.url = url}).status(), StatusCode::kInvalidTarget) << url;
  }
  EXPECT_CODE(RedisRegistry::create({.url = "redis://127.0.0.1:1", .commandTimeout = 0ms}).status(),
              StatusCode::kBadArguments);
  LogCapture log;  // nothing listens there: made anyway, it connects when it can
  for (const char* url : {"redis://127.0.0.1:1/2", "redis://[::1]:1"}) {
    EXPECT_OK(RedisRegistry::create({.url = url, .log = log.sink()}).status()) << url;
  }
}

// --- Static ---------------------------------------------------------------------------------

struct ParseCase {
  std::string text;
  std::vector<RegistryEntry> entries;  // when it parses
  std::string error;                   // a part of the message when it does not
};

TEST(StaticRegistryTest, FileFormat) {
  const std::vector<ParseCase> cases = {
      {"", {}, ""},
      {"# comment only\n\n   \n", {}, ""},
      {"t tcp://a:1\n", {{.topic = "t", .url = "tcp://a:1"}}, ""},
      {"  t\ttcp://a:1  s1  # trailing comment", {{.topic = "t", .server = "s1", .url = "tcp://a:1"}}, ""},
      {"t tcp://a:1\nu tcp://b:1\n", {{.topic = "t", .url = "tcp://a:1"}, {.topic = "u", .url = "tcp://b:1"}}, ""},
      {"t\n", {}, "f:1: expected 'topic url [server]', got 1 field"},
      {"# ok\nt tcp://a:1\nt tcp://b:1 s x\n", {}, "f:3: expected 'topic url [server]', got 4 fields"},
      {"t\x01 tcp://a:1\n", {}, "f:1: registry entry topic"},
  };
  for (const ParseCase& c : cases) {
    Result<std::vector<RegistryEntry>> parsed = parseRegistryFile(c.text, "f");
    if (c.error.empty()) {
      ASSERT_OK(parsed.status()) << c.text;
      EXPECT_EQ(*parsed, c.entries) << c.text;
    } else {
      EXPECT_CODE(parsed.status(), StatusCode::kInvalidTarget) << c.text;
      EXPECT_NE(parsed.status().message().find(c.error), std::string::npos) << parsed.status();
    }
  }
}

TEST(StaticRegistryTest, AnswersFromItsFile) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/registry";
  std::ofstream(path) << "t " << B << " s2\nt " << A << " s1\nt " << A << "\nother tcp://c:1\n";
  Result<std::unique_ptr<StaticRegistry>> made = StaticRegistry::fromFile(path);
  ASSERT_OK(made.status());
  StaticRegistry& registry = **made;
  EXPECT_EQ(registry.lookup("t").valueOr({}), (Urls{A, B}));
  EXPECT_EQ(registry.lookup("t.s2").valueOr({}), Urls{B});
  EXPECT_EQ(registry.lookup("nothing").valueOr({A}), Urls{});
  WatchRecord record;
  ASSERT_OK(registry.watch("t", record.callback()).status());
  EXPECT_EQ(record.lists(), (std::vector<Urls>{{A, B}}));
  EXPECT_CODE(registry.registerServer({.topic = "t", .server = "s3", .url = A}, kTtl).status(),
              StatusCode::kInvalidState);
  EXPECT_EQ(registry.stats().lookups, 4u);

  EXPECT_CODE(StaticRegistry::fromFile(dir.path() + "/missing").status(), StatusCode::kInvalidTarget);
  EXPECT_CODE(StaticRegistry::fromFile(dir.path()).status(), StatusCode::kInvalidTarget);
  EXPECT_CODE(StaticRegistry::create({{.topic = "t", .url = ""}}).status(), StatusCode::kInvalidTarget);
}

}  // namespace
}  // namespace switchboard
