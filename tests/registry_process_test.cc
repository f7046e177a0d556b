// Service discovery end to end on loopback: a real redis-server, switchboard-server children that
// register in it (--registry), and a client whose Network follows the topic (RegistryNetwork).
// Servers join, die without unregistering, stop cleanly; Redis dies and comes back; a fanout
// reaches every live server; the CLI finds a server through the registry. Every wait is bounded
// and woken by an event (network events, watch callbacks, child output); no sleep synchronises.
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "discovery/redis_registry.h"
#include "messaging/registry_network.h"
#include "messaging/rpc_client.h"
#include "tests/support/call_load.h"
#include "tests/support/redis_server.h"
#include "tests/support/server_process.h"
#include "tests/support/test_util.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::LogCapture;
using testing::ServerProcess;

constexpr Duration kWait = 10s;
const std::string kTopic = "registry-test";

// The live URLs a watch of `key` reported last; waits for a condition on them.
class WatchedList {
 public:
  WatchedList(Registry& registry, const std::string& key) {
    Result<std::unique_ptr<Registry::Watch>> made =
        registry.watch(key, [this](const std::vector<std::string>& urls) {
          std::lock_guard<std::mutex> lock(mutex_);
          urls_ = urls;
          changed_.notify_all();
        });
    EXPECT_OK(made.status());
    if (made) watch_ = std::move(made).value();
  }
  ~WatchedList() {
    if (watch_) watch_->release();
  }
  bool waitFor(const std::function<bool(const std::vector<std::string>&)>& condition) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, kWait, [&] { return condition(urls_); });
  }
  bool waitForSize(size_t size) {
    return waitFor([&](const std::vector<std::string>& urls) { return urls.size() == size; });
  }
  std::vector<std::string> urls() {
    std::lock_guard<std::mutex> lock(mutex_);
    return urls_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> urls_;  // guarded by mutex_
  std::unique_ptr<Registry::Watch> watch_;
};

class RegistryProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SWITCHBOARD_START_REDIS(redis_);
    RedisRegistry::Options options{.url = redis_->url(),
                                   .connectTimeout = 500ms,
                                   .commandTimeout = 500ms,
                                   .refreshInterval = 100ms,
                                   .backoffInitial = 20ms,
                                   .backoffMax = 200ms,
                                   .log = log_.sink()};
    Result<std::unique_ptr<RedisRegistry>> made = RedisRegistry::create(options);
    ASSERT_OK(made.status());
    registry_ = std::move(made).value();
  }

  void TearDown() override {
    client_.reset();
    subscription_.release();
    followed_.reset();
    servers_.clear();  // killed: their entries expire with the Redis server
  }

  // A switchboard-server child registered under kTopic as `name`; returns once it said so.
  ServerProcess& startServer(const std::string& name, std::vector<std::string> extra = {},
                             const std::string& executor = "threadpool", int ttlMs = 600) {
    std::vector<std::string> args{"--registry",        redis_->url(), "--topic", kTopic,
                                  "--name",            name,          "--registry-ttl-ms",
                                  std::to_string(ttlMs)};
    args.insert(args.end(), extra.begin(), extra.end());
    auto server = std::make_unique<ServerProcess>(executor, "tcp://127.0.0.1:0", args);
    EXPECT_FALSE(server->url().empty()) << name << " did not start";
    const std::optional<std::string> line = server->process().readLine(deadlineAfter(kWait));
    EXPECT_TRUE(line && line->rfind("registered as " + kTopic + "." + name, 0) == 0)
        << name << ": " << line.value_or("(nothing)");
    ServerProcess& started = *server;
    servers_[name] = std::move(server);
    return started;
  }

  // The client: a Network that follows kTopic in the registry, round-robin, quick pings.
  void startClient() {
    Network::Options options;
    options.policy = SelectionPolicy::kRoundRobin;
    options.topic = kTopic;
    options.pingInterval = 200ms;
    options.pingTimeout = 300ms;
    options.backoffInitial = 50ms;
    options.backoffMax = 500ms;
    options.log = log_.sink();
    Result<RegistryNetwork> made =
        RegistryNetwork::create(connector_, *registry_, kTopic, std::move(options));
    ASSERT_OK(made.status());
    followed_.emplace(std::move(made).value());
    subscription_ = followed_->network().subscribe([this](const NetworkEvent&) {
      std::lock_guard<std::mutex> lock(eventMutex_);  // a waiter checks between its waits
      networkChanged_.notify_all();
    });
    RpcClient::Options clientOptions;
    clientOptions.timeout = 5s;
    clientOptions.idempotent = true;  // whoami may run twice: replayed on failover
    clientOptions.log = log_.sink();
    Result<RpcClient> client =
        RpcClient::create(followed_->network(), Target{.topic = kTopic}, clientOptions);
    ASSERT_OK(client.status());
    client_.emplace(std::move(client).value());
  }

  // Waits, woken by the network's events, until `condition` holds for its status.
  bool waitForNetwork(const std::function<bool(const NetworkStatus&)>& condition) {
    std::unique_lock<std::mutex> lock(eventMutex_);
    return networkChanged_.wait_for(lock, kWait,
                                    [&] { return condition(followed_->network().status()); });
  }
  bool waitForConnected(size_t count) {
    return waitForNetwork([&](const NetworkStatus& s) {
      return s.connected == count && s.servers.size() == count && !s.main.empty();
    });
  }

  // The names that answered `calls` whoami calls (round-robin spreads them).
  std::multiset<std::string> whoami(int calls) {
    std::multiset<std::string> names;
    for (int i = 0; i < calls; ++i) {
      Result<Value> name = client_->callValue("whoami", Array{});
      EXPECT_OK(name.status()) << "call " << i;
      if (name && name->isString()) names.insert(name->asString());
    }
    return names;
  }

  LogCapture log_;
  std::optional<testing::RedisServer> redis_;
  std::unique_ptr<Registry> registry_;
  TransportFactory factory_;
  TransportConnector connector_{factory_};
  std::map<std::string, std::unique_ptr<ServerProcess>> servers_;
  std::optional<RegistryNetwork> followed_;
  Network::Subscription subscription_;
  std::optional<RpcClient> client_;
  std::mutex eventMutex_;
  std::condition_variable networkChanged_;  // woken by every network event
};

TEST_F(RegistryProcessTest, RegisteredServersAreFoundAndOneJoiningWhileTheClientRunsIsCalled) {
  startServer("s1");
  startServer("s2");
  startClient();
  ASSERT_TRUE(waitForConnected(2));
  std::multiset<std::string> names = whoami(4);
  EXPECT_EQ(names.count("s1"), 2u);
  EXPECT_EQ(names.count("s2"), 2u);
  startServer("s3");
  ASSERT_TRUE(waitForConnected(3)) << "the new server is followed and connected";
  names = whoami(6);
  EXPECT_EQ(names.count("s3"), 2u) << "round-robin reaches the server that joined";
}

TEST_F(RegistryProcessTest, AServerThatDiesWithoutUnregisteringExpiresWhileCallsGoOn) {
  startServer("s1");
  startServer("s2");
  startClient();
  ASSERT_TRUE(waitForConnected(2));
  WatchedList live(*registry_, kTopic);
  ASSERT_TRUE(live.waitForSize(2));
  const std::string deadUrl = servers_["s1"]->url();
  servers_["s1"]->killAndReap();  // no unregistration: only its TTL (600 ms) removes it
  for (const std::string& name : whoami(10)) EXPECT_EQ(name, "s2");
  ASSERT_TRUE(live.waitForSize(1)) << "expired by its TTL";
  EXPECT_EQ(live.urls(), std::vector<std::string>{servers_["s2"]->url()});
  ASSERT_TRUE(waitForNetwork([&](const NetworkStatus& s) {
    return s.servers.size() == 1 && s.servers[0].url != deadUrl;
  })) << "the network left the dead server out";
}

TEST_F(RegistryProcessTest, AServerStoppedCleanlyUnregistersBeforeItsTtl) {
  startServer("s1", {}, "threadpool", 60000);  // a TTL the test would never wait out
  startServer("s2", {}, "threadpool", 60000);
  WatchedList live(*registry_, kTopic);
  ASSERT_TRUE(live.waitForSize(2));
  ASSERT_EQ(servers_["s1"]->terminate(), 0);
  ASSERT_TRUE(live.waitForSize(1)) << "removed at its clean stop";
  Result<std::vector<std::string>> byServer = registry_->lookup(kTopic + ".s1");
  ASSERT_OK(byServer.status());
  EXPECT_TRUE(byServer->empty());
}

TEST_F(RegistryProcessTest, AServerStoppedCleanlyUnderLoadLosesNoCallEvenNonIdempotentOnes) {
  startServer("s1");
  startServer("s2");
  startClient();
  ASSERT_TRUE(waitForConnected(2));
  RpcClient::Options options;
  options.timeout = 10s;
  options.idempotent = false;  // never replayed after a loss: only refusals go elsewhere
  options.log = log_.sink();
  RpcClient once = RpcClient::create(followed_->network(), Target{.topic = kTopic}, options).value();
  // s1 unregisters, then drains while calls keep coming.
  const std::map<std::string, int> failures =
      testing::runCallLoad(once, {.midway = [&] { servers_["s1"]->kill(SIGTERM); }}, kWait);
  for (const auto& [code, count] : failures) ADD_FAILURE() << count << " calls failed " << code;
  EXPECT_EQ(servers_["s1"]->process().waitExit(deadlineAfter(kWait)), 0) << "a clean stop";
}

TEST_F(RegistryProcessTest, AFanoutCastReachesEveryLiveServer) {
  testing::TempDir dir;
  for (const std::string name : {"s1", "s2", "s3"}) {
    // The event loop runs a connection's messages in order: once a server answered a call sent
    // after the cast, it has run the cast.
    startServer(name, {"--journal", dir.path() + "/" + name}, "eventloop");
  }
  startClient();
  ASSERT_TRUE(waitForConnected(3));
  ASSERT_OK(client_->prepare({.fanout = true}).cast("record", "fanned-out"));
  std::set<std::string> answered;
  for (int i = 0; i < 9 && answered.size() < 3; ++i) {
    for (const std::string& name : whoami(1)) answered.insert(name);
  }
  ASSERT_EQ(answered.size(), 3u);
  for (const std::string name : {"s1", "s2", "s3"}) {
    std::ifstream journal(dir.path() + "/" + name);
    std::vector<std::string> lines;
    for (std::string line; std::getline(journal, line);) lines.push_back(line);
    EXPECT_EQ(lines, std::vector<std::string>{"fanned-out"}) << name;
  }
}

TEST_F(RegistryProcessTest, RedisStoppedAndRestartedWhileCallsContinue) {
  startServer("s1");
  startServer("s2");
  startClient();
  ASSERT_TRUE(waitForConnected(2));
  redis_->kill();
  std::multiset<std::string> names = whoami(6);
  EXPECT_EQ(names.size(), 6u) << "calls go on over the servers the network has";
  EXPECT_EQ(followed_->network().status().servers.size(), 2u) << "the list is kept";
  Result<std::vector<std::string>> cached = registry_->lookup(kTopic);
  ASSERT_OK(cached.status()) << "the last list read is answered while Redis is down";
  EXPECT_EQ(cached->size(), 2u);
  ASSERT_TRUE(redis_->restart()) << redis_->error();
  // The restarted Redis is empty: the servers' refreshes write their entries again.
  auto fresh = RedisRegistry::create({.url = redis_->url(), .refreshInterval = 100ms,
                                      .log = log_.sink()});
  ASSERT_OK(fresh.status());
  WatchedList live(**fresh, kTopic);
  ASSERT_TRUE(live.waitForSize(2)) << "both servers registered again";
  // The client follows the list as the refreshes land (one server may come back first).
  EXPECT_TRUE(waitForConnected(2));
  names = whoami(4);
  EXPECT_EQ(names.size(), 4u);
}

TEST_F(RegistryProcessTest, TheCliFindsItsServerThroughTheRegistry) {
  startServer("s1");
  ChildProcess call({testing::envOr("SWITCHBOARD_CALL", "switchboard-call"), "--registry",
                     redis_->url(), "--topic", kTopic, "whoami"});
  EXPECT_EQ(call.readLine(deadlineAfter(kWait)), "\"s1\"");
  EXPECT_EQ(call.waitExit(deadlineAfter(kWait)), 0);
  ChildProcess nobody({testing::envOr("SWITCHBOARD_CALL", "switchboard-call"), "--registry",
                       redis_->url(), "--topic", "nobody-serves-this", "whoami"});
  EXPECT_EQ(nobody.waitExit(deadlineAfter(kWait)), 5) << "no live server: a connection error";
}

}  // namespace
}  // namespace switchboard
