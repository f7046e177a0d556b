// Notifications over ZeroMQ: ZmqTransport::publish/subscribe through an in-process
// ZmqNotificationBroker on tcp loopback: fan-out, pools, requeue, restarts, bad input, expiry.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "tests/support/test_util.h"
#include "transports/zmq_notification_broker.h"
#include "transports/zmq_transport.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;

constexpr auto kWait = 10s;
constexpr auto kQuiet = 150ms;  // how long "nothing more arrives" is watched for
const std::string kTopic = "notifications.info";

class ZmqNotificationTest : public ::testing::Test {
 protected:
  void SetUp() override { startBroker(ZmqNotificationBroker::Options{}); }

  void startBroker(ZmqNotificationBroker::Options options, int heartbeatIvlMs = 1000) {
    transport_.reset();
    broker_.reset();
    options.maxDeliveries = 3;
    options.log = log_.sink();
    broker_ = std::make_unique<ZmqNotificationBroker>(context_, "tcp://127.0.0.1:0", options);
    ASSERT_OK(broker_->start());
    url_ = broker_->boundEndpoint();
    ZmqTransport::Options transportOptions;
    transportOptions.log = log_.sink();
    transportOptions.heartbeatIvlMs = heartbeatIvlMs;
    transport_ = std::make_unique<ZmqTransport>(context_, url_, transportOptions);
  }

  // Subscribes and waits until the broker counts `expectedSubscribers`.
  std::unique_ptr<Listener> subscribe(const std::string& pool, size_t expectedSubscribers) {
    Result<std::unique_ptr<Listener>> listener = transport_->subscribe({{kTopic}, pool});
    EXPECT_OK(listener.status());
    if (!listener) return nullptr;
    EXPECT_TRUE(broker_->waitForStats(
        [&](const ZmqNotificationBroker::Stats& s) { return s.subscribers == expectedSubscribers; },
        deadlineAfter(kWait)))
        << "subscribers: " << broker_->stats().subscribers;
    return std::move(listener).value();
  }

  void publishAll(int from, int to) {
    for (int i = from; i < to; ++i) ASSERT_OK(transport_->publish(kTopic, "m" + std::to_string(i)));
  }

  // Polls `listeners` in turn until `count` messages arrived in all, or kWait passed;
  // acknowledges each unless `acknowledge` is false (then they are returned in `held`).
  std::map<Listener*, std::vector<std::string>> collect(const std::vector<Listener*>& listeners,
                                                        size_t count, bool acknowledge = true,
                                                        std::vector<IncomingPtr>* held = nullptr) {
    std::map<Listener*, std::vector<std::string>> got;
    size_t total = 0;
    const Deadline deadline = deadlineAfter(kWait);
    while (total < count && Clock::now() < deadline) {
      for (Listener* listener : listeners) {
        std::vector<IncomingPtr> batch;
        EXPECT_OK(listener->poll(deadlineAfter(5ms), 64, batch));
        for (IncomingPtr& m : batch) {
          got[listener].emplace_back(m->body());
          ++total;
          if (acknowledge) {
            m->acknowledge();
          } else if (held != nullptr) {
            held->push_back(std::move(m));
          }
        }
      }
    }
    return got;
  }

  // Expects nothing more to arrive at any of `listeners` within kQuiet.
  void expectQuiet(const std::vector<Listener*>& listeners) {
    const Deadline deadline = deadlineAfter(kQuiet);
    while (Clock::now() < deadline) {
      for (Listener* listener : listeners) {
        std::vector<IncomingPtr> batch;
        EXPECT_OK(listener->poll(deadlineAfter(5ms), 64, batch));
        for (IncomingPtr& m : batch) {
          ADD_FAILURE() << "unexpected message " << m->body();
          m->acknowledge();
        }
      }
    }
  }

  // A started broker at `url`, a port a closed broker used: ZeroMQ releases it
  // asynchronously, so binding is retried for a while.
  std::unique_ptr<ZmqNotificationBroker> startAt(const std::string& url) {
    ZmqNotificationBroker::Options options;
    options.log = log_.sink();
    const Deadline deadline = deadlineAfter(kWait);
    for (;;) {
      auto broker = std::make_unique<ZmqNotificationBroker>(context_, url, options);
      const Status started = broker->start();
      if (started) return broker;
      if (Clock::now() >= deadline) {
        ADD_FAILURE() << "cannot start a broker at " << url << ": " << started;
        return nullptr;
      }
      std::this_thread::sleep_for(10ms);
    }
  }

  static std::vector<std::string> range(int from, int to) {
    std::vector<std::string> out;
    for (int i = from; i < to; ++i) out.push_back("m" + std::to_string(i));
    return out;
  }

  testing::LogCapture log_;  // outlives the broker and the transport, which log to it
  ZmqContext context_;
  std::unique_ptr<ZmqNotificationBroker> broker_;
  std::string url_;
  std::unique_ptr<ZmqTransport> transport_;
};

TEST_F(ZmqNotificationTest, PublishReachesSubscriber) {
  auto listener = subscribe("", 1);
  ASSERT_TRUE(listener);
  ASSERT_OK(transport_->publish(kTopic, "hello"));
  auto got = collect({listener.get()}, 1);
  EXPECT_EQ(got[listener.get()], std::vector<std::string>{"hello"});
  EXPECT_TRUE(broker_->waitForStats(
      [&](const ZmqNotificationBroker::Stats& s) { return s.acknowledged == 1; },
      deadlineAfter(kWait)));
  const auto stats = broker_->stats();
  EXPECT_EQ(stats.published, 1u);
  EXPECT_EQ(stats.delivered, 1u);
  EXPECT_EQ(stats.queuedNow, 0u);
  EXPECT_EQ(transport_->stats().received, 1u);
}

TEST_F(ZmqNotificationTest, MessageContract) {
  auto listener = subscribe("", 1);
  ASSERT_TRUE(listener);
  ASSERT_OK(transport_->publish(kTopic, "x"));
  std::vector<IncomingPtr> batch;
  const Deadline deadline = deadlineAfter(kWait);
  while (batch.empty() && Clock::now() < deadline) {
    ASSERT_OK(listener->poll(deadline, 8, batch));
  }
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_CODE(batch[0]->reply("no"), StatusCode::kInvalidState);
  EXPECT_EQ(batch[0]->peer(), "zmq-broker:" + url_);
  // interrupt() wakes a poll, or the next one.
  listener->interrupt();
  std::vector<IncomingPtr> none;
  const Deadline before = Clock::now();
  EXPECT_OK(listener->poll(deadlineAfter(kWait), 8, none));
  EXPECT_LT(Clock::now() - before, 5s);
  EXPECT_TRUE(none.empty());
  // After close(): poll fails, settling does nothing.
  listener->close();
  EXPECT_CODE(listener->poll(deadlineAfter(1ms), 8, none), StatusCode::kShuttingDown);
  batch[0]->acknowledge();
  batch.clear();
  EXPECT_TRUE(broker_->waitForStats(
      [&](const ZmqNotificationBroker::Stats& s) { return s.subscribers == 0; },
      deadlineAfter(kWait)));
  EXPECT_EQ(broker_->stats().acknowledged, 0u);
}

TEST_F(ZmqNotificationTest, BadArguments) {
  EXPECT_CODE(transport_->publish("", "x"), StatusCode::kInvalidTarget);
  EXPECT_CODE(transport_->subscribe({{}, ""}).status(), StatusCode::kInvalidTarget);
  EXPECT_CODE(transport_->subscribe({{kTopic, ""}, ""}).status(), StatusCode::kInvalidTarget);
  ZmqNotificationBroker second(context_, url_);
  EXPECT_CODE(second.start(), StatusCode::kTransportError);  // the port is taken
  EXPECT_CODE(broker_->start(), StatusCode::kInvalidState);
}

TEST_F(ZmqNotificationTest, TwoUnpooledSubscribersEachGetEveryMessage) {
  auto a = subscribe("", 1);
  auto b = subscribe("", 2);
  ASSERT_TRUE(a && b);
  publishAll(0, 10);
  auto got = collect({a.get(), b.get()}, 20);
  EXPECT_EQ(got[a.get()], range(0, 10));
  EXPECT_EQ(got[b.get()], range(0, 10));
  expectQuiet({a.get(), b.get()});
}

TEST_F(ZmqNotificationTest, PoolMembersShareTheWork) {
  auto a = subscribe("workers", 1);
  auto b = subscribe("workers", 2);
  ASSERT_TRUE(a && b);
  publishAll(0, 20);
  auto got = collect({a.get(), b.get()}, 20);
  std::vector<std::string> all = got[a.get()];
  all.insert(all.end(), got[b.get()].begin(), got[b.get()].end());
  std::sort(all.begin(), all.end());
  std::vector<std::string> expected = range(0, 20);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(all, expected);  // each exactly once overall
  expectQuiet({a.get(), b.get()});
  EXPECT_TRUE(broker_->waitForStats(
      [&](const ZmqNotificationBroker::Stats& s) { return s.acknowledged == 20; },
      deadlineAfter(kWait)));
}

TEST_F(ZmqNotificationTest, TwoPoolsAndUnpooledEachGetEveryMessage) {
  auto a1 = subscribe("a", 1);
  auto b1 = subscribe("b", 2);
  auto b2 = subscribe("b", 3);
  auto solo = subscribe("", 4);
  ASSERT_TRUE(a1 && b1 && b2 && solo);
  publishAll(0, 10);
  auto got = collect({a1.get(), b1.get(), b2.get(), solo.get()}, 30);
  EXPECT_EQ(got[a1.get()], range(0, 10));
  EXPECT_EQ(got[solo.get()], range(0, 10));
  std::vector<std::string> poolB = got[b1.get()];
  poolB.insert(poolB.end(), got[b2.get()].begin(), got[b2.get()].end());
  std::sort(poolB.begin(), poolB.end());
  std::vector<std::string> expected = range(0, 10);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(poolB, expected);
  expectQuiet({a1.get(), b1.get(), b2.get(), solo.get()});
}

TEST_F(ZmqNotificationTest, RequeueRedeliversUpToMaxDeliveries) {
  auto a = subscribe("workers", 1);
  auto b = subscribe("workers", 2);
  ASSERT_TRUE(a && b);
  ASSERT_OK(transport_->publish(kTopic, "again"));
  // maxDeliveries is 3: delivered three times (to either member), then dropped.
  for (int attempt = 1; attempt <= 3; ++attempt) {
    std::vector<IncomingPtr> held;
    auto got = collect({a.get(), b.get()}, 1, /*acknowledge=*/false, &held);
    ASSERT_EQ(held.size(), 1u) << "attempt " << attempt;
    EXPECT_EQ(held[0]->body(), "again");
    EXPECT_OK(held[0]->requeue());
    held[0]->acknowledge();  // the first of the two wins: ignored
  }
  EXPECT_TRUE(
      broker_->waitForStats([&](const ZmqNotificationBroker::Stats& s) { return s.exhausted == 1; },
                            deadlineAfter(kWait)));
  expectQuiet({a.get(), b.get()});
  const auto stats = broker_->stats();
  EXPECT_EQ(stats.delivered, 3u);
  EXPECT_EQ(stats.requeued, 2u);
  EXPECT_EQ(stats.acknowledged, 0u);
}

TEST_F(ZmqNotificationTest, DestroyedUnsettledMessageIsRequeued) {
  auto a = subscribe("", 1);
  ASSERT_TRUE(a);
  ASSERT_OK(transport_->publish(kTopic, "dropped-on-the-floor"));
  std::vector<IncomingPtr> held;
  collect({a.get()}, 1, /*acknowledge=*/false, &held);
  ASSERT_EQ(held.size(), 1u);
  held.clear();  // unsettled: requeued
  auto got = collect({a.get()}, 1);
  EXPECT_EQ(got[a.get()], std::vector<std::string>{"dropped-on-the-floor"});
}

TEST_F(ZmqNotificationTest, ClosedPoolMemberHeldMessagesGoToTheOther) {
  auto a = subscribe("workers", 1);
  ASSERT_TRUE(a);
  publishAll(0, 5);
  std::vector<IncomingPtr> held;
  auto got = collect({a.get()}, 5, /*acknowledge=*/false, &held);
  ASSERT_EQ(held.size(), 5u);
  auto b = subscribe("workers", 2);
  ASSERT_TRUE(b);
  a->close();  // unsubscribes with 5 held: back to the pool
  got = collect({b.get()}, 5);
  EXPECT_EQ(got[b.get()], range(0, 5));
  held.clear();  // settling after close does nothing
  expectQuiet({b.get()});
  EXPECT_TRUE(broker_->waitForStats(
      [&](const ZmqNotificationBroker::Stats& s) { return s.acknowledged == 5; },
      deadlineAfter(kWait)));
  EXPECT_EQ(broker_->stats().requeued, 5u);
}

TEST_F(ZmqNotificationTest, PoolMemberRestartedMissesNothing) {
  auto a = subscribe("workers", 1);
  ASSERT_TRUE(a);
  publishAll(0, 3);
  auto got = collect({a.get()}, 3);
  EXPECT_EQ(got[a.get()], range(0, 3));
  a.reset();  // closes
  publishAll(3, 8);
  auto again = subscribe("workers", 1);
  ASSERT_TRUE(again);
  got = collect({again.get()}, 5);
  EXPECT_EQ(got[again.get()], range(3, 8));
  expectQuiet({again.get()});
}

TEST_F(ZmqNotificationTest, PublishBeforeTheBrokerIsReachableIsQueued) {
  // A loopback port nothing listens on (bound, never listened, then released): connecting is
  // refused until the broker binds it, and ZeroMQ keeps what is published meanwhile.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  socklen_t length = sizeof address;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  ::close(fd);  // another process could take the port now: a small race, accepted
  const std::string url = "tcp://127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  ZmqTransport early(context_, url);
  ASSERT_OK(early.publish(kTopic, "early"));
  auto late = startAt(url);
  ASSERT_TRUE(late);
  EXPECT_TRUE(
      late->waitForStats([&](const ZmqNotificationBroker::Stats& s) { return s.published == 1; },
                         deadlineAfter(kWait)));
}

TEST_F(ZmqNotificationTest, MalformedMessagesAreCountedAndTheBrokerKeepsServing) {
  zmq::context_t& raw = *static_cast<zmq::context_t*>(context_.handle());
  zmq::socket_t dealer(raw, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(url_);
  const std::vector<std::vector<std::string>> bad = {
      {"X"},                        // unknown command
      {"PP", kTopic, "b"},          // unknown command
      {"P", kTopic},                // wrong frame count
      {"P", "", "body"},            // empty topic
      {"A", "12x"},                 // bad number
      {"R"},                        // wrong frame count
      {"S", "", "0", kTopic},       // window 0
      {"S", "", "ten", kTopic},     // bad number
      {"S", "", "10"},              // no topic
      {"S", "", "10", kTopic, ""},  // empty topic
      {"U", "extra"},               // wrong frame count
  };
  for (const auto& message : bad) {
    for (size_t i = 0; i < message.size(); ++i) {
      const auto flags = i + 1 < message.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      ASSERT_TRUE(dealer.send(zmq::buffer(message[i]), flags));
    }
  }
  EXPECT_TRUE(broker_->waitForStats(
      [&](const ZmqNotificationBroker::Stats& s) { return s.malformedDropped == bad.size(); },
      deadlineAfter(kWait)))
      << broker_->stats().malformedDropped;
  EXPECT_GT(log_.count(LogLevel::kWarning, "malformed"), 0);
  EXPECT_EQ(broker_->stats().subscribers, 0u);
  // Still serving.
  auto listener = subscribe("", 1);
  ASSERT_TRUE(listener);
  ASSERT_OK(transport_->publish(kTopic, "fine"));
  auto got = collect({listener.get()}, 1);
  EXPECT_EQ(got[listener.get()], std::vector<std::string>{"fine"});
}

TEST_F(ZmqNotificationTest, SilentSubscriberExpiresAndItsDeliveriesGoBack) {
  ZmqNotificationBroker::Options options;
  options.subscriberTimeout = 500ms;
  startBroker(options, /*heartbeatIvlMs=*/100);  // the transport's listeners refresh often
  // A raw subscriber that takes a delivery and then says nothing more.
  zmq::context_t& raw = *static_cast<zmq::context_t*>(context_.handle());
  zmq::socket_t dealer(raw, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(url_);
  ASSERT_TRUE(dealer.send(zmq::str_buffer("S"), zmq::send_flags::sndmore));
  ASSERT_TRUE(dealer.send(zmq::str_buffer("workers"), zmq::send_flags::sndmore));
  ASSERT_TRUE(dealer.send(zmq::str_buffer("10"), zmq::send_flags::sndmore));
  ASSERT_TRUE(dealer.send(zmq::buffer(kTopic), zmq::send_flags::none));
  ASSERT_TRUE(broker_->waitForStats(
      [&](const ZmqNotificationBroker::Stats& s) { return s.subscribers == 1; },
      deadlineAfter(kWait)));
  ASSERT_OK(transport_->publish(kTopic, "orphan"));
  dealer.set(zmq::sockopt::rcvtimeo, static_cast<int>(std::chrono::milliseconds(kWait).count()));
  std::vector<zmq::message_t> frames;
  zmq::message_t frame;
  do {
    ASSERT_TRUE(dealer.recv(frame));
    frames.emplace_back(frame.data(), frame.size());
  } while (frame.more());
  ASSERT_EQ(frames.size(), 4u);
  EXPECT_EQ(frames[0].to_string(), "D");
  EXPECT_EQ(frames[2].to_string(), kTopic);
  EXPECT_EQ(frames[3].to_string(), "orphan");
  // Silent: expired, and a member that keeps refreshing gets what it held.
  auto member = subscribe("workers", 2);
  ASSERT_TRUE(member);
  auto got = collect({member.get()}, 1);
  EXPECT_EQ(got[member.get()], std::vector<std::string>{"orphan"});
  EXPECT_EQ(broker_->stats().subscribersExpired, 1u);
  EXPECT_EQ(broker_->stats().subscribers, 1u);
}

TEST_F(ZmqNotificationTest, SubscriberSurvivesABrokerRestart) {
  auto listener = subscribe("", 1);
  ASSERT_TRUE(listener);
  broker_->stop();
  broker_ = startAt(url_);
  ASSERT_TRUE(broker_);
  // The listener subscribes again at its next heartbeat (from poll()).
  const Deadline deadline = deadlineAfter(kWait);
  while (broker_->stats().subscribers == 0 && Clock::now() < deadline) {
    std::vector<IncomingPtr> none;
    ASSERT_OK(listener->poll(deadlineAfter(20ms), 8, none));
  }
  ASSERT_EQ(broker_->stats().subscribers, 1u);
  ASSERT_OK(transport_->publish(kTopic, "after"));
  auto got = collect({listener.get()}, 1);
  EXPECT_EQ(got[listener.get()], std::vector<std::string>{"after"});
}

}  // namespace
}  // namespace switchboard
