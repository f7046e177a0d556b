// The client network against switchboard-server children that are killed (SIGKILL) or frozen
// (SIGSTOP): the CLI keeps answering through a kill (and the failover time is measured), pings
// find a frozen main, a non-idempotent call fails fast, and nothing is left behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "messaging/network.h"
#include "messaging/rpc_client.h"
#include "tests/support/call_load.h"
#include "tests/support/server_process.h"
#include "tests/support/test_util.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::envOr;
using testing::freeTcpUrl;
using testing::ServerProcess;

int64_t msOf(Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// The network's events, recorded from its thread.
class EventLog {
 public:
  std::function<void(const NetworkEvent&)> recorder() {
    return [this](const NetworkEvent& e) {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(e);
    };
  }
  // The details of the kDisconnected events about `server`.
  std::vector<std::string> disconnections(const std::string& server) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    for (const NetworkEvent& e : events_) {
      if (e.kind == NetworkEvent::Kind::kDisconnected && e.server == server)
        out.push_back(e.detail);
    }
    return out;
  }
  std::string dump() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    for (const NetworkEvent& e : events_) {
      out += std::string(networkEventKindName(e.kind)) + " " + e.server + " " + e.detail + "\n";
    }
    return out;
  }

 private:
  std::mutex mutex_;
  std::vector<NetworkEvent> events_;  // guarded by mutex_
};

class NetworkProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(a_.url().empty()) << "server A did not print its endpoint";
    ASSERT_FALSE(b_.url().empty()) << "server B did not print its endpoint";
  }

  // A over B by preference; pings every `pingInterval`, unanswered for `pingTimeout` fail it.
  Network::Options options(Duration pingInterval, Duration pingTimeout) {
    Network::Options o;
    o.servers = {a_.url(), b_.url()};
    o.preferred = a_.url();
    o.pingInterval = pingInterval;
    o.pingTimeout = pingTimeout;
    o.backoffInitial = 50ms;
    o.backoffMax = 500ms;
    o.log = log_.sink();
    return o;
  }

  static Target target() {
    Target t;
    t.topic = "switchboard";
    return t;
  }

  ServerProcess a_{"threadpool"};
  ServerProcess b_{"threadpool"};
  testing::LogCapture log_;
};

// The acceptance test: a CLI making 500 idempotent calls over A and B keeps answering
// when A, the main server, is killed after 100, with no call failing.
TEST_F(NetworkProcessTest, CliKeepsAnsweringWhenTheMainServerIsKilled) {
  constexpr size_t kCalls = 500;
  constexpr size_t kKillAfter = 100;
  ChildProcess cli({envOr("SWITCHBOARD_CALL", "switchboard-call"), "--connect", a_.url(),
                    "--connect", b_.url(), "--repeat", std::to_string(kCalls), "--interval-ms", "5",
                    "--idempotent", "--events", "echo", "\"x\""});
  std::vector<Deadline> arrivals;  // when each result line was read
  Deadline killedAt{};
  const Deadline deadline = deadlineAfter(60s);  // the run takes a few seconds
  while (arrivals.size() < kCalls) {
    std::optional<std::string> line = cli.readLine(deadline);
    if (!line) break;
    EXPECT_EQ(*line, "\"x\"") << "result line " << arrivals.size();
    arrivals.push_back(Clock::now());
    if (arrivals.size() == kKillAfter) {
      killedAt = Clock::now();
      EXPECT_EQ(a_.killAndReap(), 128 + SIGKILL);
    }
  }
  ASSERT_EQ(arrivals.size(), kCalls)
      << (cli.eof() ? "the CLI closed its stdout early" : "the CLI stopped answering");
  EXPECT_FALSE(cli.readLine(deadlineAfter(10s)).has_value()) << "more lines than calls";
  EXPECT_TRUE(cli.eof());
  EXPECT_EQ(cli.waitExit(deadlineAfter(10s)), std::optional<int>(0));

  // The failover time: the longest wait for a result after the kill, from the kill to the next
  // line or between two lines (lines written before the kill may still have been in the pipe).
  Duration failover = arrivals[kKillAfter] - killedAt;
  for (size_t i = kKillAfter + 1; i < kCalls; ++i) {
    failover = std::max(failover, arrivals[i] - arrivals[i - 1]);
  }
  Duration usualGap{};  // for comparison: the longest gap before the kill, the first call aside
  for (size_t i = 2; i < kKillAfter; ++i)
    usualGap = std::max(usualGap, arrivals[i] - arrivals[i - 1]);
  RecordProperty("failover_ms", static_cast<int>(msOf(failover)));
  RecordProperty("gap_before_kill_ms", static_cast<int>(msOf(usualGap)));
  std::cout << "failover_ms=" << msOf(failover) << " (longest gap before the kill "
            << msOf(usualGap) << " ms)" << std::endl;
  EXPECT_LT(failover, 2s);
}

// A frozen main server keeps its sockets open, so no link event comes: the pings find it, and an
// idempotent call sent to it moves to B long before its own 10 s deadline.
TEST_F(NetworkProcessTest, AStoppedMainServerIsLeftAtItsPing) {
  TransportFactory factory;
  TransportConnector connector(factory);
  EventLog events;
  Result<Network> network = Network::create(connector, options(200ms, 300ms));
  ASSERT_OK(network.status());
  Network::Subscription subscription = network->subscribe(events.recorder());
  RpcClient::Options clientOptions;
  clientOptions.timeout = 10s;
  clientOptions.idempotent = true;
  Result<RpcClient> client = RpcClient::create(*network, target(), clientOptions);
  ASSERT_OK(client.status());
  for (int i = 0; i < 3; ++i) ASSERT_OK(client->call<int>("add", i, 1).status()) << i;
  ASSERT_EQ(network->status().main, a_.url());

  ASSERT_TRUE(a_.stopProcess());
  const Deadline started = Clock::now();
  Result<std::string> echoed = client->call<std::string>("echo", "after the stop");
  const Duration took = Clock::now() - started;
  ASSERT_OK(echoed.status());
  EXPECT_EQ(*echoed, "after the stop");
  EXPECT_LT(took, 3s) << "found by the ping, not by the call's 10 s deadline";

  const NetworkStatus status = network->status();
  EXPECT_EQ(status.main, b_.url());
  ASSERT_EQ(status.servers.size(), 2u);
  EXPECT_NE(status.servers[0].state, ConnectionState::kConnected)
      << connectionStateName(status.servers[0].state);
  EXPECT_EQ(status.servers[1].state, ConnectionState::kConnected);
  EXPECT_GE(network->stats().failovers, 1u);
  EXPECT_GE(network->stats().replayed, 1u) << "the echo was sent to A first";
  const std::vector<std::string> downs = events.disconnections(a_.url());
  ASSERT_FALSE(downs.empty()) << events.dump();
  EXPECT_NE(downs.front().find("ping"), std::string::npos) << events.dump();

  subscription.release();
  network->stop();
  a_.resume();
}

// A call that is not idempotent, unanswered when its server is killed, fails kPeerLost as soon
// as the link goes down; the next call goes to B.
TEST_F(NetworkProcessTest, ACallInFlightOnAKilledServerFailsPeerLostAtOnce) {
  TransportFactory factory;
  TransportConnector connector(factory);
  EventLog events;
  // Pings too slow to matter here (up to 10 s to notice): the transport's link event must.
  Result<Network> network = Network::create(connector, options(5s, 5s));
  ASSERT_OK(network.status());
  Network::Subscription subscription = network->subscribe(events.recorder());
  RpcClient::Options clientOptions;
  clientOptions.timeout = 10s;
  Result<RpcClient> client = RpcClient::create(*network, target(), clientOptions);
  ASSERT_OK(client.status());
  ASSERT_OK(client->call<std::string>("echo", "warm up").status());
  ASSERT_EQ(network->status().main, a_.url());

  boost::future<Result<Value>> sleeping = client->callAsync("sleep", Array{Value(5000)});
  // callAsync returns once the call is handed to A's channel.
  ASSERT_EQ(network->status().servers[0].inFlight, 1u);
  const Deadline killedAt = Clock::now();
  EXPECT_EQ(a_.killAndReap(), 128 + SIGKILL);
  ASSERT_TRUE(testing::readyWithin(sleeping, 10s));
  const Duration took = Clock::now() - killedAt;
  EXPECT_CODE(sleeping.get().status(), StatusCode::kPeerLost);
  EXPECT_LT(took, 3s) << events.dump();

  Result<std::string> echoed = client->call<std::string>("echo", "via B");
  ASSERT_OK(echoed.status());
  EXPECT_EQ(*echoed, "via B");
  EXPECT_EQ(network->status().main, b_.url());
  EXPECT_GE(network->stats().peerLost, 1u);
  subscription.release();
  network->stop();
}

// A server stopped (SIGTERM) under a load of calls that are not idempotent, with no registry to
// warn the client first: what the client sends before it learns of the drain is refused, not
// lost in a closing socket (switchboard-server's --refuse-after-stop-ms), and goes to B.
TEST_F(NetworkProcessTest, AServerStoppedUnderLoadLosesNoCallEvenNonIdempotentOnes) {
  TransportFactory factory;
  TransportConnector connector(factory);
  Result<Network> network = Network::create(connector, options(500ms, 1s));
  ASSERT_OK(network.status());
  RpcClient::Options clientOptions;
  clientOptions.timeout = 10s;
  clientOptions.idempotent = false;  // never replayed after a loss: only refusals go elsewhere
  Result<RpcClient> client = RpcClient::create(*network, target(), clientOptions);
  ASSERT_OK(client.status());
  ASSERT_OK(client->call<std::string>("echo", "warm up").status());
  ASSERT_EQ(network->status().main, a_.url());
  const std::map<std::string, int> failures =
      testing::runCallLoad(*client, {.midway = [&] { a_.kill(SIGTERM); }});
  for (const auto& [code, count] : failures) ADD_FAILURE() << count << " calls failed " << code;
  EXPECT_EQ(a_.process().waitExit(deadlineAfter(10s)), 0) << "a clean stop";
  EXPECT_EQ(network->status().main, b_.url());
  network->stop();
}

// A network over two live children and one dead URL, used and stopped, leaves no thread behind
// once stopped and no descriptor once its factory is gone.
TEST_F(NetworkProcessTest, StopLeavesNoThreadOrDescriptorBehind) {
  // Counted before the factory: the children (their pipes and pidfds) exist already, nothing of
  // ZeroMQ does. Descriptors can only be compared after the factory is destroyed: zmq_close
  // returns before ZeroMQ's reaper thread has closed a socket's descriptors (after its linger),
  // and only the context's termination waits for that. Threads are compared while the factory
  // lives too, once its context has started its own (I/O and reaper) threads: that shows
  // stop() itself joins the network's threads (timer, a channel I/O thread per connection).
  const size_t threadsAtStart = testing::countEntries("/proc/self/task");
  const size_t fdsAtStart = testing::countEntries("/proc/self/fd");
  {
    auto factory = std::make_unique<TransportFactory>();
    {
      // Starts the context's threads: a channel made and dropped.
      Result<std::unique_ptr<Transport>> warm = factory->makeTransport(b_.url());
      ASSERT_OK(warm.status());
      ASSERT_OK((*warm)->openChannel([](std::span<const std::string_view>) {}).status());
    }
    const size_t threadsWithContext = testing::countEntries("/proc/self/task");
    {
      TransportConnector connector(*factory);
      Network::Options o = options(200ms, 300ms);
      o.servers.push_back(freeTcpUrl());  // refused, backing off, retried while the test runs
      o.policy = SelectionPolicy::kRoundRobin;
      o.connectTimeout = 1s;
      std::optional<Network> network(Network::create(connector, o).value());
      std::optional<RpcClient> client(
          RpcClient::create(*network, target(), {.timeout = 5s}).value());
      for (int i = 0; i < 20; ++i) EXPECT_OK(client->call<int>("add", i, i).status()) << i;
      EXPECT_GT(testing::countEntries("/proc/self/task"), threadsWithContext) << "nothing was counted";
      network->stop();
      EXPECT_EQ(testing::threadsSettledTo(threadsWithContext), threadsWithContext) << "after stop()";
      EXPECT_CODE(client->call<int>("add", 1, 1).status(), StatusCode::kShuttingDown);
      client.reset();
      network.reset();
      EXPECT_EQ(testing::threadsSettledTo(threadsWithContext), threadsWithContext) << "after the handles";
    }
    EXPECT_EQ(testing::threadsSettledTo(threadsWithContext), threadsWithContext) << "after the connector";
    factory.reset();  // terminates the context: waits until every socket is closed
  }
  EXPECT_EQ(testing::threadsSettledTo(threadsAtStart), threadsAtStart) << "after the factory";
  EXPECT_EQ(testing::countEntries("/proc/self/fd"), fdsAtStart) << "after the factory";
}

// --repeat prints one line per call, on stdout or stderr, and exits with the last failure's code.
TEST_F(NetworkProcessTest, CliRepeatsPrintOneLinePerCall) {
  const std::string call = envOr("SWITCHBOARD_CALL", "switchboard-call") + " --connect " +
                           a_.url() + " --connect " + b_.url() + " --policy round-robin";
  auto linesOf = [](ChildProcess& child) {
    std::vector<std::string> lines;
    const Deadline deadline = deadlineAfter(30s);
    while (std::optional<std::string> line = child.readLine(deadline)) lines.push_back(*line);
    return lines;
  };
  {
    ChildProcess ok({"/bin/sh", "-c", call + " --repeat 4 --interval-ms 1 add 2 3"});
    EXPECT_EQ(linesOf(ok), std::vector<std::string>(4, "5"));
    EXPECT_EQ(ok.waitExit(deadlineAfter(10s)), std::optional<int>(0));
  }
  {
    // Errors to stderr, shown here through 2>&1 and nothing on stdout.
    ChildProcess failing({"/bin/sh", "-c", call + " --repeat 3 fail '\"boom\"' 2>&1 >/dev/null"});
    const std::vector<std::string> lines = linesOf(failing);
    ASSERT_EQ(lines.size(), 3u);
    for (const std::string& line : lines) {
      EXPECT_EQ(line.rfind("{\"error\":{\"code\":\"RemoteError\"", 0), 0u) << line;
    }
    EXPECT_EQ(failing.waitExit(deadlineAfter(10s)), std::optional<int>(4));
  }
  {
    ChildProcess usage({"/bin/sh", "-c", call + " --policy nearest echo 1 2>/dev/null"});
    EXPECT_TRUE(linesOf(usage).empty());
    EXPECT_EQ(usage.waitExit(deadlineAfter(10s)), std::optional<int>(2));
  }
}

}  // namespace
}  // namespace switchboard
