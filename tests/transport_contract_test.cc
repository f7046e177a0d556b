// The Transport contract (transports/transport.h), as every real transport must give it: the
// in-memory one, ZeroMQ over tcp loopback and MessagePack-RPC over TCP. Behaviours only one
// transport has stay in its own suite.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <latch>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "tests/support/reply_callbacks.h"
#include "tests/support/test_util.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::kDefaultWait;

// Each kind: a server transport whose listener a client transport's channels reach; whether a
// reply made after the listener closed is still delivered (else it is dropped and counted);
// a URL of its scheme that must be refused.
struct InMemoryKind {
  static constexpr bool kRepliesAfterCloseDelivered = true;
  static constexpr const char* kBadUrl = "memory://";
  TransportFactory factory;
  std::unique_ptr<Transport> server = factory.makeTransport("memory://contract").value();
  std::unique_ptr<Transport> client = factory.makeTransport("memory://contract").value();
  Result<std::unique_ptr<Listener>> listen(const Address& a) { return server->listen(a); }
  uint64_t repliesDropped() { return 0; }
};

struct ZmqKind {
  static constexpr bool kRepliesAfterCloseDelivered = false;
  static constexpr const char* kBadUrl = "tcp://127.0.0.1:notaport";
  TransportFactory factory;
  std::unique_ptr<ZmqTransport> server =
      std::make_unique<ZmqTransport>(factory.zmqContext(), "tcp://127.0.0.1:*");
  std::unique_ptr<Transport> client;
  Result<std::unique_ptr<Listener>> listen(const Address& a) {
    Result<std::unique_ptr<Listener>> listener = server->listen(a);
    if (listener) client = factory.makeTransport(server->boundEndpoint()).value();
    return listener;
  }
  uint64_t repliesDropped() { return server->stats().repliesDropped; }
};

struct MsgpackTcpKind {
  static constexpr bool kRepliesAfterCloseDelivered = false;
  static constexpr const char* kBadUrl = "msgpack+tcp://127.0.0.1:notaport";
  TransportFactory factory;
  std::unique_ptr<MsgpackRpcTcpTransport> server =
      std::make_unique<MsgpackRpcTcpTransport>("msgpack+tcp://127.0.0.1:0");
  std::unique_ptr<Transport> client;
  Result<std::unique_ptr<Listener>> listen(const Address& a) {
    Result<std::unique_ptr<Listener>> listener = server->listen(a);
    if (listener) client = factory.makeTransport(server->boundEndpoint()).value();
    return listener;
  }
  uint64_t repliesDropped() { return server->stats().repliesDropped; }
};

template <typename Kind>
class TransportContractTest : public ::testing::Test {
 protected:
  static Address address() { return Address{.topic = "t", .server = "s"}; }

  void SetUp() override {
    Result<std::unique_ptr<Listener>> listener = kind_.listen(address());
    ASSERT_TRUE(listener.isOk()) << listener.status();
    listener_ = std::move(listener).value();
  }

  // A channel whose replies are collected in replies_.
  std::unique_ptr<ClientChannel> channel() {
    return kind_.client
        ->openChannel(testing::eachReply([this](std::string bytes) {
          {
            std::lock_guard<std::mutex> lock(mutex_);
            replies_.push_back(std::move(bytes));
          }
          replied_.add();
        }))
        .value();
  }

  // Polls until `n` messages were taken (each poll bounded), or the bound passed.
  std::vector<IncomingPtr> take(size_t n, size_t maxBatch = 64) {
    std::vector<IncomingPtr> in;
    const Deadline bound = deadlineAfter(kDefaultWait);
    while (in.size() < n && Clock::now() < bound) {
      const size_t before = in.size();
      EXPECT_OK(listener_->poll(bound, maxBatch, in));
      EXPECT_LE(in.size() - before, maxBatch);
    }
    return in;
  }

  std::vector<std::string> replies() {
    std::lock_guard<std::mutex> lock(mutex_);
    return replies_;
  }

  Kind kind_;
  std::unique_ptr<Listener> listener_;
  std::mutex mutex_;
  std::vector<std::string> replies_;  // guarded by mutex_
  testing::Events replied_;
};

using Kinds = ::testing::Types<InMemoryKind, ZmqKind, MsgpackTcpKind>;
TYPED_TEST_SUITE(TransportContractTest, Kinds);

// Bodies are opaque to a transport, but the MessagePack-RPC one frames MessagePack: the tests
// send strings ("\xa1x" is the MessagePack string "x") and requests [0, n, "m", []].
std::string request(uint32_t n) {
  std::string r("\x94\x00\xce\x00\x00\x00\x00\xa1m\x90", 10);
  for (int i = 0; i < 4; ++i) r[3 + i] = static_cast<char>((n >> (24 - 8 * i)) & 0xff);
  return r;
}
std::string reply(uint32_t n) {
  std::string r = request(n);
  r[1] = '\x01';
  return r;
}

TYPED_TEST(TransportContractTest, SendReachesTheListenerAndTheReplyComesBack) {
  auto channel = this->channel();
  ASSERT_OK(channel->send(this->address(), request(1), deadlineAfter(kDefaultWait)));
  std::vector<IncomingPtr> in = this->take(1);
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0]->body(), request(1));
  EXPECT_FALSE(in[0]->peer().empty());
  ASSERT_OK(in[0]->reply(reply(1)));
  ASSERT_TRUE(this->replied_.waitFor(1));
  EXPECT_EQ(this->replies(), std::vector<std::string>{reply(1)});
}

TYPED_TEST(TransportContractTest, AMessageWhoseBodyWasReleasedStillReplies) {
  auto channel = this->channel();
  ASSERT_OK(channel->send(this->address(), request(1), deadlineAfter(kDefaultWait)));
  std::vector<IncomingPtr> in = this->take(1);
  ASSERT_EQ(in.size(), 1u);
  const std::string peer(in[0]->peer());
  in[0]->releaseBody();
  EXPECT_EQ(in[0]->peer(), peer);
  ASSERT_OK(in[0]->reply(reply(1)));
  ASSERT_TRUE(this->replied_.waitFor(1));
  EXPECT_EQ(this->replies(), std::vector<std::string>{reply(1)});
}

TYPED_TEST(TransportContractTest, ManyMessagesInFlightEachGetTheirReply) {
  constexpr uint32_t kMessages = 300;
  auto channel = this->channel();
  for (uint32_t i = 0; i < kMessages; ++i) {
    ASSERT_OK(channel->send(this->address(), request(i), deadlineAfter(kDefaultWait)));
  }
  std::vector<IncomingPtr> in = this->take(kMessages);
  ASSERT_EQ(in.size(), kMessages);
  std::set<std::string> expected;
  for (uint32_t i = 0; i < kMessages; ++i) expected.insert(reply(i));
  for (IncomingPtr& m : in) {
    std::string r(m->body());
    r[1] = '\x01';
    ASSERT_OK(m->reply(std::move(r)));
  }
  ASSERT_TRUE(this->replied_.waitFor(kMessages));
  const std::vector<std::string> got = this->replies();
  EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), expected);
  EXPECT_EQ(got.size(), kMessages);
}

TYPED_TEST(TransportContractTest, AReplyAfterTheListenerClosedIsDeliveredOrCounted) {
  auto channel = this->channel();
  ASSERT_OK(channel->send(this->address(), request(1), deadlineAfter(kDefaultWait)));
  std::vector<IncomingPtr> in = this->take(1);
  ASSERT_EQ(in.size(), 1u);
  this->listener_->close();
  const uint64_t droppedBefore = this->kind_.repliesDropped();
  EXPECT_OK(in[0]->reply(reply(1)));
  if (TypeParam::kRepliesAfterCloseDelivered) {
    EXPECT_TRUE(this->replied_.waitFor(1));
  } else {
    EXPECT_EQ(this->kind_.repliesDropped(), droppedBefore + 1);
  }
}

TYPED_TEST(TransportContractTest, InterruptWakesAPoll) {
  std::latch polling(1);
  std::thread interrupter([&] {
    polling.wait();
    this->listener_->interrupt();
  });
  const Deadline start = Clock::now();
  std::vector<IncomingPtr> in;
  polling.count_down();  // the interrupt may come before or during the poll: both wake it
  EXPECT_OK(this->listener_->poll(deadlineAfter(60s), 8, in));
  interrupter.join();
  EXPECT_TRUE(in.empty());
  EXPECT_LT(Clock::now() - start, kDefaultWait);
}

TYPED_TEST(TransportContractTest, PollRespectsMaxBatchAndTheDeadline) {
  auto channel = this->channel();
  for (uint32_t i = 0; i < 5; ++i) {
    ASSERT_OK(channel->send(this->address(), request(i), deadlineAfter(kDefaultWait)));
  }
  std::vector<IncomingPtr> in = this->take(5, 2);  // checks each poll takes at most 2
  EXPECT_EQ(in.size(), 5u);
  std::vector<IncomingPtr> none;
  const Deadline start = Clock::now();
  EXPECT_OK(this->listener_->poll(start + 50ms, 8, none));
  EXPECT_TRUE(none.empty());
  EXPECT_GE(Clock::now() - start, 45ms);
  EXPECT_LT(Clock::now() - start, kDefaultWait);
  EXPECT_OK(this->listener_->poll(start, 0, none));  // maxBatch 0 takes nothing
  EXPECT_TRUE(none.empty());
}

TYPED_TEST(TransportContractTest, CloseIsIdempotentAndEndsPolling) {
  this->listener_->close();
  this->listener_->close();
  std::vector<IncomingPtr> in;
  EXPECT_FALSE(this->listener_->poll(deadlineAfter(kDefaultWait), 8, in).isOk());
  EXPECT_TRUE(in.empty());
  this->listener_.reset();  // the destructor closes again
}

TYPED_TEST(TransportContractTest, AMalformedUrlOfItsSchemeIsRefused) {
  Result<std::unique_ptr<Transport>> made = this->kind_.factory.makeTransport(TypeParam::kBadUrl);
  if (!made) {
    EXPECT_CODE(made.status(), StatusCode::kInvalidTarget);
    return;
  }
  EXPECT_FALSE((*made)->listen(this->address()).isOk());
}

TYPED_TEST(TransportContractTest, NoCallbackRunsAfterTheChannelIsDestroyed) {
  std::atomic<bool> destroyed{false};
  std::atomic<int> late{0};
  testing::Events arrived;
  auto channel = this->kind_.client
                     ->openChannel(testing::eachReply([&](std::string) {
                       if (destroyed.load()) ++late;
                       arrived.add();
                     }))
                     .value();
  constexpr uint32_t kMessages = 50;
  for (uint32_t i = 0; i < kMessages; ++i) {
    ASSERT_OK(channel->send(this->address(), request(i), deadlineAfter(kDefaultWait)));
  }
  std::vector<IncomingPtr> in = this->take(kMessages);
  ASSERT_EQ(in.size(), kMessages);
  ASSERT_OK(in[0]->reply(reply(0)));
  ASSERT_TRUE(arrived.waitFor(1));
  std::latch started(1);
  std::thread replier([&] {
    started.count_down();
    for (uint32_t i = 1; i < kMessages; ++i) (void)in[i]->reply(reply(i));
  });
  started.wait();
  channel.reset();  // while replies arrive
  destroyed.store(true);
  replier.join();
  EXPECT_EQ(late.load(), 0);
}

TYPED_TEST(TransportContractTest, ConcurrentSendersAreEachDeliveredOnce) {
  constexpr uint32_t kThreads = 4, kPerThread = 50;
  auto channel = this->channel();
  std::latch go(kThreads);
  std::vector<std::thread> senders;
  for (uint32_t t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      go.arrive_and_wait();
      for (uint32_t i = 0; i < kPerThread; ++i) {
        EXPECT_OK(channel->send(this->address(), request(t * kPerThread + i),
                                deadlineAfter(kDefaultWait)));
      }
    });
  }
  for (std::thread& s : senders) s.join();
  std::vector<IncomingPtr> in = this->take(kThreads * kPerThread);
  std::map<std::string, int> seen;
  for (const IncomingPtr& m : in) ++seen[std::string(m->body())];
  EXPECT_EQ(seen.size(), kThreads * kPerThread);
  for (const auto& [body, times] : seen) EXPECT_EQ(times, 1);
  std::vector<IncomingPtr> extra;
  EXPECT_OK(this->listener_->poll(deadlineAfter(50ms), 8, extra));
  EXPECT_TRUE(extra.empty());
}

}  // namespace
}  // namespace switchboard
