// The client network against real servers in this process, over ZeroMQ on tcp loopback, with
// real threads and clocks (so the sanitizer builds run it): spreading, failover when a server
// stops or falls silent, and a stop that leaves no thread behind.
#include <gtest/gtest.h>


#include <future>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "executors/thread_pool_executor.h"
#include "messaging/network.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "support/test_util.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::Events;
using testing::kDefaultWait;

// A server named `name` on its own tcp port. "whoami" returns the name; "hold" blocks its
// executor's only worker until release() (the server stays open but answers nothing).
class NamedServer {
 public:
  NamedServer(TransportFactory& factory, std::string name) : name_(std::move(name)) {
    transport_ = std::make_unique<ZmqTransport>(factory.zmqContext(), "tcp://127.0.0.1:*");
    Endpoint ep;
    ep.method("whoami", [this]() { return name_; });
    ep.method("hold", [this]() {
      held_.set_value();
      return release_.get_future().wait_for(kDefaultWait) == std::future_status::ready;
    });
    ThreadPoolExecutor::Options pool;
    pool.threads = 1;
    server_ = std::make_unique<MessageHandlingServer>(
        *transport_, Target{.topic = "t", .server = name_}, RpcDispatcher({ep}),
        std::make_unique<ThreadPoolExecutor>(pool));
    EXPECT_OK(server_->start());
    url_ = transport_->boundEndpoint();
  }
  ~NamedServer() { stop(); }

  void stop() {
    release();
    if (!server_) return;
    server_->stop();
    EXPECT_OK(server_->wait(deadlineAfter(kDefaultWait)));
    server_.reset();
  }
  void release() {
    if (!released_) release_.set_value();
    released_ = true;
  }
  std::future<void> held() { return held_.get_future(); }
  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }

 private:
  const std::string name_;
  std::unique_ptr<ZmqTransport> transport_;
  std::unique_ptr<MessageHandlingServer> server_;
  std::string url_;
  std::promise<void> held_, release_;
  bool released_ = false;
};

class NetworkEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"a", "b", "c"}) {
      servers_.push_back(std::make_unique<NamedServer>(factory_, name));
    }
  }

  Network::Options options(SelectionPolicy policy) {
    Network::Options o;
    for (const auto& s : servers_) o.servers.push_back(s->url());
    o.policy = policy;
    o.topic = "t";
    o.pingInterval = 100ms;
    o.pingTimeout = 400ms;
    o.backoffInitial = 50ms;
    o.backoffMax = 200ms;
    return o;
  }

  // Creates the network and waits until every server is connected.
  Network connectAll(Network::Options o) {
    Result<Network> network = Network::create(connector_, std::move(o));
    EXPECT_OK(network.status());
    for (int i = 0; i < 1000 && network->status().connected < servers_.size(); ++i) {
      // Bounded: the handshakes go over loopback; events would need a subscription made
      // before create(), so this re-reads the status after each event instead.
      Events connected;
      Network::Subscription s = network->subscribe([&](const NetworkEvent& e) {
        if (e.kind == NetworkEvent::Kind::kConnected) connected.add();
      });
      if (network->status().connected == servers_.size()) break;
      connected.waitFor(1, 100ms);
    }
    EXPECT_EQ(network->status().connected, servers_.size());
    return *network;
  }

  TransportFactory factory_;
  TransportConnector connector_{factory_};
  std::vector<std::unique_ptr<NamedServer>> servers_;
};

TEST_F(NetworkEndToEndTest, RoundRobinReachesEveryServerAndSurvivesOneStopping) {
  Network network = connectAll(options(SelectionPolicy::kRoundRobin));
  RpcClient client =
      RpcClient::create(network, Target{.topic = "t"}, {.timeout = 5s, .idempotent = true})
          .value();
  std::set<std::string> answered;
  for (int i = 0; i < 30; ++i) answered.insert(client.call<std::string>("whoami").value());
  EXPECT_EQ(answered, (std::set<std::string>{"a", "b", "c"}));

  servers_[0]->stop();  // its ROUTER closes: the link goes down
  answered.clear();
  for (int i = 0; i < 30; ++i) {
    Result<std::string> who = client.call<std::string>("whoami");
    ASSERT_OK(who.status()) << i;
    answered.insert(*who);
  }
  EXPECT_EQ(answered.count("a"), 0u);
  EXPECT_EQ(answered, (std::set<std::string>{"b", "c"}));
  network.stop();
}

TEST_F(NetworkEndToEndTest, ASilentMainIsLeftAtItsPingAndAnIdempotentCallIsReplayed) {
  Network network = connectAll(options(SelectionPolicy::kStickyPrimary));
  ASSERT_EQ(network.status().main, servers_[0]->url());
  RpcClient client = RpcClient::create(network, Target{.topic = "t"}, {.timeout = 10s}).value();
  // "hold" occupies a's only worker: a is open but answers nothing, pings included.
  std::future<void> held = servers_[0]->held();
  std::promise<Result<Value>> holding;
  client.callAsync("hold", {}, [&](Result<Value> r) { holding.set_value(std::move(r)); });
  ASSERT_TRUE(testing::readyWithin(held));
  const Deadline started = Clock::now();
  Result<std::string> who =
      client.prepare({.idempotent = true}).call<std::string>("whoami");
  ASSERT_OK(who.status());
  EXPECT_NE(*who, "a");
  EXPECT_LT(Clock::now() - started, 3s) << "found by the ping, not by the 10 s deadline";
  // "hold" was not idempotent: it failed when a was left.
  std::future<Result<Value>> holdOutcome = holding.get_future();
  ASSERT_TRUE(testing::readyWithin(holdOutcome));
  EXPECT_CODE(holdOutcome.get().status(), StatusCode::kPeerLost);
  EXPECT_GE(network.stats().failovers, 1u);
  servers_[0]->release();
  network.stop();
}

TEST_F(NetworkEndToEndTest, StopLeavesNoThreadBehind) {
  // The factory's ZeroMQ context and the servers exist before the count: what is counted is
  // the network's own threads (its timer thread, an I/O thread per connection). Descriptors are
  // counted in network_process_test, where the servers are other processes: here the servers'
  // side of each connection closes whenever their ZeroMQ I/O thread notices.
  const size_t threadsBefore = testing::countEntries("/proc/self/task");
  {
    Network::Options o = options(SelectionPolicy::kLeastInFlight);
    o.servers.push_back("tcp://127.0.0.1:1");  // nobody listens there: refused, backing off
    Network network = Network::create(connector_, o).value();
    RpcClient client = RpcClient::create(network, Target{.topic = "t"}, {.timeout = 5s}).value();
    for (int i = 0; i < 10; ++i) EXPECT_OK(client.call<std::string>("whoami").status());
    EXPECT_GT(testing::countEntries("/proc/self/task"), threadsBefore);
    network.stop();
    EXPECT_EQ(testing::threadsSettledTo(threadsBefore), threadsBefore);
    EXPECT_CODE(client.call<std::string>("whoami").status(), StatusCode::kShuttingDown);
  }
  EXPECT_EQ(testing::threadsSettledTo(threadsBefore), threadsBefore);
}

// A caller blocked in a call receives on its channel (RpcClient::callValue): stop() ends its
// call kShuttingDown and returns once it has left the channel, whose last handle it then holds.
TEST_F(NetworkEndToEndTest, StopEndsTheCallOfACallerThatReceivesOnItsChannel) {
  Network network = connectAll(options(SelectionPolicy::kStickyPrimary));
  RpcClient client = RpcClient::create(network, Target{.topic = "t"}, {.timeout = 10s}).value();
  std::future<void> held = servers_[0]->held();
  std::future<Result<Value>> outcome =
      std::async(std::launch::async, [&] { return client.callValue("hold", {}); });
  ASSERT_TRUE(testing::readyWithin(held));
  network.stop();
  ASSERT_TRUE(testing::readyWithin(outcome, 2s)) << "the receiving caller was not woken";
  EXPECT_CODE(outcome.get().status(), StatusCode::kShuttingDown);
  servers_[0]->release();
}

// A caller receiving on the channel of a main that falls silent leaves it when the main is
// left, and gets the answer of its call replayed on another server.
TEST_F(NetworkEndToEndTest, ACallerReceivingOnALeftServerGetsItsReplayedAnswer) {
  Network network = connectAll(options(SelectionPolicy::kStickyPrimary));
  ASSERT_EQ(network.status().main, servers_[0]->url());
  RpcClient client =
      RpcClient::create(network, Target{.topic = "t"}, {.timeout = 10s, .idempotent = true})
          .value();
  std::future<void> heldOnA = servers_[0]->held();
  std::future<void> heldElsewhere[2] = {servers_[1]->held(), servers_[2]->held()};
  std::future<Result<Value>> outcome =
      std::async(std::launch::async, [&] { return client.callValue("hold", {}); });
  ASSERT_TRUE(testing::readyWithin(heldOnA));
  // a answers no ping while held: it is left and the call replayed on the next main.
  bool replayed = false;
  const Deadline giveUp = deadlineAfter(kDefaultWait);
  while (!replayed && Clock::now() < giveUp) {
    for (int i = 0; i < 2 && !replayed; ++i) {
      if (testing::readyWithin(heldElsewhere[i], 10ms)) {
        servers_[i + 1]->release();
        replayed = true;
      }
    }
  }
  ASSERT_TRUE(replayed) << "the call was not replayed";
  ASSERT_TRUE(testing::readyWithin(outcome));
  EXPECT_EQ(outcome.get().value(), Value(true));
  EXPECT_GE(network.stats().replayed, 1u);
  servers_[0]->release();
  network.stop();
}

// The outcome callback holds the last handle: the network is destroyed on the thread that runs
// it (a ZeroMQ channel's own), which cannot join itself; the timer thread finishes the release.
TEST_F(NetworkEndToEndTest, TheLastHandleReleasedInsideAnOutcomeCallbackTearsDownSafely) {
  std::promise<Result<Value>> outcome;
  std::future<void> held = servers_[0]->held();
  {
    Network network = connectAll(options(SelectionPolicy::kStickyPrimary));
    auto client = std::make_shared<RpcClient>(
        RpcClient::create(network, Target{.topic = "t"}, {.timeout = 5s}).value());
    RpcClient& caller = *client;
    caller.callAsync("hold", {}, [keep = std::move(client), &outcome](Result<Value> r) {
      outcome.set_value(std::move(r));
    });
    ASSERT_TRUE(testing::readyWithin(held));
  }  // every handle but the callback's is gone
  servers_[0]->release();
  std::future<Result<Value>> answered = outcome.get_future();
  ASSERT_TRUE(testing::readyWithin(answered));
  EXPECT_EQ(answered.get().value(), Value(true));
}

}  // namespace
}  // namespace switchboard
