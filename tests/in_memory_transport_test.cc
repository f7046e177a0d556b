// Contract tests of InMemoryTransport: routing (topic, server, fanout, exchanges), queueing,
// poll deadlines, batches and interrupts, replies, bounds, and thread-safety under concurrency.
#include "transports/in_memory_transport.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <latch>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/support/reply_callbacks.h"

namespace switchboard {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Generous bound for what should happen promptly; reached only when the code under test hangs.
constexpr Duration kLong = seconds(20);
// A wait expected to time out.
constexpr Duration kShort = milliseconds(20);
constexpr size_t kBatch = 64;

Address topicAddress(std::string topic, std::string exchange = {}) {
  return Address{std::move(exchange), std::move(topic), "", false};
}
Address serverAddress(std::string topic, std::string server, std::string exchange = {}) {
  return Address{std::move(exchange), std::move(topic), std::move(server), false};
}
Address fanoutAddress(std::string topic, std::string exchange = {}) {
  return Address{std::move(exchange), std::move(topic), "", true};
}

// Collects the replies a channel receives. Thread-safe.
class ReplySink {
 public:
  ReplyCallback callback() {
    return testing::eachReply([this](std::string bytes) {
      std::lock_guard lock(mu_);
      replies_.push_back(std::move(bytes));
    });
  }
  std::vector<std::string> replies() const {
    std::lock_guard lock(mu_);
    return replies_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> replies_;  // guarded by mu_
};

std::unique_ptr<Listener> listenOrDie(InMemoryTransport& transport, const Address& address) {
  Result<std::unique_ptr<Listener>> listener = transport.listen(address);
  EXPECT_TRUE(listener.isOk()) << listener.status();
  return std::move(listener).value();
}

std::unique_ptr<ClientChannel> channelOrDie(InMemoryTransport& transport,
                                            ReplyCallback onReply = {}) {
  Result<std::unique_ptr<ClientChannel>> channel = transport.openChannel(std::move(onReply));
  EXPECT_TRUE(channel.isOk()) << channel.status();
  return std::move(channel).value();
}

// Polls until `count` messages arrived or `kLong` passed; returns what arrived.
std::vector<IncomingPtr> pollCount(Listener& listener, size_t count) {
  const Deadline deadline = deadlineAfter(kLong);
  std::vector<IncomingPtr> out;
  while (out.size() < count && Clock::now() < deadline) {
    EXPECT_TRUE(listener.poll(deadline, count - out.size(), out).isOk());
  }
  return out;
}

// Polls once with a short deadline: what is queued now, up to kBatch.
std::vector<IncomingPtr> pollNow(Listener& listener) {
  std::vector<IncomingPtr> out;
  EXPECT_TRUE(listener.poll(deadlineAfter(kShort), kBatch, out).isOk());
  return out;
}

std::vector<std::string> bodies(const std::vector<IncomingPtr>& messages) {
  std::vector<std::string> result;
  for (const IncomingPtr& message : messages) result.emplace_back(message->body());
  return result;
}

using Bodies = std::vector<std::string>;

TEST(InMemoryTransportTest, ConstructsWithDefaultAndExplicitOptions) {
  InMemoryTransport byDefault;
  InMemoryTransport explicitly(InMemoryTransport::Options{});
  const InMemoryTransport::Stats stats = byDefault.stats();
  EXPECT_EQ(stats.sent, 0u);
  EXPECT_EQ(stats.queuedNow, 0u);
  EXPECT_EQ(explicitly.stats().delivered, 0u);
}

TEST(InMemoryTransportTest, SendToTopicIsPolledAndReplyReachesSender) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("calc", "s1"));
  ReplySink sink;
  auto channel = channelOrDie(transport, sink.callback());

  ASSERT_TRUE(channel->send(topicAddress("calc"), "question", deadlineAfter(kLong)).isOk());
  std::vector<IncomingPtr> got = pollCount(*listener, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]->body(), "question");
  EXPECT_EQ(got[0]->peer().substr(0, 7), "memory:");

  ASSERT_TRUE(got[0]->reply(std::string("answer\0bytes", 12)).isOk());
  EXPECT_EQ(sink.replies(), Bodies{std::string("answer\0bytes", 12)});
  got[0]->acknowledge();
  got[0]->acknowledge();  // idempotent

  const InMemoryTransport::Stats stats = transport.stats();
  EXPECT_EQ(stats.sent, 1u);
  EXPECT_EQ(stats.delivered, 1u);
  EXPECT_EQ(stats.repliesDelivered, 1u);
  EXPECT_EQ(stats.repliesDropped, 0u);
  EXPECT_EQ(stats.queuedNow, 0u);
}

TEST(InMemoryTransportTest, PeerNamesTheSendingChannel) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  auto first = channelOrDie(transport);
  auto second = channelOrDie(transport);
  ASSERT_TRUE(first->send(topicAddress("t"), "a", kNoDeadline).isOk());
  ASSERT_TRUE(second->send(topicAddress("t"), "b", kNoDeadline).isOk());
  std::vector<IncomingPtr> got = pollCount(*listener, 2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_NE(got[0]->peer(), got[1]->peer());
  EXPECT_EQ(got[0]->peer().substr(0, 7), "memory:");
  EXPECT_EQ(got[1]->peer().substr(0, 7), "memory:");
}

TEST(InMemoryTransportTest, TopicMessagesGoToExactlyOneOfTwoListeners) {
  InMemoryTransport transport;
  auto a = listenOrDie(transport, serverAddress("work", "a"));
  auto b = listenOrDie(transport, serverAddress("work", "b"));
  auto channel = channelOrDie(transport);
  constexpr int kCount = 100;
  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(channel->send(topicAddress("work"), std::to_string(i), kNoDeadline).isOk());
  }

  // Alternate small batches so both listeners take some. Everything is queued already, so each
  // poll takes what is there without waiting (its deadline has passed).
  std::vector<std::string> all;
  size_t fromA = 0;
  size_t fromB = 0;
  const Deadline deadline = deadlineAfter(kLong);
  while (all.size() < kCount && Clock::now() < deadline) {
    std::vector<IncomingPtr> outA;
    std::vector<IncomingPtr> outB;
    ASSERT_TRUE(a->poll(Clock::now(), 7, outA).isOk());
    ASSERT_TRUE(b->poll(Clock::now(), 7, outB).isOk());
    fromA += outA.size();
    fromB += outB.size();
    for (const std::string& body : bodies(outA)) all.push_back(body);
    for (const std::string& body : bodies(outB)) all.push_back(body);
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kCount));
  std::set<std::string> unique(all.begin(), all.end());
  EXPECT_EQ(unique.size(), static_cast<size_t>(kCount));
  EXPECT_EQ(fromA + fromB, static_cast<size_t>(kCount));
  EXPECT_GT(fromA, 0u);
  EXPECT_GT(fromB, 0u);
  EXPECT_TRUE(pollNow(*a).empty());
  EXPECT_TRUE(pollNow(*b).empty());
  EXPECT_EQ(transport.stats().delivered, static_cast<uint64_t>(kCount));
}

TEST(InMemoryTransportTest, ServerAddressedMessageGoesOnlyToThatServer) {
  InMemoryTransport transport;
  auto s1 = listenOrDie(transport, serverAddress("t", "s1"));
  auto s2 = listenOrDie(transport, serverAddress("t", "s2"));
  auto channel = channelOrDie(transport);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(channel->send(serverAddress("t", "s2"), "for-s2", kNoDeadline).isOk());
  }
  EXPECT_TRUE(pollNow(*s1).empty());
  EXPECT_EQ(bodies(pollCount(*s2, 5)), Bodies(5, "for-s2"));
  EXPECT_TRUE(pollNow(*s2).empty());
}

TEST(InMemoryTransportTest, ListenersOfTheSameServerAddressShareItsQueue) {
  InMemoryTransport transport;
  auto first = listenOrDie(transport, serverAddress("t", "s"));
  auto second = listenOrDie(transport, serverAddress("t", "s"));
  auto channel = channelOrDie(transport);
  ASSERT_TRUE(channel->send(serverAddress("t", "s"), "once", kNoDeadline).isOk());
  std::vector<IncomingPtr> got = pollNow(*first);
  std::vector<IncomingPtr> more = pollNow(*second);
  EXPECT_EQ(got.size() + more.size(), 1u);
}

TEST(InMemoryTransportTest, FanoutReachesEveryListenerOnce) {
  InMemoryTransport transport;
  auto s1 = listenOrDie(transport, serverAddress("t", "s1"));
  auto s2 = listenOrDie(transport, serverAddress("t", "s2"));
  auto s3 = listenOrDie(transport, serverAddress("t", "s3"));
  auto other = listenOrDie(transport, serverAddress("other", "s1"));
  auto channel = channelOrDie(transport);
  ASSERT_TRUE(channel->send(fanoutAddress("t"), "all", kNoDeadline).isOk());
  for (Listener* listener : {s1.get(), s2.get(), s3.get()}) {
    EXPECT_EQ(bodies(pollCount(*listener, 1)), Bodies{"all"});
    EXPECT_TRUE(pollNow(*listener).empty());
  }
  EXPECT_TRUE(pollNow(*other).empty());
  EXPECT_EQ(transport.stats().sent, 1u);
  EXPECT_EQ(transport.stats().delivered, 3u);
}

TEST(InMemoryTransportTest, FanoutWithoutListenersIsDroppedAndCounted) {
  InMemoryTransport transport;
  auto channel = channelOrDie(transport);
  ASSERT_TRUE(channel->send(fanoutAddress("nobody"), "lost", kNoDeadline).isOk());
  EXPECT_EQ(transport.stats().fanoutDropped, 1u);
  EXPECT_EQ(transport.stats().queuedNow, 0u);
  auto late = listenOrDie(transport, serverAddress("nobody", "s"));
  EXPECT_TRUE(pollNow(*late).empty());
}

TEST(InMemoryTransportTest, ExchangesAreIsolated) {
  InMemoryTransport transport;
  auto inA = listenOrDie(transport, serverAddress("t", "s", "a"));
  auto inDefault = listenOrDie(transport, serverAddress("t", "s"));
  auto channel = channelOrDie(transport);

  ASSERT_TRUE(channel->send(topicAddress("t", "b"), "to-b", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(fanoutAddress("t", "b"), "fan-b", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(serverAddress("t", "s", "b"), "server-b", kNoDeadline).isOk());
  EXPECT_TRUE(pollNow(*inA).empty());
  EXPECT_TRUE(pollNow(*inDefault).empty());

  ASSERT_TRUE(channel->send(topicAddress("t", "a"), "to-a", kNoDeadline).isOk());
  EXPECT_EQ(bodies(pollCount(*inA, 1)), Bodies{"to-a"});
  EXPECT_TRUE(pollNow(*inDefault).empty());

  // An empty exchange is the "default" exchange.
  ASSERT_TRUE(channel->send(topicAddress("t", "default"), "to-default", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(fanoutAddress("t"), "fan-default", kNoDeadline).isOk());
  EXPECT_EQ(bodies(pollCount(*inDefault, 2)), (Bodies{"fan-default", "to-default"}));
  EXPECT_TRUE(pollNow(*inA).empty());
}

TEST(InMemoryTransportTest, MessagesQueuedBeforeListenAreDeliveredAfter) {
  InMemoryTransport transport;
  auto channel = channelOrDie(transport);
  ASSERT_TRUE(channel->send(topicAddress("t"), "early-topic", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(serverAddress("t", "s"), "early-server", kNoDeadline).isOk());
  EXPECT_EQ(transport.stats().queuedNow, 2u);

  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  // The server queue is taken before the topic queue.
  EXPECT_EQ(bodies(pollCount(*listener, 2)), (Bodies{"early-server", "early-topic"}));
  EXPECT_EQ(transport.stats().queuedNow, 0u);
}

TEST(InMemoryTransportTest, PollTakesServerThenFanoutThenTopic) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  auto channel = channelOrDie(transport);
  ASSERT_TRUE(channel->send(topicAddress("t"), "topic", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(fanoutAddress("t"), "fanout", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(serverAddress("t", "s"), "server", kNoDeadline).isOk());
  EXPECT_EQ(bodies(pollCount(*listener, 3)), (Bodies{"server", "fanout", "topic"}));
}

TEST(InMemoryTransportTest, CloseLeavesUnpolledMessagesForAnotherListener) {
  InMemoryTransport transport;
  auto first = listenOrDie(transport, serverAddress("t", "s1"));
  auto channel = channelOrDie(transport);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(channel->send(topicAddress("t"), std::to_string(i), kNoDeadline).isOk());
  }
  ASSERT_TRUE(channel->send(serverAddress("t", "s1"), "for-s1", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(fanoutAddress("t"), "fan", kNoDeadline).isOk());

  std::vector<IncomingPtr> out;
  ASSERT_TRUE(first->poll(deadlineAfter(kLong), 1, out).isOk());
  EXPECT_EQ(bodies(out), Bodies{"for-s1"});
  first->close();
  first->close();                                  // idempotent
  EXPECT_EQ(transport.stats().fanoutDropped, 1u);  // its own fanout copy
  out.clear();
  EXPECT_EQ(first->poll(deadlineAfter(kLong), kBatch, out).code(), StatusCode::kShuttingDown);
  EXPECT_TRUE(out.empty());

  auto second = listenOrDie(transport, serverAddress("t", "s2"));
  EXPECT_EQ(bodies(pollCount(*second, 5)), (Bodies{"0", "1", "2", "3", "4"}));

  // A server queue outlives its listener too.
  ASSERT_TRUE(channel->send(serverAddress("t", "s1"), "later-s1", kNoDeadline).isOk());
  first.reset();
  auto again = listenOrDie(transport, serverAddress("t", "s1"));
  EXPECT_EQ(bodies(pollCount(*again, 1)), Bodies{"later-s1"});
}

TEST(InMemoryTransportTest, InterruptWakesABlockedPoll) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  std::latch started(1);
  const Deadline deadline = deadlineAfter(kLong);
  Status status = Status(StatusCode::kInvalidState, "not run");
  size_t received = 1;
  Deadline returnedAt;
  std::thread poller([&] {
    started.count_down();
    std::vector<IncomingPtr> out;
    status = listener->poll(deadline, kBatch, out);
    returnedAt = Clock::now();
    received = out.size();
  });
  started.wait();
  // Whether the poll is blocked yet or not, interrupt is sticky: it returns promptly.
  listener->interrupt();
  poller.join();
  EXPECT_TRUE(status.isOk()) << status;
  EXPECT_EQ(received, 0u);
  EXPECT_LT(returnedAt, deadline);
}

TEST(InMemoryTransportTest, InterruptIsStickyForOnePoll) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  listener->interrupt();
  listener->interrupt();  // not counted: one poll consumes it

  const Deadline deadline = deadlineAfter(kLong);
  std::vector<IncomingPtr> out;
  ASSERT_TRUE(listener->poll(deadline, kBatch, out).isOk());
  EXPECT_LT(Clock::now(), deadline);
  EXPECT_TRUE(out.empty());

  // The flag is cleared: the next poll waits for its deadline.
  const Deadline shortDeadline = deadlineAfter(kShort);
  ASSERT_TRUE(listener->poll(shortDeadline, kBatch, out).isOk());
  EXPECT_GE(Clock::now(), shortDeadline);
  EXPECT_TRUE(out.empty());
}

TEST(InMemoryTransportTest, SendWakesABlockedPoll) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  auto channel = channelOrDie(transport);
  std::latch started(1);
  const Deadline deadline = deadlineAfter(kLong);
  std::vector<IncomingPtr> out;
  Status status;
  std::thread poller([&] {
    started.count_down();
    status = listener->poll(deadline, kBatch, out);
  });
  started.wait();
  ASSERT_TRUE(channel->send(topicAddress("t"), "wake", kNoDeadline).isOk());
  poller.join();
  EXPECT_TRUE(status.isOk()) << status;
  EXPECT_EQ(bodies(out), Bodies{"wake"});
}

TEST(InMemoryTransportTest, PollWithShortDeadlineAndNothingQueuedReturnsEmpty) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  const Deadline deadline = deadlineAfter(kShort);
  std::vector<IncomingPtr> out;
  ASSERT_TRUE(listener->poll(deadline, kBatch, out).isOk());
  EXPECT_TRUE(out.empty());
  EXPECT_GE(Clock::now(), deadline);
  // A deadline in the past returns at once.
  ASSERT_TRUE(listener->poll(Clock::now() - seconds(1), kBatch, out).isOk());
  EXPECT_TRUE(out.empty());
}

TEST(InMemoryTransportTest, PollRespectsMaxBatchAndAppends) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  auto channel = channelOrDie(transport);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(channel->send(topicAddress("t"), std::to_string(i), kNoDeadline).isOk());
  }
  std::vector<IncomingPtr> out;
  for (size_t expected : {3u, 6u, 9u, 10u}) {
    ASSERT_TRUE(listener->poll(deadlineAfter(kLong), 3, out).isOk());
    EXPECT_EQ(out.size(), expected);
  }
  EXPECT_EQ(bodies(out), (Bodies{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}));
}

TEST(InMemoryTransportTest, ReplyAfterChannelDestroyedIsDroppedAndCounted) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  ReplySink sink;
  auto channel = channelOrDie(transport, sink.callback());
  ASSERT_TRUE(channel->send(topicAddress("t"), "q", kNoDeadline).isOk());
  std::vector<IncomingPtr> got = pollCount(*listener, 1);
  ASSERT_EQ(got.size(), 1u);
  channel.reset();

  EXPECT_TRUE(got[0]->reply("too late").isOk());
  EXPECT_TRUE(sink.replies().empty());
  EXPECT_EQ(transport.stats().repliesDropped, 1u);
  EXPECT_EQ(transport.stats().repliesDelivered, 0u);
}

TEST(InMemoryTransportTest, ReplyFromASendOnlyChannelIsDropped) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  auto channel = channelOrDie(transport);  // no callback
  ASSERT_TRUE(channel->send(topicAddress("t"), "cast", kNoDeadline).isOk());
  std::vector<IncomingPtr> got = pollCount(*listener, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0]->reply("ignored").isOk());
  EXPECT_EQ(transport.stats().repliesDropped, 1u);
}

TEST(InMemoryTransportTest, ReplyAfterListenerClosedIsStillDelivered) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  ReplySink sink;
  auto channel = channelOrDie(transport, sink.callback());
  ASSERT_TRUE(channel->send(topicAddress("t"), "q1", kNoDeadline).isOk());
  ASSERT_TRUE(channel->send(topicAddress("t"), "q2", kNoDeadline).isOk());
  std::vector<IncomingPtr> got = pollCount(*listener, 2);
  ASSERT_EQ(got.size(), 2u);

  listener->close();
  EXPECT_TRUE(got[0]->reply("r1").isOk());
  listener.reset();
  EXPECT_TRUE(got[1]->reply("r2").isOk());
  EXPECT_EQ(sink.replies(), (Bodies{"r1", "r2"}));
  EXPECT_EQ(transport.stats().repliesDelivered, 2u);
}

TEST(InMemoryTransportTest, InvalidAddressesAreRejected) {
  InMemoryTransport transport;
  EXPECT_EQ(transport.listen(serverAddress("", "s")).status().code(), StatusCode::kInvalidTarget);
  EXPECT_EQ(transport.listen(serverAddress("t", "")).status().code(), StatusCode::kInvalidTarget);
  EXPECT_EQ(transport.listen(topicAddress("")).status().code(), StatusCode::kInvalidTarget);
  auto channel = channelOrDie(transport);
  EXPECT_EQ(channel->send(topicAddress(""), "x", kNoDeadline).code(), StatusCode::kInvalidTarget);
  EXPECT_EQ(channel->send(fanoutAddress(""), "x", kNoDeadline).code(), StatusCode::kInvalidTarget);
  EXPECT_EQ(channel->send(serverAddress("", "s"), "x", kNoDeadline).code(),
            StatusCode::kInvalidTarget);
  EXPECT_EQ(transport.stats().sent, 0u);
}

TEST(InMemoryTransportTest, FullQueueGivesOverloaded) {
  InMemoryTransport transport(InMemoryTransport::Options{.maxQueuedPerQueue = 3});
  auto channel = channelOrDie(transport);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(channel->send(topicAddress("t"), "m", kNoDeadline).isOk());
  }
  EXPECT_EQ(channel->send(topicAddress("t"), "m", kNoDeadline).code(), StatusCode::kOverloaded);
  // Queues are bounded one by one.
  EXPECT_TRUE(channel->send(serverAddress("t", "s"), "m", kNoDeadline).isOk());
  EXPECT_TRUE(channel->send(topicAddress("t", "other"), "m", kNoDeadline).isOk());
  EXPECT_EQ(transport.stats().queuedNow, 5u);

  // Taking one makes room for one.
  auto listener = listenOrDie(transport, serverAddress("t", "s2"));
  std::vector<IncomingPtr> out;
  ASSERT_TRUE(listener->poll(deadlineAfter(kLong), 1, out).isOk());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(channel->send(topicAddress("t"), "m", kNoDeadline).isOk());
  EXPECT_EQ(channel->send(topicAddress("t"), "m", kNoDeadline).code(), StatusCode::kOverloaded);

  // A listener's fanout copies are bounded too.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(channel->send(fanoutAddress("t"), "f", kNoDeadline).isOk());
  }
  EXPECT_EQ(channel->send(fanoutAddress("t"), "f", kNoDeadline).code(), StatusCode::kOverloaded);
}

TEST(InMemoryTransportTest, ChannelDestroyedWhileRepliesRunNeverCallsItAfterwards) {
  InMemoryTransport transport;
  auto listener = listenOrDie(transport, serverAddress("t", "s"));
  constexpr int kIterations = 2000;
  constexpr int kRepliesPerIteration = 8;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    std::atomic<int> calls{0};
    std::atomic<bool> destroyed{false};
    std::atomic<int> callsAfterDestroy{0};
    auto channel = channelOrDie(transport, testing::eachReply([&](std::string) {
      calls.fetch_add(1);
      if (destroyed.load()) callsAfterDestroy.fetch_add(1);
    }));
    ASSERT_TRUE(channel->send(topicAddress("t"), "q", kNoDeadline).isOk());
    std::vector<IncomingPtr> got = pollCount(*listener, 1);
    ASSERT_EQ(got.size(), 1u);

    std::latch started(1);
    std::thread replier([&] {
      started.count_down();
      for (int i = 0; i < kRepliesPerIteration; ++i) EXPECT_TRUE(got[0]->reply("r").isOk());
    });
    started.wait();
    channel.reset();
    destroyed.store(true);
    const int callsAtDestruction = calls.load();
    replier.join();
    ASSERT_EQ(calls.load(), callsAtDestruction) << "iteration " << iteration;
    ASSERT_EQ(callsAfterDestroy.load(), 0) << "iteration " << iteration;
  }
  const InMemoryTransport::Stats stats = transport.stats();
  EXPECT_EQ(stats.repliesDelivered + stats.repliesDropped,
            static_cast<uint64_t>(kIterations) * kRepliesPerIteration);
}

TEST(InMemoryTransportTest, ConcurrentSendersAndListenersDeliverEachMessageOnce) {
  InMemoryTransport transport;
  constexpr int kSenders = 4;
  constexpr int kPerSender = 500;
  constexpr size_t kTotal = kSenders * kPerSender;
  std::unique_ptr<Listener> listeners[] = {listenOrDie(transport, serverAddress("t", "l0")),
                                           listenOrDie(transport, serverAddress("t", "l1"))};

  // Each sender's channel counts the replies that come back and checks they are its own.
  std::atomic<int> repliesReceived{0};
  std::atomic<int> misrouted{0};
  std::vector<std::unique_ptr<ClientChannel>> channels;
  for (int s = 0; s < kSenders; ++s) {
    const std::string prefix = std::to_string(s) + ":";
    channels.push_back(channelOrDie(transport, testing::eachReply([&, prefix](std::string bytes) {
      repliesReceived.fetch_add(1);
      if (bytes.rfind(prefix, 0) != 0) misrouted.fetch_add(1);
    })));
  }

  const Deadline deadline = deadlineAfter(kLong);
  std::atomic<size_t> received{0};
  std::vector<std::string> bodiesOf[2];
  std::latch go(kSenders + 2);
  std::vector<std::thread> threads;
  for (int l = 0; l < 2; ++l) {
    threads.emplace_back([&, l] {
      go.arrive_and_wait();
      while (received.load() < kTotal && Clock::now() < deadline) {
        std::vector<IncomingPtr> out;
        ASSERT_TRUE(listeners[l]->poll(deadline, 16, out).isOk());
        for (IncomingPtr& message : out) {
          bodiesOf[l].emplace_back(message->body());
          EXPECT_TRUE(message->reply(std::string(message->body())).isOk());
        }
        if (received.fetch_add(out.size()) + out.size() >= kTotal) {
          for (auto& listener : listeners) listener->interrupt();
        }
      }
    });
  }
  for (int s = 0; s < kSenders; ++s) {
    threads.emplace_back([&, s] {
      go.arrive_and_wait();
      for (int i = 0; i < kPerSender; ++i) {
        EXPECT_TRUE(
            channels[s]
                ->send(topicAddress("t"), std::to_string(s) + ":" + std::to_string(i), deadline)
                .isOk());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  std::multiset<std::string> all(bodiesOf[0].begin(), bodiesOf[0].end());
  all.insert(bodiesOf[1].begin(), bodiesOf[1].end());
  EXPECT_EQ(all.size(), kTotal);
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), kTotal);
  EXPECT_EQ(repliesReceived.load(), static_cast<int>(kTotal));
  EXPECT_EQ(misrouted.load(), 0);
  const InMemoryTransport::Stats stats = transport.stats();
  EXPECT_EQ(stats.sent, kTotal);
  EXPECT_EQ(stats.delivered, kTotal);
  EXPECT_EQ(stats.queuedNow, 0u);
}

}  // namespace
}  // namespace switchboard
