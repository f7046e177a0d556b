// The client network's rules, scenario by scenario, with servers played by hand (FakeServers)
// and a clock that moves only when the test says (ManualTimerQueue): no sleeps, no real sockets.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "messaging/network.h"
#include "messaging/rpc_client.h"
#include "support/fake_servers.h"
#include "support/manual_timer_queue.h"
#include "support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using detail::RequestMessage;
using detail::ResponseMessage;
using testing::FakeServers;
using testing::LogCapture;
using testing::ManualTimerQueue;

const std::string A = "tcp://a:1", B = "tcp://b:1", C = "tcp://c:1";

class NetworkTest : public ::testing::Test {
 protected:
  Network::Options optionsFor(std::vector<std::string> urls) {
    Network::Options o;
    o.servers = std::move(urls);
    o.connectTimeout = 5s;
    o.pingInterval = 2s;
    o.pingTimeout = 2s;
    o.backoffInitial = 1s;
    o.backoffMax = 8s;
    o.backoffJitter = 0;
    o.seed = 1;
    o.timers = &timers_;
    o.log = log_.sink();
    return o;
  }

  // Creates the network and a client on it, and records its events as "kind server" strings.
  void start(Network::Options options) {
    Result<Network> made = Network::create(servers_, std::move(options));
    ASSERT_OK(made.status());
    network_.emplace(*made);
    subscription_ = network_->subscribe([this](const NetworkEvent& e) {
      events_.push_back(std::string(networkEventKindName(e.kind)) + " " + e.server);
    });
    RpcClient::Options clientOptions;
    clientOptions.timeout = 30s;
    clientOptions.log = log_.sink();
    Result<RpcClient> client = RpcClient::create(*network_, Target{.topic = "t"}, clientOptions);
    ASSERT_OK(client.status());
    client_.emplace(*client);
  }

  // Starts a call whose outcome lands in outcomes_[index].
  size_t call(const std::string& method, bool idempotent = false, Duration timeout = 30s) {
    const size_t index = outcomes_.size();
    outcomes_.emplace_back();
    client_->prepare({.timeout = timeout, .idempotent = idempotent})
        .callAsync(method, Array{Value(method)},
                   [this, index](Result<Value> r) { outcomes_[index].emplace(std::move(r)); });
    return index;
  }

  void answer(const std::string& server, const RequestMessage& request, int connection = 0) {
    servers_.reply(server, ResponseMessage{request.msgid, Status::ok(), request.params.at(0)},
                   connection);
  }

  std::vector<std::string> methodsSentTo(const std::string& server) {
    std::vector<std::string> out;
    for (const RequestMessage& r : servers_.calls(server)) out.push_back(r.method);
    return out;
  }

  ConnectionState stateOf(const std::string& server) {
    for (const auto& s : network_->status().servers) {
      if (s.url == server) return s.state;
    }
    return ConnectionState::kDisconnected;
  }

  void TearDown() override {
    if (network_) network_->stop();
  }

  LogCapture log_;
  ManualTimerQueue timers_;
  FakeServers servers_;
  std::optional<Network> network_;
  std::optional<RpcClient> client_;
  Network::Subscription subscription_;
  std::vector<std::string> events_;
  std::vector<std::optional<Result<Value>>> outcomes_;
};

// Scenario 1.
TEST_F(NetworkTest, PreferredServerSlowerThanOthersStillBecomesMainAndNothingGoesElsewhereFirst) {
  start(optionsFor({A, B, C}));
  EXPECT_EQ(servers_.attempts(A), 1);
  EXPECT_EQ(servers_.attempts(B), 1);
  EXPECT_EQ(servers_.attempts(C), 1);
  servers_.answerHealth(B);
  servers_.answerHealth(C);
  const size_t first = call("first");
  EXPECT_EQ(network_->status().main, "");
  EXPECT_EQ(network_->status().waiting, 1u);
  timers_.advance(1s);  // A is slow, but within its connect timeout
  EXPECT_EQ(network_->status().main, "");
  servers_.answerHealth(A);
  EXPECT_EQ(network_->status().main, A);
  EXPECT_EQ(methodsSentTo(A), std::vector<std::string>{"first"});
  EXPECT_TRUE(servers_.calls(B).empty());
  EXPECT_TRUE(servers_.calls(C).empty());
  answer(A, servers_.calls(A).at(0));
  ASSERT_TRUE(outcomes_[first].has_value());
  EXPECT_EQ(outcomes_[first]->value(), Value("first"));
}

// Scenario 2.
TEST_F(NetworkTest, PreferredServerRefusingIsRetriedOnlyAfterItsBackoff) {
  Network::Options options = optionsFor({A, B});
  std::vector<std::string> fromTheStart;
  options.onEvent = [&](const NetworkEvent& e) {
    fromTheStart.push_back(std::string(networkEventKindName(e.kind)) + " " + e.server);
  };
  start(options);
  servers_.link(A, LinkEvent::kRefused);
  servers_.answerHealth(B);
  EXPECT_EQ(network_->status().main, B);
  EXPECT_EQ(fromTheStart, (std::vector<std::string>{"connecting " + A, "connecting " + B,
                                                    "disconnected " + A, "connected " + B,
                                                    "main " + B}));
  EXPECT_EQ(events_, (std::vector<std::string>{"disconnected " + A, "connected " + B,
                                               "main " + B}))
      << "a subscription sees the events after it";
  EXPECT_EQ(stateOf(A), ConnectionState::kClosing);
  timers_.runDue();  // the closed channel is released, the back-off starts
  EXPECT_EQ(stateOf(A), ConnectionState::kBackingOff);
  EXPECT_EQ(servers_.liveChannels(), 1);
  timers_.advance(999ms);
  EXPECT_EQ(servers_.attempts(A), 1);
  timers_.advance(1ms);
  EXPECT_EQ(servers_.attempts(A), 2);
  EXPECT_EQ(stateOf(A), ConnectionState::kConnecting);
  EXPECT_EQ(events_.back(), "connecting " + A);
  // A comes back: B stays main (failover is triggered by failure, not by another server).
  servers_.answerHealth(A);
  EXPECT_EQ(network_->status().main, B);
}

// Scenario 3.
TEST_F(NetworkTest, PreferredServerHangingOnConnectIsAbandonedOnlyAtTheConnectTimeout) {
  Network::Options options = optionsFor({A, B});
  options.pingInterval = 60s;  // B's pings stay out of the picture
  start(options);
  servers_.answerHealth(B);
  const size_t waiting = call("waiting");
  timers_.advance(4999ms);
  EXPECT_EQ(network_->status().main, "") << "no switch while A's attempt is in flight";
  EXPECT_TRUE(servers_.calls(B).empty());
  timers_.advance(1ms);
  EXPECT_EQ(network_->status().main, B);
  EXPECT_NE(log_.dump().find("no handshake answer within 5000 ms"), std::string::npos);
  ASSERT_EQ(methodsSentTo(B), std::vector<std::string>{"waiting"});
  answer(B, servers_.calls(B).at(0));
  EXPECT_TRUE(outcomes_[waiting].has_value());
}

// Scenario 4.
TEST_F(NetworkTest, WithoutAutoConnectAnotherServerIsNeverMadeMainAndCallsWaitWithinDeadlines) {
  Network::Options options = optionsFor({A, B});
  options.autoConnect = false;
  start(options);
  EXPECT_EQ(servers_.attempts(B), 0);
  servers_.link(A, LinkEvent::kRefused);
  const size_t waiting = call("waiting", false, 3s);
  timers_.advance(2s);
  EXPECT_FALSE(outcomes_[waiting].has_value());
  timers_.advance(1s);
  ASSERT_TRUE(outcomes_[waiting].has_value());
  EXPECT_CODE(outcomes_[waiting]->status(), StatusCode::kTimeout);
  EXPECT_NE(outcomes_[waiting]->status().message().find("no server became available"),
            std::string::npos);
  EXPECT_EQ(servers_.attempts(B), 0);
  EXPECT_EQ(network_->status().main, "");
  EXPECT_GE(servers_.attempts(A), 2) << "the wanted server is retried";
}

// Scenario 5.
TEST_F(NetworkTest, RequestsToStartAServerAlreadyConnectingMakeOneAttemptAndOneSocket) {
  start(optionsFor({A, B}));
  ASSERT_OK(network_->switchTo(A));  // explicit switch while A connects (created by the filler)
  EXPECT_EQ(servers_.attempts(A), 1);
  servers_.link(A, LinkEvent::kRefused);
  timers_.runDue();
  ASSERT_EQ(stateOf(A), ConnectionState::kBackingOff);
  ASSERT_OK(network_->switchTo(A));  // during the back-off: waits for the retry timer
  EXPECT_EQ(servers_.attempts(A), 1);
  timers_.advance(1s);  // the retry timer
  EXPECT_EQ(servers_.attempts(A), 2);
  ASSERT_OK(network_->switchTo(A));
  EXPECT_EQ(servers_.attempts(A), 2);
  EXPECT_EQ(servers_.liveChannels(), 2) << "one for A, one for B";
}

// Scenario 6.
TEST_F(NetworkTest, SwitchToAServerStillConnectingLeavesNoMainUntilItConnects) {
  Network::Options options = optionsFor({A, B});
  start(options);
  servers_.answerHealth(A);
  ASSERT_EQ(network_->status().main, A);
  ASSERT_OK(network_->switchTo(B));
  EXPECT_EQ(network_->status().main, "");
  const size_t meanwhile = call("meanwhile");
  EXPECT_TRUE(servers_.calls(A).empty()) << "never to the old main";
  servers_.answerHealth(B);
  EXPECT_EQ(network_->status().main, B);
  EXPECT_EQ(methodsSentTo(B), std::vector<std::string>{"meanwhile"});
  answer(B, servers_.calls(B).at(0));
  EXPECT_TRUE(outcomes_[meanwhile].has_value());
  EXPECT_TRUE(servers_.calls(A).empty());
}

// Scenario 7.
TEST_F(NetworkTest, SwitchToTheCurrentMainDoesNothing) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  call("in flight");
  const size_t eventsBefore = events_.size();
  const size_t sentBefore = servers_.sent(A).size();
  ASSERT_OK(network_->switchTo(A));
  EXPECT_EQ(events_.size(), eventsBefore);
  EXPECT_EQ(servers_.sent(A).size(), sentBefore);
  EXPECT_EQ(network_->status().main, A);
  EXPECT_CODE(network_->switchTo("tcp://unknown:1"), StatusCode::kInvalidTarget);
}

// Scenario 8.
TEST_F(NetworkTest, StatusNeverCountsConnectingServers) {
  start(optionsFor({A, B, C}));
  EXPECT_EQ(network_->status().connected, 0u);
  servers_.answerHealth(A);
  servers_.link(C, LinkEvent::kRefused);
  timers_.runDue();
  const NetworkStatus status = network_->status();
  EXPECT_EQ(status.connected, 1u);
  ASSERT_EQ(status.servers.size(), 3u);
  EXPECT_EQ(status.servers[0].state, ConnectionState::kConnected);
  EXPECT_EQ(status.servers[1].state, ConnectionState::kConnecting);
  EXPECT_EQ(status.servers[2].state, ConnectionState::kBackingOff);
  EXPECT_EQ(status.servers[2].failures, 1u);
}

// Scenario 9.
TEST_F(NetworkTest, ThousandCallsOverThreeServersWithPingsHaveUniqueIdsMatchedPerConnection) {
  Network::Options options = optionsFor({A, B, C});
  options.policy = SelectionPolicy::kRoundRobin;
  start(options);
  for (const std::string& s : {A, B, C}) servers_.answerHealth(s);
  std::set<uint32_t> answeredIds;
  for (int i = 0; i < 1000; ++i) {
    call("c" + std::to_string(i));
    if (i % 100 == 99) {
      timers_.advance(2s);  // pings go out between the calls
      for (const std::string& s : {A, B, C}) servers_.answerHealth(s);
    }
  }
  std::set<uint32_t> ids;
  size_t total = 0;
  for (const std::string& s : {A, B, C}) {
    for (const auto& sent : servers_.sent(s)) {
      if (auto* r = std::get_if<RequestMessage>(&sent.message)) {
        ids.insert(r->msgid);
        ++total;
      }
    }
    EXPECT_GE(servers_.calls(s).size(), 333u) << s;
  }
  EXPECT_EQ(ids.size(), total) << "every wire id unique, pings included";
  EXPECT_GT(total, 1000u);
  for (const std::string& s : {A, B, C}) {
    for (const RequestMessage& r : servers_.calls(s)) answer(s, r);
  }
  for (const auto& outcome : outcomes_) {
    ASSERT_TRUE(outcome.has_value());
    EXPECT_OK(outcome->status());
  }
  EXPECT_EQ(network_->stats().dismissals, 0u);
}

TEST_F(NetworkTest, AReplyOnAnotherConnectionIsAViolationAndItsServerIsDismissed) {
  Network::Options options = optionsFor({A, B});
  options.policy = SelectionPolicy::kRoundRobin;
  start(options);
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t onA = call("on A");
  ASSERT_EQ(servers_.calls(A).size(), 1u);
  answer(B, servers_.calls(A).at(0));  // B answers an id that A got
  EXPECT_FALSE(outcomes_[onA].has_value());
  EXPECT_EQ(network_->stats().dismissals, 1u);
  EXPECT_EQ(stateOf(B), ConnectionState::kClosing);
  answer(A, servers_.calls(A).at(0));
  ASSERT_TRUE(outcomes_[onA].has_value());
  EXPECT_OK(outcomes_[onA]->status());
}

// Scenario 10.
TEST_F(NetworkTest, MainDyingReplaysTheIdempotentCallAndFailsTheOtherAndDropsALateReply) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t r1 = call("R1", /*idempotent=*/true);
  const size_t r2 = call("R2", /*idempotent=*/false);
  ASSERT_EQ(servers_.calls(A).size(), 2u);
  const RequestMessage firstR1 = servers_.calls(A).at(0);
  servers_.link(A, LinkEvent::kDown);
  ASSERT_TRUE(outcomes_[r2].has_value());
  EXPECT_CODE(outcomes_[r2]->status(), StatusCode::kPeerLost);
  EXPECT_EQ(network_->status().main, B);
  ASSERT_EQ(methodsSentTo(B), std::vector<std::string>{"R1"});
  const RequestMessage replay = servers_.calls(B).at(0);
  EXPECT_NE(replay.msgid, firstR1.msgid) << "a replay goes under a fresh id";
  // A's reply to the first send comes late, through A's old connection: dropped and counted.
  answer(A, firstR1, 1);
  EXPECT_FALSE(outcomes_[r1].has_value());
  EXPECT_EQ(network_->stats().lateReplies, 1u);
  answer(B, replay);
  ASSERT_TRUE(outcomes_[r1].has_value());
  EXPECT_EQ(outcomes_[r1]->value(), Value("R1"));
  const Network::Stats stats = network_->stats();
  EXPECT_EQ(stats.replayed, 1u);
  EXPECT_EQ(stats.failovers, 1u);
  EXPECT_EQ(stats.peerLost, 1u);
}

// Scenario 11.
TEST_F(NetworkTest, CallsMadeWithNoServerAreSentInOrderWhenOneBecomesMainUnlessExpired) {
  start(optionsFor({A}));
  const size_t c1 = call("c1", false, 10s);
  const size_t c2 = call("c2", false, 1s);
  const size_t c3 = call("c3", false, 10s);
  timers_.advance(1s);
  ASSERT_TRUE(outcomes_[c2].has_value());
  EXPECT_CODE(outcomes_[c2]->status(), StatusCode::kTimeout);
  servers_.answerHealth(A);
  EXPECT_EQ(methodsSentTo(A), (std::vector<std::string>{"c1", "c3"}));
  for (const RequestMessage& r : servers_.calls(A)) answer(A, r);
  EXPECT_TRUE(outcomes_[c1].has_value() && outcomes_[c1]->isOk());
  EXPECT_TRUE(outcomes_[c3].has_value() && outcomes_[c3]->isOk());
}

// Scenario 12.
TEST_F(NetworkTest, ACallWhoseDeadlineExpiredIsNeverReplayed) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t expired = call("expired", /*idempotent=*/true, 1s);
  timers_.advance(1s);
  ASSERT_TRUE(outcomes_[expired].has_value());
  EXPECT_CODE(outcomes_[expired]->status(), StatusCode::kTimeout);
  // The server was told the caller gave up.
  bool cancelled = false;
  for (const auto& sent : servers_.sent(A)) {
    cancelled |= std::holds_alternative<detail::CancelMessage>(sent.message);
  }
  EXPECT_TRUE(cancelled);
  servers_.link(A, LinkEvent::kDown);
  EXPECT_TRUE(servers_.calls(B).empty());
  EXPECT_EQ(network_->stats().replayed, 0u);
  // Its late reply is counted, not a violation.
  answer(A, servers_.calls(A).at(0), 1);
  EXPECT_EQ(network_->stats().dismissals, 0u);
}

// Expiries live in a heap that keeps the entries of answered calls until they surface or a
// compaction drops them: such entries must neither fail a live call nor delay its own expiry.
TEST_F(NetworkTest, AnsweredCallsLeaveNoExpiryThatFailsOrDelaysALiveCall) {
  Network::Options options = optionsFor({A});
  options.pingInterval = 1h;  // no ping to answer while the clock moves
  start(std::move(options));
  servers_.answerHealth(A);
  // Answered calls, and among them unanswered ones whose pushes also trigger compactions.
  constexpr int kCalls = 700;
  std::vector<size_t> live;
  for (int i = 0; i < kCalls; ++i) {
    if (i % 7 == 0) {
      live.push_back(call("live", false, 10s));
      continue;
    }
    const size_t quick = call("quick", false, i % 2 == 0 ? 1s : 30s);
    answer(A, servers_.calls(A).back());
    ASSERT_TRUE(outcomes_[quick].has_value()) << i;
    EXPECT_OK(outcomes_[quick]->status()) << i;
  }
  timers_.advance(9s);  // past the 1 s deadlines of some answered calls
  for (size_t index : live) EXPECT_FALSE(outcomes_[index].has_value()) << index;
  timers_.advance(1s);
  for (size_t index : live) {
    ASSERT_TRUE(outcomes_[index].has_value()) << index;
    EXPECT_CODE(outcomes_[index]->status(), StatusCode::kTimeout);
  }
  EXPECT_EQ(network_->stats().lateReplies, 0u);
}

TEST_F(NetworkTest, ALateReplyToAnExpiredCallOnALiveConnectionIsCountedNotAViolation) {
  start(optionsFor({A}));
  servers_.answerHealth(A);
  call("slow", false, 1s);
  timers_.advance(1s);
  answer(A, servers_.calls(A).at(0));
  EXPECT_EQ(network_->stats().lateReplies, 1u);
  EXPECT_EQ(network_->stats().dismissals, 0u);
  EXPECT_EQ(stateOf(A), ConnectionState::kConnected);
}

TEST_F(NetworkTest, StatsCountEveryOutcomeByCodeWithItsLatencyOnTheNetworksClock) {
  start(optionsFor({A}));
  servers_.answerHealth(A);
  call("slow", false, 1s);
  timers_.advance(1s);  // times out
  const size_t fast = call("fast");
  timers_.advance(500ms);
  answer(A, servers_.calls(A).at(1));
  ASSERT_TRUE(outcomes_[fast].has_value());
  const Network::Stats stats = network_->stats();
  EXPECT_EQ(stats.outcomes, (std::map<std::string, uint64_t>{{"Ok", 1}, {"Timeout", 1}}));
  EXPECT_EQ(stats.latency.count, 2u);
  EXPECT_EQ(stats.latency.mean(), std::chrono::microseconds(750'000));
  EXPECT_EQ(client_->stats().outcomes, stats.outcomes);
}

// Scenario 13.
TEST_F(NetworkTest, ASilentServerIsDetectedByItsPingNotByTheCallDeadline) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t call1 = call("long", /*idempotent=*/true, 60s);
  timers_.advance(2s);  // the ping interval: A is pinged
  EXPECT_EQ(servers_.unansweredHealth(A).size(), 1u);
  servers_.answerHealth(B);
  timers_.advance(1999ms);
  EXPECT_EQ(network_->status().main, A);
  timers_.advance(1ms);  // A never answered its ping
  EXPECT_EQ(network_->status().main, B);
  EXPECT_NE(log_.dump().find("no answer to a ping within 2000 ms"), std::string::npos);
  ASSERT_EQ(methodsSentTo(B), std::vector<std::string>{"long"});
  answer(B, servers_.calls(B).at(0));
  ASSERT_TRUE(outcomes_[call1].has_value());
  EXPECT_OK(outcomes_[call1]->status());
}

// Scenario 14 (thread and descriptor counts: network_process_test).
TEST_F(NetworkTest, StopReachesConnectionsInEveryStateAndLeavesNothingBehind) {
  start(optionsFor({A, B, C}));
  servers_.answerHealth(A);               // A connected
  servers_.link(C, LinkEvent::kRefused);  // C closing; B still connecting
  ASSERT_EQ(stateOf(C), ConnectionState::kClosing);
  const size_t inFlight = call("in flight");
  network_->stop();
  EXPECT_EQ(servers_.liveChannels(), 0);
  EXPECT_EQ(timers_.scheduled(), 0u) << "every timer cancelled";
  ASSERT_TRUE(outcomes_[inFlight].has_value());
  EXPECT_CODE(outcomes_[inFlight]->status(), StatusCode::kShuttingDown);
  // A connect result that comes late is discarded.
  servers_.answerHealth(B);
  EXPECT_EQ(network_->status().connected, 0u);
  const size_t after = call("after");
  EXPECT_CODE(outcomes_[after]->status(), StatusCode::kShuttingDown);
  network_->stop();  // idempotent
}

TEST_F(NetworkTest, AHandshakeAnsweredAfterItsAttemptTimedOutIsDiscarded) {
  start(optionsFor({A}));
  const RequestMessage handshake = servers_.unansweredHealth(A).at(0);
  timers_.advance(5s);  // the connect timeout
  ASSERT_NE(stateOf(A), ConnectionState::kConnecting);
  servers_.reply(A, ResponseMessage{handshake.msgid, Status::ok(), Value("serving")}, 1);
  EXPECT_NE(stateOf(A), ConnectionState::kConnected);
  EXPECT_EQ(network_->stats().lateReplies, 1u);
  EXPECT_EQ(network_->stats().dismissals, 0u);
}

TEST_F(NetworkTest, StopFromAnEventCallbackStopsAtOnceAndReleasesOnTheNextStop) {
  start(optionsFor({A, B}));
  Network::Subscription stopper = network_->subscribe([this](const NetworkEvent& e) {
    if (e.kind == NetworkEvent::Kind::kConnected) network_->stop();
  });
  servers_.answerHealth(A);
  const size_t after = call("after");
  ASSERT_TRUE(outcomes_[after].has_value());
  EXPECT_CODE(outcomes_[after]->status(), StatusCode::kShuttingDown);
  EXPECT_EQ(servers_.liveChannels(), 2) << "released outside the callback";
  network_->stop();
  EXPECT_EQ(servers_.liveChannels(), 0);
  EXPECT_EQ(timers_.scheduled(), 0u);
}

TEST(NetworkLifetimeTest, AnEventCallbackHoldingTheLastHandleMayReleaseItself) {
  ManualTimerQueue timers;
  FakeServers servers;
  LogCapture log;
  Network::Options options;
  options.servers = {A};
  options.timers = &timers;
  options.log = log.sink();
  Network::Subscription self;
  int seen = 0;
  {
    Network network = Network::create(servers, options).value();
    self = network.subscribe([network, &self, &seen](const NetworkEvent&) {
      ++seen;
      self.release();  // and with it the last handle, once this callback returns
    });
  }
  servers.answerHealth(A);
  EXPECT_EQ(seen, 1);
  timers.runDue();  // the release handed to the timer queue
  EXPECT_EQ(servers.liveChannels(), 0);
  EXPECT_EQ(timers.scheduled(), 0u);
}

// Scenario 15's consumer: counts its live instances.
struct Consumer {
  static inline std::atomic<int> alive{0};
  Consumer() { ++alive; }
  ~Consumer() { --alive; }
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;
  int seen = 0;
};

// Scenario 15.
TEST_F(NetworkTest, AConsumerThatReleasedItsCallbacksIsDestroyedWhileTheNetworkRuns) {
  start(optionsFor({A, B}));
  auto consumer = std::make_shared<Consumer>();
  Network::Subscription subscription =
      network_->subscribe([consumer](const NetworkEvent&) { ++consumer->seen; });
  servers_.answerHealth(A);
  EXPECT_GT(consumer->seen, 0);
  subscription.release();
  consumer.reset();
  EXPECT_EQ(Consumer::alive.load(), 0);
  servers_.answerHealth(B);  // the network keeps running, its other subscribers too
  EXPECT_EQ(events_.back(), "connected " + B);
}

TEST_F(NetworkTest, ASubscriptionReleasedFromItsOwnCallbackIsSafe) {
  start(optionsFor({A}));
  int calls = 0;
  Network::Subscription self;
  self = network_->subscribe([&](const NetworkEvent&) {
    ++calls;
    self.release();
  });
  servers_.answerHealth(A);
  EXPECT_EQ(calls, 1);
}

// An event callback that throws is logged and counted; it stays subscribed, the others still
// get every event, and releasing it afterwards does not wait for a delivery that never ended.
TEST_F(NetworkTest, AnEventCallbackThatThrowsIsLoggedAndCountedAndOthersStillHearEvents) {
  start(optionsFor({A, B}));
  int thrown = 0;
  Network::Subscription throwing = network_->subscribe([&](const NetworkEvent&) {
    ++thrown;
    throw std::runtime_error("event callback failed");
  });
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  EXPECT_EQ(events_.back(), "connected " + B);  // the fixture's subscriber heard both
  EXPECT_GE(thrown, 2);
  EXPECT_EQ(network_->stats().callbackErrors, static_cast<uint64_t>(thrown));
  EXPECT_GE(log_.count(LogLevel::kError, "a network event callback threw: event callback failed"),
            1)
      << log_.dump();
  throwing.release();
}

TEST_F(NetworkTest, AMisbehavingServerIsDismissedAndBackedOffExponentially) {
  start(optionsFor({A, B}));
  servers_.answerHealth(B);
  std::vector<int> attemptsAt;
  for (int round = 0; round < 3; ++round) {
    servers_.answerHealth(A);
    servers_.replyBytes(A, "\xc1");  // never valid MessagePack
    timers_.runDue();
    ASSERT_EQ(stateOf(A), ConnectionState::kBackingOff) << round;
    const int before = servers_.attempts(A);
    const Duration delay = std::chrono::seconds(1 << round);  // 1 s, 2 s, 4 s
    timers_.advance(delay - 1ms);
    EXPECT_EQ(servers_.attempts(A), before) << round;
    timers_.advance(1ms);
    EXPECT_EQ(servers_.attempts(A), before + 1) << round;
  }
  EXPECT_EQ(network_->stats().dismissals, 3u);
  EXPECT_EQ(network_->stats().badReplies, 3u);
}

TEST_F(NetworkTest, BackoffJitterStaysWithinItsBounds) {
  Network::Options options = optionsFor({A});
  options.backoffJitter = 0.2;
  options.seed = 7;
  start(options);
  servers_.link(A, LinkEvent::kRefused);
  timers_.runDue();
  timers_.advance(799ms);
  EXPECT_EQ(servers_.attempts(A), 1);
  timers_.advance(401ms);
  EXPECT_EQ(servers_.attempts(A), 2);
}

TEST_F(NetworkTest, AHandshakeAnsweredDrainingOrWronglyDoesNotConnect) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A, "draining");
  EXPECT_NE(stateOf(A), ConnectionState::kConnected);
  EXPECT_EQ(network_->stats().dismissals, 0u) << "draining is not misbehaving";
  servers_.answerHealth(B, "no such state");
  EXPECT_NE(stateOf(B), ConnectionState::kConnected);
  EXPECT_EQ(network_->stats().dismissals, 1u);
}

TEST_F(NetworkTest, AServerThatStartsDrainingIsLeftAtItsNextPing) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  timers_.advance(2s);
  servers_.answerHealth(A, "draining");
  EXPECT_EQ(network_->status().main, B);
}

TEST_F(NetworkTest, ACallRefusedByADrainingServerGoesToAnotherEvenIfNotIdempotent) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t c = call("c");  // not idempotent: only a refusal lets it go elsewhere
  const RequestMessage first = servers_.calls(A).at(0);
  servers_.reply(A, ResponseMessage{first.msgid,
                                    Status(StatusCode::kShuttingDown, "draining").asRefused(),
                                    Value()});
  EXPECT_FALSE(outcomes_[c].has_value());
  EXPECT_EQ(network_->status().main, B) << "the draining server is replaced";
  ASSERT_EQ(methodsSentTo(B), std::vector<std::string>{"c"});
  EXPECT_NE(servers_.calls(B).at(0).msgid, first.msgid) << "under a fresh id";
  answer(B, servers_.calls(B).at(0));
  ASSERT_TRUE(outcomes_[c].has_value());
  EXPECT_EQ(outcomes_[c]->value(), Value("c"));
  EXPECT_EQ(network_->stats().replayed, 1u);
  timers_.runDue();
  EXPECT_EQ(servers_.liveChannels(), 1) << "A owed nothing more: closed";
  // A handler's own ShuttingDown (not a refusal) is the call's outcome.
  const size_t own = call("own");
  servers_.reply(B, ResponseMessage{servers_.calls(B).at(1).msgid,
                                    Status(StatusCode::kShuttingDown, "downstream"), Value()});
  ASSERT_TRUE(outcomes_[own].has_value());
  EXPECT_CODE(outcomes_[own]->status(), StatusCode::kShuttingDown);
}

TEST_F(NetworkTest, AServerAnsweringDrainingToAPingAnswersItsCallsBeforeItIsClosed) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t inFlight = call("in flight");  // to A, the main server
  timers_.advance(2s);
  servers_.answerHealth(A, "draining");
  EXPECT_EQ(network_->status().main, B);
  const size_t next = call("next");
  EXPECT_EQ(methodsSentTo(B), std::vector<std::string>{"next"}) << "A takes no new call";
  timers_.runDue();
  EXPECT_EQ(servers_.liveChannels(), 2) << "A still owes an answer";
  answer(A, servers_.calls(A).at(0));
  ASSERT_TRUE(outcomes_[inFlight].has_value());
  EXPECT_EQ(outcomes_[inFlight]->value(), Value("in flight")) << "answered, not PeerLost";
  timers_.runDue();
  EXPECT_EQ(servers_.liveChannels(), 1);
  EXPECT_FALSE(outcomes_[next].has_value());
  EXPECT_EQ(network_->stats().peerLost, 0u);
}

// A stopped server refuses the pings it polls (ShuttingDown, refused) as it refuses calls, while
// it still answers the calls it took: the refusal means draining, not a broken connection whose
// calls would fail PeerLost.
TEST_F(NetworkTest, APingRefusedByAStoppedServerMeansDrainingAndItsCallsAreStillAnswered) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t inFlight = call("in flight");  // to A, the main server; not idempotent
  timers_.advance(2s);
  servers_.refuseHealth(A, Status(StatusCode::kShuttingDown, "server: stopping").asRefused());
  EXPECT_EQ(network_->status().main, B);
  EXPECT_EQ(network_->stats().dismissals, 0u) << "draining is not misbehaving";
  timers_.runDue();
  EXPECT_EQ(servers_.liveChannels(), 2) << "A still owes an answer";
  answer(A, servers_.calls(A).at(0));
  ASSERT_TRUE(outcomes_[inFlight].has_value());
  EXPECT_EQ(outcomes_[inFlight]->value(), Value("in flight")) << "answered, not PeerLost";
  EXPECT_EQ(network_->stats().peerLost, 0u);
}

// Found by the network_replies fuzzer (its corpus keeps the input): failing a call owed by a
// draining server closed the connection, which failed the same call again, freed, while the
// first failure still used it.
TEST_F(NetworkTest, StopWithCallsOwedByADrainingServerFailsEachOnce) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t first = call("first");
  const size_t second = call("second");
  timers_.advance(2s);
  servers_.answerHealth(A, "draining");  // A owes both
  network_->stop();
  for (size_t c : {first, second}) {
    ASSERT_TRUE(outcomes_[c].has_value());
    EXPECT_CODE(outcomes_[c]->status(), StatusCode::kShuttingDown);
  }
  EXPECT_EQ(network_->stats().outcomes.at("ShuttingDown"), 2u);
}

TEST_F(NetworkTest, LeastInFlightSendsToTheLeastBusyServer) {
  Network::Options options = optionsFor({A, B});
  options.policy = SelectionPolicy::kLeastInFlight;
  start(options);
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  call("1");
  call("2");
  call("3");
  EXPECT_EQ(servers_.calls(A).size(), 2u);
  EXPECT_EQ(servers_.calls(B).size(), 1u);
  answer(A, servers_.calls(A).at(0));
  answer(A, servers_.calls(A).at(1));
  call("4");
  EXPECT_EQ(servers_.calls(A).size(), 3u);
}

TEST_F(NetworkTest, FanoutCastReachesEveryConnectedServer) {
  start(optionsFor({A, B, C}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  ASSERT_OK(client_->prepare({.fanout = true}).cast("hello", 1));
  auto casts = [&](const std::string& s) {
    int n = 0;
    for (const auto& sent : servers_.sent(s)) {
      n += std::holds_alternative<detail::NotificationMessage>(sent.message) ? 1 : 0;
    }
    return n;
  };
  EXPECT_EQ(casts(A), 1);
  EXPECT_EQ(casts(B), 1);
  EXPECT_EQ(casts(C), 0) << "still connecting";
}

TEST_F(NetworkTest, ACastMayWaitTheClientsTimeoutToBeSent) {
  start(optionsFor({A}));
  servers_.answerHealth(A);
  const Deadline castAt = timers_.now();
  ASSERT_OK(client_->prepare({.timeout = 3s}).cast("hello", 1));
  std::vector<Deadline> castDeadlines;
  for (const auto& sent : servers_.sent(A)) {
    if (std::holds_alternative<detail::NotificationMessage>(sent.message)) {
      castDeadlines.push_back(sent.deadline);
    }
  }
  EXPECT_EQ(castDeadlines, std::vector<Deadline>{castAt + 3s});
}

TEST_F(NetworkTest, BadServerListsAreRefused) {
  EXPECT_CODE(Network::create(servers_, optionsFor({})).status(), StatusCode::kInvalidTarget);
  EXPECT_CODE(Network::create(servers_, optionsFor({A, A})).status(), StatusCode::kInvalidTarget);
  Network::Options unknownPreferred = optionsFor({A});
  unknownPreferred.preferred = B;
  EXPECT_CODE(Network::create(servers_, unknownPreferred).status(), StatusCode::kInvalidTarget);
}

TEST_F(NetworkTest, CallMonitorHeartbeatsOnlyCountOnTheCallsOwnConnection) {
  start(optionsFor({A}));
  servers_.answerHealth(A);
  const size_t monitored = outcomes_.size();
  outcomes_.emplace_back();
  client_->prepare({.callMonitorTimeout = 3s})
      .callAsync("m", Array{}, [&](Result<Value> r) { outcomes_[monitored].emplace(std::move(r)); });
  const uint32_t id = servers_.calls(A).at(0).msgid;
  for (int i = 0; i < 5; ++i) {
    timers_.advance(2s);
    servers_.answerHealth(A);
    servers_.reply(A, detail::HeartbeatMessage{id});
  }
  EXPECT_FALSE(outcomes_[monitored].has_value()) << "heartbeats keep it alive";
  for (int i = 0; i < 3; ++i) {  // pings answered, heartbeats stopped
    timers_.advance(1s);
    servers_.answerHealth(A);
  }
  ASSERT_TRUE(outcomes_[monitored].has_value());
  EXPECT_CODE(outcomes_[monitored]->status(), StatusCode::kPeerLost);
  EXPECT_NE(outcomes_[monitored]->status().message().find("heartbeats"), std::string::npos);
}

// ----- a server list that changes (a registry's live servers)

TEST_F(NetworkTest, SetServersConnectsAnAddedServerAndAMainLeftOutIsReplacedWithoutAFailover) {
  start(optionsFor({A}));
  servers_.answerHealth(A);
  ASSERT_OK(network_->setServers({A, B}));
  EXPECT_EQ(servers_.attempts(B), 1);
  EXPECT_EQ(stateOf(B), ConnectionState::kConnecting);
  servers_.answerHealth(B);
  EXPECT_EQ(network_->status().connected, 2u);
  EXPECT_EQ(network_->status().main, A) << "the main server stays main";
  ASSERT_OK(network_->setServers({B}));
  EXPECT_EQ(network_->status().main, B);
  ASSERT_EQ(network_->status().servers.size(), 1u) << "A is no longer listed";
  timers_.runDue();  // channels are destroyed on the timer thread
  EXPECT_EQ(servers_.liveChannels(), 1) << "A had no call in flight: closed at once";
  const size_t c = call("after");
  EXPECT_EQ(methodsSentTo(B), std::vector<std::string>{"after"});
  answer(B, servers_.calls(B).at(0));
  EXPECT_TRUE(outcomes_[c].has_value() && outcomes_[c]->isOk());
  EXPECT_EQ(network_->stats().failovers, 0u) << "a removal is not a failure";
  const auto saw = [&](const std::string& event) {
    return std::find(events_.begin(), events_.end(), event) != events_.end();
  };
  EXPECT_TRUE(saw("added " + B));
  EXPECT_TRUE(saw("removed " + A));
  EXPECT_FALSE(saw("added " + A)) << "listed from the start";
}

TEST_F(NetworkTest, AServerLeftOutAnswersItsCallsBeforeItsConnectionCloses) {
  start(optionsFor({A, B}));
  servers_.answerHealth(A);
  servers_.answerHealth(B);
  const size_t first = call("first");  // to A, not idempotent: never sent twice
  ASSERT_EQ(methodsSentTo(A), std::vector<std::string>{"first"});
  ASSERT_OK(network_->setServers({B}));
  const size_t second = call("second");
  EXPECT_EQ(methodsSentTo(B), std::vector<std::string>{"second"}) << "A takes no new call";
  timers_.runDue();
  EXPECT_EQ(servers_.liveChannels(), 2) << "A stays connected while it owes an answer";
  ASSERT_OK(client_->prepare({.fanout = true}).cast("hello", 1));
  for (const auto& sent : servers_.sent(A)) {
    EXPECT_FALSE(std::holds_alternative<detail::NotificationMessage>(sent.message))
        << "a fanout skips a server left out";
  }
  answer(A, servers_.calls(A).at(0));
  ASSERT_TRUE(outcomes_[first].has_value());
  EXPECT_EQ(outcomes_[first]->value(), Value("first"));
  timers_.runDue();
  EXPECT_EQ(servers_.liveChannels(), 1) << "closed once its last call was answered";
  EXPECT_FALSE(outcomes_[second].has_value());
  EXPECT_EQ(network_->stats().peerLost, 0u);
}

TEST_F(NetworkTest, AnEmptyListHoldsCallsUntilAServerIsListedAndConnects) {
  start(optionsFor({A}));
  servers_.answerHealth(A);
  ASSERT_OK(network_->setServers({}));
  timers_.runDue();
  EXPECT_EQ(network_->status().main, "");
  const size_t waiting = call("waiting", false, 10s);
  EXPECT_EQ(network_->status().waiting, 1u);
  ASSERT_OK(network_->setServers({C}));
  servers_.answerHealth(C);
  EXPECT_EQ(methodsSentTo(C), std::vector<std::string>{"waiting"});
  answer(C, servers_.calls(C).at(0));
  EXPECT_TRUE(outcomes_[waiting].has_value() && outcomes_[waiting]->isOk());
  ASSERT_OK(network_->setServers({A, C}));  // listed again: a new connection
  EXPECT_EQ(servers_.attempts(A), 2);
  EXPECT_CODE(network_->setServers({A, A}), StatusCode::kInvalidTarget);
  EXPECT_CODE(network_->setServers({""}), StatusCode::kInvalidTarget);
  network_->stop();
  EXPECT_CODE(network_->setServers({A}), StatusCode::kShuttingDown);
}

TEST_F(NetworkTest, WithoutAutoConnectAWantedServerLeftOutPassesTheWishToTheFirstListed) {
  Network::Options options = optionsFor({A, B});
  options.autoConnect = false;
  start(options);
  EXPECT_EQ(servers_.attempts(A), 1);
  ASSERT_OK(network_->setServers({B, C}));
  EXPECT_EQ(servers_.attempts(B), 1);
  EXPECT_EQ(servers_.attempts(C), 0) << "only the wanted server is connected";
  servers_.answerHealth(B);
  EXPECT_EQ(network_->status().main, B);
}

}  // namespace
}  // namespace switchboard
