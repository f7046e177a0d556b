// ZeroMQ transport end to end: RpcClient -> DEALER -> ROUTER -> server, over tcp loopback, ipc
// and inproc, for every executor; raw peers (REQ, DEALER), malformed frames, link events.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <future>
#include <latch>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "messaging/detail/wire.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/reply_callbacks.h"
#include "tests/support/test_util.h"
#include "transports/in_memory_transport.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using detail::decodeMessage;
using detail::encodeMessage;
using detail::RequestMessage;
using detail::ResponseMessage;

constexpr auto kWait = 10s;

Endpoint service(std::atomic<int>* casts = nullptr) {
  Endpoint ep;
  ep.method("echo", [](Value v) { return v; });
  ep.method("add", [](int64_t a, int64_t b) { return a + b; });
  ep.method("fail", [](std::string m) -> int { throw std::runtime_error(m); });
  ep.method("note", [casts]() {
    if (casts) ++*casts;
  });
  ep.method("later", [](CallContext& ctx, int64_t ms) {
    auto reply = std::make_shared<DeferredReply>(ctx.defer());
    (void)ctx.executor()->runAt(deadlineAfter(std::chrono::milliseconds(ms)),
                                [reply, ms] { reply->complete(ms); });
  });
  return ep;
}

std::string endpointFor(const std::string& scheme) {
  static std::atomic<int> counter{0};
  const std::string unique = std::to_string(::getpid()) + "-" + std::to_string(counter++);
  if (scheme == "tcp") return "tcp://127.0.0.1:*";
  if (scheme == "ipc") return "ipc:///tmp/switchboard-test-" + unique + ".sock";
  return "inproc://switchboard-test-" + unique;
}

// Param: executor kind x URL scheme.
template <typename Kind>
class ZmqEndToEndTest : public ::testing::Test {
 protected:
  // Starts a server on a fresh endpoint of `scheme`; returns the URL clients connect to.
  std::string serve(const std::string& scheme, Endpoint ep) {
    server_transport_ = std::make_unique<ZmqTransport>(factory_.zmqContext(), endpointFor(scheme));
    server_ = std::make_unique<MessageHandlingServer>(
        *server_transport_, Target{.topic = "t", .server = "s"}, RpcDispatcher({std::move(ep)}),
        Kind::make());
    EXPECT_TRUE(server_->start().isOk());
    serving_ = std::make_unique<testing::ServingThread>(*server_, Kind::kBlocking);
    return server_transport_->boundEndpoint();
  }

  RpcClient client(const std::string& url, Duration timeout = kWait) {
    client_transport_ = factory_.makeTransport(url).value();
    RpcClient::Options options;
    options.timeout = timeout;
    return RpcClient::create(*client_transport_, Target{.topic = "t"}, options).value();
  }

  void TearDown() override {
    if (server_) {
      server_->stop();
      EXPECT_TRUE(server_->wait(deadlineAfter(kWait)).isOk());
    }
    serving_.reset();
  }

  TransportFactory factory_;
  std::unique_ptr<ZmqTransport> server_transport_;
  std::unique_ptr<Transport> client_transport_;
  std::unique_ptr<MessageHandlingServer> server_;
  std::unique_ptr<testing::ServingThread> serving_;
};

using Kinds = ::testing::Types<testing::BlockingKind, testing::EventLoopKind,
                               testing::ThreadPoolKind>;
TYPED_TEST_SUITE(ZmqEndToEndTest, Kinds);

TYPED_TEST(ZmqEndToEndTest, CallsOverTcpIpcAndInproc) {
  for (const std::string scheme : {"tcp", "ipc", "inproc"}) {
    SCOPED_TRACE(scheme);
    const std::string url = this->serve(scheme, service());
    RpcClient client = this->client(url);
    EXPECT_EQ(client.template call<int64_t>("add", 2, 3).value(), 5);
    EXPECT_EQ(client.template call<std::string>("echo", "hi").value(), "hi");
    Result<Value> failed = client.callValue("fail", {"boom"});
    EXPECT_EQ(failed.status().code(), StatusCode::kRemoteError);
    EXPECT_EQ(failed.status().message(), "boom");
    EXPECT_EQ(client.callValue("nope", {}).status().code(), StatusCode::kNoSuchMethod);
    this->TearDown();
    this->server_.reset();
  }
}

TYPED_TEST(ZmqEndToEndTest, ManyCallsInFlightAndLargePayloads) {
  const std::string url = this->serve("tcp", service());
  RpcClient client = this->client(url);
  std::vector<boost::future<Result<Value>>> futures;
  constexpr int kCalls = 500;
  for (int i = 0; i < kCalls; ++i) futures.push_back(client.callAsync("add", {i, i}));
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_EQ(futures[i].wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    EXPECT_EQ(futures[i].get()->asInt(), 2 * i);
  }
  const std::string big(1 << 20, 'x');
  EXPECT_EQ(client.template call<std::string>("echo", big).value(), big);
}

TYPED_TEST(ZmqEndToEndTest, CastsAndDeferredReplies) {
  std::atomic<int> casts{0};
  const std::string url = this->serve("tcp", service(&casts));
  RpcClient client = this->client(url);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(client.cast("note").isOk());
  std::vector<boost::future<Result<Value>>> slow;
  for (int i = 0; i < 10; ++i) slow.push_back(client.callAsync("later", {20}));
  for (auto& f : slow) {
    ASSERT_EQ(f.wait_for(boost::chrono::seconds(10)), boost::future_status::ready);
    EXPECT_EQ(f.get()->asInt(), 20);
  }
  // Casts were sent before the calls on one connection, so they were handled before them.
  EXPECT_EQ(casts.load(), 10);
}

TYPED_TEST(ZmqEndToEndTest, NoServerMeansTimeoutNotHang) {
  RpcClient client = this->client("tcp://127.0.0.1:1", 200ms);  // nothing listens on port 1
  EXPECT_EQ(client.callValue("echo", {1}).status().code(), StatusCode::kTimeout);
}

// A peer that is not a Switchboard client: a raw socket with msgpack bodies.
class RawPeerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    transport_ = std::make_unique<ZmqTransport>(factory_.zmqContext(), "tcp://127.0.0.1:*");
    server_ = std::make_unique<MessageHandlingServer>(
        *transport_, Target{.topic = "t", .server = "s"}, RpcDispatcher({service()}),
        testing::ThreadPoolKind::make());
    ASSERT_TRUE(server_->start().isOk());
    url_ = transport_->boundEndpoint();
  }
  zmq::socket_t socket(zmq::socket_type type) {
    zmq::socket_t s(context_, type);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, 5000);
    s.connect(url_);
    return s;
  }
  static ResponseMessage receiveResponse(zmq::socket_t& s) {
    std::vector<zmq::message_t> frames;
    EXPECT_TRUE(zmq::recv_multipart(s, std::back_inserter(frames)).has_value());
    EXPECT_FALSE(frames.empty());
    if (frames.empty()) return {};
    auto decoded = decodeMessage(frames.back().to_string_view());
    EXPECT_TRUE(decoded.isOk()) << decoded.status();
    return decoded ? std::get<ResponseMessage>(decoded.message()) : ResponseMessage{};
  }

  TransportFactory factory_;
  zmq::context_t context_;
  std::unique_ptr<ZmqTransport> transport_;
  std::unique_ptr<MessageHandlingServer> server_;
  std::string url_;
};

TEST_F(RawPeerTest, ReqSocketGetsMessagePackRpcResponses) {
  zmq::socket_t req = socket(zmq::socket_type::req);
  req.send(zmq::buffer(encodeMessage(RequestMessage{7, "echo", {"hi"}, {}})));
  ResponseMessage r = receiveResponse(req);
  EXPECT_EQ(r.msgid, 7u);
  EXPECT_TRUE(r.error.isOk());
  EXPECT_EQ(r.result, Value("hi"));
  // The exact bytes of docs/PROTOCOL.md.
  const std::string request("\x94\x00\x01\xa4\x65\x63\x68\x6f\x91\xa2\x68\x69", 12);
  req.send(zmq::buffer(request));
  zmq::message_t reply;
  ASSERT_TRUE(req.recv(reply).has_value());
  EXPECT_EQ(reply.to_string(), std::string("\x94\x01\x01\xc0\xa2\x68\x69", 7));
}

TEST_F(RawPeerTest, DealerWithoutDelimiterKeepsManyRequestsInFlight) {
  zmq::socket_t dealer = socket(zmq::socket_type::dealer);
  constexpr uint32_t kRequests = 100;
  for (uint32_t id = 0; id < kRequests; ++id) {
    dealer.send(zmq::buffer(encodeMessage(RequestMessage{id, "add", {int64_t{id}, 1}, {}})));
  }
  std::vector<bool> seen(kRequests, false);
  for (uint32_t i = 0; i < kRequests; ++i) {
    ResponseMessage r = receiveResponse(dealer);
    ASSERT_LT(r.msgid, kRequests);
    EXPECT_FALSE(seen[r.msgid]);
    seen[r.msgid] = true;
    EXPECT_EQ(r.result, Value(int64_t{r.msgid} + 1));
  }
}

TEST_F(RawPeerTest, MalformedMessagesAreAnsweredOrDroppedAndServingGoesOn) {
  zmq::socket_t dealer = socket(zmq::socket_type::dealer);
  // A request with a readable msgid but a bad method gets a ProtocolError reply.
  dealer.send(zmq::buffer(std::string("\x94\x00\x09\x2a\x90", 5)));  // [0, 9, 42, []]
  ResponseMessage r = receiveResponse(dealer);
  EXPECT_EQ(r.msgid, 9u);
  EXPECT_EQ(r.error.code(), StatusCode::kProtocolError);
  // Garbage, an over-size length, deep nesting, too many frames: dropped, no reply.
  dealer.send(zmq::buffer(std::string("\xdd\xff\xff\xff\xff", 5)));
  dealer.send(zmq::buffer(std::string(100000, '\x91')));
  dealer.send(zmq::str_buffer("a"), zmq::send_flags::sndmore);
  dealer.send(zmq::str_buffer("b"), zmq::send_flags::sndmore);
  dealer.send(zmq::str_buffer("c"));
  dealer.send(zmq::buffer(encodeMessage(RequestMessage{10, "echo", {"still"}, {}})));
  r = receiveResponse(dealer);
  EXPECT_EQ(r.msgid, 10u);
  EXPECT_EQ(r.result, Value("still"));
  server_->stop();
  ASSERT_TRUE(server_->wait(deadlineAfter(kWait)).isOk());
  EXPECT_GE(server_->stats().dropped + transport_->stats().malformedDropped, 3u);
}

// ----- Link events ------------------------------------------------------------------------------

// Records the link events of one channel (they come on its I/O thread). Must outlive the channel.
class LinkLog {
 public:
  LinkCallback callback() {
    return [this](LinkEvent event, std::string_view detail) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        lines_ += std::string(name(event)) + ": " + std::string(detail) + "\n";
      }
      of(event).add();
    };
  }
  // The events of one kind so far: count() and waitFor(n, bound).
  testing::Events& of(LinkEvent event) { return kinds_[static_cast<int>(event)]; }
  // Every event as "kind: detail" lines, for failure messages and substring checks.
  std::string dump() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_;
  }

 private:
  static std::string_view name(LinkEvent event) {
    switch (event) {
      case LinkEvent::kUp:
        return "up";
      case LinkEvent::kDown:
        return "down";
      case LinkEvent::kRefused:
        return "refused";
    }
    return "?";
  }
  testing::Events kinds_[3];  // indexed by LinkEvent
  std::mutex mutex_;
  std::string lines_;  // guarded by mutex_
};

// A listener and a channel on separate ZmqTransports of one context, over tcp loopback.
class ZmqLinkEventTest : public ::testing::Test {
 protected:
  // Starts a listener on a fresh loopback port; returns its endpoint.
  std::string listen() {
    server_ = std::make_unique<ZmqTransport>(context_, "tcp://127.0.0.1:*");
    Result<std::unique_ptr<Listener>> listener = server_->listen(address("s"));
    EXPECT_TRUE(listener.isOk()) << listener.status();
    listener_ = std::move(listener).value();
    return server_->boundEndpoint();
  }
  // Topic "t", server `server`.
  static Address address(std::string server) {
    Address a;
    a.topic = "t";
    a.server = std::move(server);
    return a;
  }
  // A channel to `url` whose link events go to links_.
  std::unique_ptr<ClientChannel> channel(const std::string& url, ReplyCallback onReply = {}) {
    client_ = std::make_unique<ZmqTransport>(context_, url);
    Result<std::unique_ptr<ClientChannel>> channel =
        client_->openChannel(std::move(onReply), links_.callback());
    EXPECT_TRUE(channel.isOk()) << channel.status();
    return std::move(channel).value();
  }

  // A channel to `url` whose replies are counted in received_.
  std::unique_ptr<ClientChannel> countingChannel(const std::string& url) {
    return channel(url, testing::eachReply([this](std::string) { received_.add(); }));
  }

  ZmqContext context_;
  std::unique_ptr<ZmqTransport> server_;
  std::unique_ptr<ZmqTransport> client_;
  std::unique_ptr<Listener> listener_;
  LinkLog links_;
  testing::Events received_;  // replies of a countingChannel()
};

TEST_F(ZmqLinkEventTest, ChannelToABoundListenerReportsUp) {
  const std::string url = listen();
  std::promise<std::string> replied;
  std::future<std::string> reply = replied.get_future();
  auto keepReply = [&replied](std::string bytes) { replied.set_value(std::move(bytes)); };
  std::unique_ptr<ClientChannel> channel = this->channel(url, testing::eachReply(keepReply));
  ASSERT_TRUE(links_.of(LinkEvent::kUp).waitFor(1, kWait)) << links_.dump();
  EXPECT_NE(links_.dump().find("up: connected to " + url), std::string::npos) << links_.dump();
  EXPECT_EQ(links_.of(LinkEvent::kRefused).count(), 0) << links_.dump();
  EXPECT_EQ(links_.of(LinkEvent::kDown).count(), 0) << links_.dump();
  // Requests and replies flow as before beside the monitor.
  ASSERT_OK(channel->send(address(""), "ping", deadlineAfter(kWait)));
  std::vector<IncomingPtr> in;
  ASSERT_OK(listener_->poll(deadlineAfter(kWait), 1, in));
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0]->body(), "ping");
  ASSERT_OK(in[0]->reply("pong"));
  ASSERT_TRUE(testing::readyWithin(reply, kWait));
  EXPECT_EQ(reply.get(), "pong");
}

TEST_F(ZmqLinkEventTest, ClosingTheListenerReportsDown) {
  const std::string url = listen();
  std::unique_ptr<ClientChannel> channel = this->channel(url);
  ASSERT_TRUE(links_.of(LinkEvent::kUp).waitFor(1, kWait)) << links_.dump();
  listener_.reset();  // closes the ROUTER and with it the connection
  ASSERT_TRUE(links_.of(LinkEvent::kDown).waitFor(1, kWait)) << links_.dump();
  EXPECT_NE(links_.dump().find("down: lost the link to " + url), std::string::npos)
      << links_.dump();
  EXPECT_EQ(links_.of(LinkEvent::kUp).count(), 1) << links_.dump();
}

TEST_F(ZmqLinkEventTest, NobodyListeningReportsRefusedAtEveryAttempt) {
  std::string url;
  {
    zmq::context_t context;
    zmq::socket_t router(context, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:*");
    url = router.get(zmq::sockopt::last_endpoint);
  }  // terminating the context waits until the port is closed
  std::unique_ptr<ClientChannel> channel = this->channel(url);
  ASSERT_TRUE(links_.of(LinkEvent::kRefused).waitFor(2, kWait)) << links_.dump();
  EXPECT_NE(links_.dump().find("refused: cannot connect to " + url), std::string::npos)
      << links_.dump();
  EXPECT_EQ(links_.of(LinkEvent::kUp).count(), 0) << links_.dump();
  EXPECT_EQ(links_.of(LinkEvent::kDown).count(), 0) << links_.dump();
}

// The first send of a burst goes out on the calling thread, the rest are queued for the I/O
// thread, woken once: every message arrives, in the order sent.
TEST_F(ZmqLinkEventTest, BurstsOfSendsArriveWholeAndInOrder) {
  constexpr int kBursts = 50;
  constexpr int kPerBurst = 20;
  const std::string url = listen();
  std::unique_ptr<ClientChannel> channel = this->channel(url);
  int sent = 0;
  int next = 0;  // the number the next message taken must carry
  for (int burst = 0; burst < kBursts; ++burst) {
    for (int i = 0; i < kPerBurst; ++i) {
      ASSERT_OK(channel->send(address(""), std::to_string(sent++), deadlineAfter(kWait)));
    }
    std::vector<IncomingPtr> in;
    const Deadline giveUp = deadlineAfter(kWait);
    while (in.size() < kPerBurst && Clock::now() < giveUp) {
      ASSERT_OK(listener_->poll(giveUp, kPerBurst - in.size(), in));
    }
    ASSERT_EQ(in.size(), size_t{kPerBurst}) << "burst " << burst;
    for (const IncomingPtr& m : in) ASSERT_EQ(m->body(), std::to_string(next++));
  }
}

// Replies from several threads at once, while the listener polls: a reply that finds the socket
// taken is left for its holder, which must send it before letting go. None may be stranded:
// each round waits for all its replies before the next (a stranded reply would otherwise go
// out with the next round's). Without the holder's second look after unlocking, 4 runs of this
// test in 10 failed.
TEST_F(ZmqLinkEventTest, RepliesFromManyThreadsWhileTheListenerPollsAllArrive) {
  constexpr int kRounds = 20;
  constexpr int kRequests = 500;  // per round
  constexpr int kRepliers = 4;
  std::unique_ptr<ClientChannel> channel = countingChannel(listen());
  for (int round = 1; round <= kRounds; ++round) {
    for (int i = 0; i < kRequests; ++i) {
      ASSERT_OK(channel->send(address(""), "request", deadlineAfter(kWait)));
    }
    std::vector<IncomingPtr> in;
    const Deadline giveUp = deadlineAfter(kWait);
    while (in.size() < kRequests && Clock::now() < giveUp) {
      ASSERT_OK(listener_->poll(giveUp, kRequests - in.size(), in));
    }
    ASSERT_EQ(in.size(), size_t{kRequests});
    std::latch start(kRepliers + 1);
    std::atomic<bool> replying{true};
    std::vector<std::thread> repliers;
    for (int t = 0; t < kRepliers; ++t) {
      repliers.emplace_back([&, t] {
        start.arrive_and_wait();
        for (size_t i = t; i < in.size(); i += kRepliers) EXPECT_OK(in[i]->reply("reply"));
      });
    }
    std::thread poller([&] {  // takes the socket again and again while the replies go out
      start.arrive_and_wait();
      std::vector<IncomingPtr> none;
      while (replying.load()) EXPECT_OK(listener_->poll(deadlineAfter(1ms), 1, none));
      EXPECT_TRUE(none.empty());
    });
    for (std::thread& t : repliers) t.join();
    replying.store(false);
    poller.join();
    ASSERT_TRUE(received_.waitFor(round * kRequests, kWait))
        << "round " << round << ": " << received_.count() << " of " << round * kRequests;
  }
  EXPECT_EQ(server_->stats().repliesSent, uint64_t{kRounds * kRequests});
  EXPECT_EQ(server_->stats().repliesDropped, 0u);
}

// The state letter of thread `tid` of this process ('S': asleep, here in poll()), from /proc.
char threadState(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const size_t afterName = line.rfind(')');
  return afterName == std::string::npos || afterName + 2 >= line.size() ? '?'
                                                                         : line[afterName + 2];
}

// Takes `n` requests the channel sent, polling on this thread.
std::vector<IncomingPtr> takeRequests(Listener& listener, ClientChannel& channel, size_t n) {
  Address to;
  to.topic = "t";
  for (size_t i = 0; i < n; ++i) {
    EXPECT_OK(channel.send(to, "request " + std::to_string(i), deadlineAfter(kWait)));
  }
  std::vector<IncomingPtr> in;
  const Deadline giveUp = deadlineAfter(kWait);
  while (in.size() < n && Clock::now() < giveUp) {
    EXPECT_OK(listener.poll(giveUp, n - in.size(), in));
  }
  EXPECT_EQ(in.size(), n);
  return in;
}

// While the listener's poller sleeps, a reply with other messages still unanswered is left for
// it: woken, it sends the reply and sleeps on; the last unanswered message's reply goes out on
// the replying thread. Both arrive while the poller stays in its one poll().
TEST_F(ZmqLinkEventTest, RepliesLeftForTheSleepingPollerGoOutAtOnce) {
  std::unique_ptr<ClientChannel> channel = countingChannel(listen());
  std::vector<IncomingPtr> in = takeRequests(*listener_, *channel, 2);
  ASSERT_EQ(in.size(), 2u);
  std::promise<pid_t> pollerTid;
  std::promise<size_t> polled;  // how many messages the one poll() took
  std::future<size_t> pollDone = polled.get_future();
  std::jthread poller([&] {  // joined on the way out, also after a failed assertion
    pollerTid.set_value(static_cast<pid_t>(::gettid()));
    std::vector<IncomingPtr> none;
    EXPECT_OK(listener_->poll(deadlineAfter(3 * kWait), 1, none));  // past every wait below
    polled.set_value(none.size());
  });
  const pid_t tid = pollerTid.get_future().get();
  const Deadline giveUp = deadlineAfter(kWait);
  while (threadState(tid) != 'S' && Clock::now() < giveUp) std::this_thread::yield();
  ASSERT_EQ(threadState(tid), 'S') << "the poller never slept";
  ASSERT_OK(in[0]->reply("first"));  // in[1] is unanswered: left for the poller
  EXPECT_TRUE(received_.waitFor(1, kWait)) << "the reply left for the poller was stranded";
  ASSERT_OK(in[1]->reply("second"));  // the last: sent here
  EXPECT_TRUE(received_.waitFor(2, kWait));
  EXPECT_FALSE(testing::readyWithin(pollDone, 0s)) << "the poller returned before its deadline";
  listener_->interrupt();
  EXPECT_TRUE(testing::readyWithin(pollDone, kWait));
  EXPECT_EQ(pollDone.get(), 0u);
  EXPECT_EQ(server_->stats().repliesSent, 2u);
}

// A poll() that returned (at its deadline, or interrupted) leaves no poller to leave replies
// for: a reply with another message unanswered goes out on the replying thread.
TEST_F(ZmqLinkEventTest, RepliesAfterThePollerReturnedGoOutOnTheReplyingThread) {
  std::unique_ptr<ClientChannel> channel = countingChannel(listen());
  std::vector<IncomingPtr> in = takeRequests(*listener_, *channel, 3);
  ASSERT_EQ(in.size(), 3u);
  std::vector<IncomingPtr> none;
  ASSERT_OK(listener_->poll(deadlineAfter(1ms), 1, none));  // slept until its deadline
  ASSERT_TRUE(none.empty());
  ASSERT_OK(in[0]->reply("after a deadline"));
  EXPECT_TRUE(received_.waitFor(1, kWait)) << "a reply was left for a poller that returned";
  std::thread poller([&] {
    std::vector<IncomingPtr> taken;
    EXPECT_OK(listener_->poll(deadlineAfter(kWait), 1, taken));
    EXPECT_TRUE(taken.empty());
  });
  listener_->interrupt();
  poller.join();
  ASSERT_OK(in[1]->reply("after an interrupt"));
  EXPECT_TRUE(received_.waitFor(2, kWait)) << "a reply was left for a poller that returned";
  EXPECT_EQ(server_->stats().repliesSent, 2u);
}

// A caller that receives on its channel (receiveUntil): a channel to a listener whose requests
// the test answers itself. A reply "block" stops the thread that hands it over until unblock_
// opens: a test holds the I/O thread that way and knows who else receives (while it is held,
// the channel sends nothing: requests go out first).
class ZmqCallerReceivesTest : public ZmqLinkEventTest {
 protected:
  // A channel whose replies are recorded in replies_ with the thread that handed each over;
  // then onReply_, which a test sets before the replies it handles, runs.
  std::unique_ptr<ClientChannel> recordingChannel(const std::string& url) {
    return channel(url, testing::eachReply([this](std::string bytes) {
      if (bytes == "block") {
        ioBlocked_.open();
        EXPECT_TRUE(unblock_.wait(kWait));
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        replies_.emplace_back(bytes, std::this_thread::get_id());
      }
      received_.add();
      if (onReply_) onReply_(bytes);
    }));
  }
  // Sends one request and `others`, and holds the I/O thread in the callback of the answer to
  // the first; returns the others' requests, for the test to answer.
  std::vector<IncomingPtr> holdTheIoThreadAfterSending(ClientChannel& channel, size_t others) {
    std::vector<IncomingPtr> in = takeRequests(*listener_, channel, others + 1);
    if (in.size() != others + 1) return {};
    EXPECT_OK(in[0]->reply("block"));
    EXPECT_TRUE(ioBlocked_.wait(kWait));
    in.erase(in.begin());
    return in;
  }
  std::thread::id handedOverBy(size_t i) {
    std::lock_guard<std::mutex> lock(mutex_);
    return replies_.at(i).second;
  }

  testing::Gate ioBlocked_, unblock_;
  std::function<void(const std::string&)> onReply_;
  std::mutex mutex_;
  std::vector<std::pair<std::string, std::thread::id>> replies_;  // guarded by mutex_
};

// While the I/O thread is held, the reply to a caller that receives reaches it on its own thread;
// once it stops, the I/O thread (free again) receives the next reply: the dealer is watched
// again (else that reply would never be received).
TEST_F(ZmqCallerReceivesTest, TheCallerHandsItsReplyOverOnItsThreadThenTheIoThreadReceivesAgain) {
  std::unique_ptr<ClientChannel> channel = recordingChannel(listen());
  std::vector<IncomingPtr> in = holdTheIoThreadAfterSending(*channel, 1);
  ASSERT_EQ(in.size(), 1u);
  ReceiveWaker waker;
  waker.rearm();
  onReply_ = [&](const std::string& reply) {
    if (reply == "for the caller") waker.wake();
  };
  ASSERT_OK(in[0]->reply("for the caller"));
  ASSERT_TRUE(channel->receiveUntil(waker, deadlineAfter(kWait)));
  EXPECT_TRUE(waker.woken()) << "the deadline ended the receive, not the reply";
  ASSERT_EQ(received_.count(), 1);
  EXPECT_EQ(handedOverBy(0), std::this_thread::get_id());

  unblock_.open();
  in = takeRequests(*listener_, *channel, 1);
  ASSERT_EQ(in.size(), 1u);
  ASSERT_OK(in[0]->reply("for the I/O thread"));
  ASSERT_TRUE(received_.waitFor(2, kWait)) << "nobody received after the caller stopped";
  EXPECT_NE(handedOverBy(1), std::this_thread::get_id());
}

// A callback that runs on the receiving caller's thread may wait for another reply: the I/O
// thread receives it meanwhile, since the caller gives the dealer back while it hands replies
// over (else the nested reply would never be received).
TEST_F(ZmqCallerReceivesTest, ACallbackOnTheReceivingThreadThatWaitsForAnotherReplyGetsIt) {
  std::unique_ptr<ClientChannel> channel = recordingChannel(listen());
  std::vector<IncomingPtr> in = holdTheIoThreadAfterSending(*channel, 1);
  ASSERT_EQ(in.size(), 1u);
  ReceiveWaker waker;
  waker.rearm();
  bool nestedArrived = false;
  onReply_ = [&](const std::string& reply) {
    if (reply != "outer answer") return;
    unblock_.open();
    std::vector<IncomingPtr> nested = takeRequests(*listener_, *channel, 1);
    ASSERT_EQ(nested.size(), 1u);
    ASSERT_OK(nested[0]->reply("nested answer"));
    nestedArrived = received_.waitFor(2, kWait);
    waker.wake();
  };
  ASSERT_OK(in[0]->reply("outer answer"));
  ASSERT_TRUE(channel->receiveUntil(waker, deadlineAfter(kWait)));
  EXPECT_TRUE(waker.woken());
  EXPECT_TRUE(nestedArrived) << "the nested reply was never received";
  ASSERT_EQ(received_.count(), 2);
  EXPECT_EQ(handedOverBy(0), std::this_thread::get_id());
  EXPECT_NE(handedOverBy(1), std::this_thread::get_id());
}

// A wake from another thread ends a receive that got nothing; so does its deadline; a woken
// waker ends the next receive at once, until rearmed.
TEST_F(ZmqCallerReceivesTest, AWakeFromAnotherThreadOrTheDeadlineEndsAReceive) {
  std::unique_ptr<ClientChannel> channel = recordingChannel(listen());
  ReceiveWaker waker;
  waker.rearm();
  std::thread other([&] { waker.wake(); });
  const Deadline started = Clock::now();
  ASSERT_TRUE(channel->receiveUntil(waker, deadlineAfter(kWait)));
  EXPECT_LT(Clock::now() - started, kWait) << "woken, not timed out";
  other.join();
  EXPECT_TRUE(waker.woken());
  ASSERT_TRUE(channel->receiveUntil(waker, deadlineAfter(kWait)));  // still woken
  waker.rearm();
  EXPECT_FALSE(waker.woken());
  ASSERT_TRUE(channel->receiveUntil(waker, deadlineAfter(20ms)));
  EXPECT_FALSE(waker.woken());
  EXPECT_EQ(received_.count(), 0);
}

// Transports without the mode lend no thread: receiveUntil() is false at once.
TEST(ReceiveUntilTest, AnInMemoryChannelLendsNoThread) {
  InMemoryTransport transport;
  std::unique_ptr<ClientChannel> channel =
      transport.openChannel([](std::span<const std::string_view>) {}).value();
  ReceiveWaker waker;
  waker.rearm();
  EXPECT_FALSE(channel->receiveUntil(waker, deadlineAfter(kWait)));
}

// A listener and a channel on one ZmqTransport over inproc, with a high-water mark of 2: a peer
// that does not poll holds the channel's sends back after a few messages.
class ZmqChannelFlowTest : public ::testing::Test {
 protected:
  // Opens the listener and the channel; `maxQueuedBytes` bounds what the channel queues.
  void open(size_t maxQueuedBytes = ZmqTransport::Options{}.maxQueuedBytes,
            ReplyCallback onReply = nullptr) {
    ZmqTransport::Options options;
    options.sendHighWaterMark = 2;
    options.maxQueuedBytes = maxQueuedBytes;
    transport_ = std::make_unique<ZmqTransport>(context_, "inproc://channel-flow", options);
    Result<std::unique_ptr<Listener>> listener = transport_->listen(address_);
    ASSERT_OK(listener.status());
    listener_ = std::move(listener).value();
    Result<std::unique_ptr<ClientChannel>> channel =
        transport_->openChannel(std::move(onReply), nullptr);
    ASSERT_OK(channel.status());
    channel_ = std::move(channel).value();
  }
  Status send(std::string bytes, Deadline deadline) {
    return channel_->send(address_, std::move(bytes), deadline);
  }
  // The next message the listener takes, one per poll (so the peer makes room again and
  // again); null when none comes before `giveUp`.
  IncomingPtr nextMessage(Deadline giveUp) {
    std::vector<IncomingPtr> in;
    while (in.empty() && Clock::now() < giveUp) {
      if (!listener_->poll(giveUp, 1, in)) return nullptr;
    }
    return in.empty() ? nullptr : std::move(in[0]);
  }
  // Its body; nullopt when none comes before `giveUp`.
  std::optional<std::string> next(Deadline giveUp) {
    IncomingPtr message = nextMessage(giveUp);
    if (!message) return std::nullopt;
    return std::string(message->body());
  }

  ZmqContext context_;
  const Address address_{.topic = "t", .server = "s"};
  std::unique_ptr<ZmqTransport> transport_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<ClientChannel> channel_;
};

// A channel whose peer stops reading queues what the socket cannot take; once the peer reads
// again, every queued message goes out long before its deadline. When the peer makes room,
// libzmq tells the channel's socket with a command, which wakes the I/O thread; but a send takes
// commands at most once a millisecond, so its sends fail again and the receive after them takes
// the command: the thread must then look again before it sleeps, or the queue waits for its
// first deadline. Without that look, every one of 10 runs stranded the fifth message.
TEST_F(ZmqChannelFlowTest, QueuedSendsGoOutAsSoonAsThePeerMakesRoom) {
  constexpr int kMessages = 3000;
  constexpr auto kQueuedFor = 10min;  // far past kWait: a stranded queue fails the test
  ASSERT_NO_FATAL_FAILURE(open());
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_OK(send(std::to_string(i), deadlineAfter(kQueuedFor)));
  }
  const Deadline giveUp = deadlineAfter(kWait);
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_EQ(next(giveUp), std::to_string(i)) << "of " << kMessages;
  }
  EXPECT_EQ(transport_->stats().sendsExpired, 0u);
}

// A backlog that begins while a caller receives (so the I/O thread's epoll set does not report
// the dealer) still goes out as the peer makes room: the caller's next receive, which may take
// the dealer's signal that the peer made some, ends its receiving and wakes the I/O thread to
// send them. Without that, they waited for their deadline behind the receiving caller (even with
// the I/O thread watching the dealer beside it, as 90429fd had it).
TEST_F(ZmqChannelFlowTest, ABacklogThatBeginsWhileACallerReceivesGoesOutAsThePeerMakesRoom) {
  constexpr int kMessages = 3000;
  constexpr auto kQueuedFor = 10min;  // far past kWait: a stranded queue fails the test
  testing::Gate ioHeld, unblock, callerReceived;
  testing::Events done;
  ReceiveWaker waker;
  waker.rearm();
  std::thread::id receivedOn;  // of the reply to the caller; read after callerReceived opens
  ASSERT_NO_FATAL_FAILURE(
      open(ZmqTransport::Options{}.maxQueuedBytes, testing::eachReply([&](std::string reply) {
             if (reply == "hold the I/O thread") {
               ioHeld.open();
               EXPECT_TRUE(unblock.wait(kWait));
             } else if (reply == "to the caller") {
               receivedOn = std::this_thread::get_id();
               callerReceived.open();
             } else if (reply == "done") {
               done.add();
               waker.wake();
             }
           })));
  ASSERT_OK(send("first", deadlineAfter(kWait)));
  ASSERT_OK(send("second", deadlineAfter(kWait)));
  const Deadline giveUp = deadlineAfter(kWait);
  IncomingPtr first = nextMessage(giveUp);
  IncomingPtr second = nextMessage(giveUp);
  ASSERT_TRUE(first && second);
  ASSERT_OK(first->reply("hold the I/O thread"));
  ASSERT_TRUE(ioHeld.wait(kWait));

  // With the I/O thread held, only the caller can receive the second reply. It takes the dealer
  // again right after handing it over, microseconds before this thread has queued the backlog
  // and let the I/O thread go. (Were it later, it would see the backlog and stop receiving: the
  // test would then pass without the fix.)
  std::promise<bool> received;
  std::thread caller(
      [&] { received.set_value(channel_->receiveUntil(waker, deadlineAfter(kWait))); });
  const std::thread::id callerId = caller.get_id();
  EXPECT_OK(second->reply("to the caller"));
  const bool callerGotIt = callerReceived.wait(kWait);
  for (int i = 0; callerGotIt && i < kMessages; ++i) {
    EXPECT_OK(send(std::to_string(i), deadlineAfter(kQueuedFor)));
  }
  unblock.open();  // its next turn fills the socket to the high-water mark: the backlog begins
  IncomingPtr last;
  for (int i = 0; callerGotIt && i < kMessages; ++i) {
    last = nextMessage(giveUp);
    if (!last || last->body() != std::to_string(i)) {
      ADD_FAILURE() << "message " << i << " of " << kMessages << " did not arrive in order";
      last = nullptr;
      break;
    }
  }
  if (last) {
    EXPECT_OK(last->reply("done"));
  }
  caller.join();
  ASSERT_TRUE(callerGotIt) << "nobody received the reply the held I/O thread could not";
  EXPECT_EQ(receivedOn, callerId);
  EXPECT_TRUE(received.get_future().get());
  EXPECT_TRUE(done.waitFor(1, kWait));
  EXPECT_EQ(transport_->stats().sendsExpired, 0u);
}

// What waits for room past the high-water mark is bounded in bytes: a send beyond
// maxQueuedBytes is refused kOverloaded and counted, what was taken still arrives whole and in
// order, and once the peer has read it all the channel takes sends again.
TEST_F(ZmqChannelFlowTest, AFullQueueRefusesSendsUntilThePeerReads) {
  constexpr size_t kMessageBytes = 100;
  ASSERT_NO_FATAL_FAILURE(open(10 * kMessageBytes));
  const auto message = [&](int i) {
    std::string tail = std::to_string(i);
    return std::string(kMessageBytes - tail.size(), 'm') + tail;
  };
  int accepted = 0;
  Status refused;
  for (int i = 0; i < 1000 && refused.isOk(); ++i) {
    refused = send(message(i), deadlineAfter(kWait));
    if (refused.isOk()) ++accepted;
  }
  ASSERT_CODE(refused, StatusCode::kOverloaded);
  EXPECT_NE(refused.message().find("maxQueuedBytes"), std::string::npos) << refused;
  // The queue's 10 messages, and what ZeroMQ's pipes took before it (4 at most here).
  EXPECT_GE(accepted, 10);
  EXPECT_LE(accepted, 20);
  EXPECT_EQ(transport_->stats().sendsRefused, 1u);
  const Deadline giveUp = deadlineAfter(kWait);
  for (int i = 0; i < accepted; ++i) ASSERT_EQ(next(giveUp), message(i)) << "of " << accepted;
  ASSERT_OK(send("after", deadlineAfter(kWait)));
  EXPECT_EQ(next(giveUp), "after");
  EXPECT_EQ(transport_->stats().sendsExpired, 0u);
}

}  // namespace
}  // namespace switchboard
