// MessageHandlingServer and RpcClient against GoogleMock transports (tests/support/
// mock_transport.h): the exact Transport calls each makes (listen, interrupt, close; reply and
// acknowledge; send) and the exact bytes where they matter. Every MockListener::poll blocks until
// a message, interrupt() or its deadline (Inbox below), as a real listener does.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "executors/thread_pool_executor.h"
#include "messaging/detail/codec.h"
#include "messaging/detail/wire.h"
#include "messaging/dispatcher.h"
#include "messaging/endpoint.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "messaging/target.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/mock_transport.h"
#include "tests/support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using ::testing::_;
using ::testing::AnyNumber;
using ::testing::AtLeast;
using ::testing::Expectation;
using ::testing::NiceMock;
using ::testing::Return;
using ::testing::StrictMock;
using detail::CancelMessage;
using detail::DecodedMessage;
using detail::decodeMessage;
using detail::encodeMessage;
using detail::RequestMessage;
using detail::ResponseMessage;
using testing::MockClientChannel;
using testing::MockIncomingMessage;
using testing::MockListener;
using testing::MockTransport;

using testing::Gate;  // tests/support/test_util.h
using testing::LogCapture;
using testing::readyWithin;

constexpr Duration kWait = 10s;  // bound on every wait that is expected to succeed
// readyWithin() waits as long by default.
static_assert(testing::kDefaultWait == kWait);

// What a MockListener serves: a queue the test fills. poll() blocks until a message is queued,
// interrupt() was called (sticky until a poll returns, as Listener requires) or the deadline;
// then it hands out up to maxBatch messages. Thread-safe; counts interrupts and polls.
class Inbox {
 public:
  void push(IncomingPtr message) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(message));
    cv_.notify_all();
  }
  Status poll(Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto ready = [&] { return !queue_.empty() || interrupted_; };
    if (deadline == kNoDeadline) {
      cv_.wait(lock, ready);
    } else {
      cv_.wait_until(lock, deadline, ready);
    }
    interrupted_ = false;
    for (size_t n = 0; n < maxBatch && !queue_.empty(); ++n) {
      out.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    ++polls_;
    return Status::ok();
  }
  void interrupt() {
    std::lock_guard<std::mutex> lock(mutex_);
    interrupted_ = true;
    ++interrupts_;
    cv_.notify_all();
  }
  int interrupts() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return interrupts_;
  }
  int polls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return polls_;
  }

  // Makes `listener`'s poll() and interrupt() default to this inbox's (ON_CALL: an EXPECT_CALL
  // without an action uses them).
  void serve(MockListener& listener) {
    ON_CALL(listener, poll(_, _, _))
        .WillByDefault([this](Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) {
          return poll(deadline, maxBatch, out);
        });
    ON_CALL(listener, interrupt()).WillByDefault([this] { interrupt(); });
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<IncomingPtr> queue_;  // guarded by mutex_
  bool interrupted_ = false;       // guarded by mutex_
  int interrupts_ = 0;             // guarded by mutex_
  int polls_ = 0;                  // guarded by mutex_
};

// What a mocked listen() returns: ownership of `listener`, as a Result.
Result<std::unique_ptr<Listener>> handOver(std::unique_ptr<Listener>& listener) {
  return std::move(listener);
}

// Makes the next listen() on `transport` (on an address that matches `address`) hand over a new
// NiceMock listener whose poll() and interrupt() are `inbox`'s. Returns the listener, for more
// expectations before start(); once listened it is the server's.
NiceMock<MockListener>& expectListen(MockTransport& transport, Inbox& inbox,
                                     const ::testing::Matcher<const Address&>& address = _) {
  auto owned = std::make_unique<NiceMock<MockListener>>();
  NiceMock<MockListener>& listener = *owned;
  inbox.serve(listener);
  auto handed = std::make_shared<std::unique_ptr<Listener>>(std::move(owned));
  EXPECT_CALL(transport, listen(address)).WillOnce([handed](const Address&) {
    return handOver(*handed);
  });
  return listener;
}

Endpoint calculator() {
  Endpoint ep;
  ep.method("add", [](int64_t a, int64_t b) { return a + b; }, {"a", "b"});
  return ep;
}

Target serverTarget() {
  Target t;
  t.exchange = "ex";
  t.topic = "tp";
  t.server = "srv";
  return t;
}

// An incoming message from `peer` whose body is `body`; body() and peer() default to them.
std::unique_ptr<NiceMock<MockIncomingMessage>> incoming(std::string body,
                                                        std::string peer = "mock") {
  return std::make_unique<NiceMock<MockIncomingMessage>>(std::move(body), std::move(peer));
}

// Expects exactly one reply on `message` and returns a future of its bytes.
std::future<std::string> expectOneReply(MockIncomingMessage& message) {
  auto replied = std::make_shared<std::promise<std::string>>();
  EXPECT_CALL(message, reply(_)).WillOnce([replied](std::string bytes) {
    replied->set_value(std::move(bytes));
    return Status::ok();
  });
  return replied->get_future();
}

// Expects at least one acknowledge() on `message` (it is idempotent) and returns a future that
// becomes ready at the first.
std::future<void> expectAcknowledged(MockIncomingMessage& message) {
  auto acked = std::make_shared<std::promise<void>>();
  auto once = std::make_shared<std::once_flag>();
  EXPECT_CALL(message, acknowledge()).Times(AtLeast(1)).WillRepeatedly([acked, once] {
    std::call_once(*once, [&] { acked->set_value(); });
  });
  return acked->get_future();
}

// Decodes `bytes` as a message of kind M (`what` names it); fails the test and returns an empty
// M unless they are one.
template <typename M>
M decodeAs(const std::string& bytes, const char* what) {
  DecodedMessage decoded = decodeMessage(bytes);
  EXPECT_TRUE(decoded.isOk()) << decoded.status();
  if (!decoded || !std::holds_alternative<M>(decoded.message())) {
    ADD_FAILURE() << "not " << what;
    return M{};
  }
  return std::get<M>(decoded.message());
}

// A reply the server sent.
ResponseMessage decodeResponse(const std::string& bytes) {
  return decodeAs<ResponseMessage>(bytes, "a response");
}
// What the client sent.
RequestMessage decodeRequest(const std::string& bytes) {
  return decodeAs<RequestMessage>(bytes, "a request");
}

// ----- listener lifecycle -----------------------------------------------------------------------

// start() listens once on target.address(); a second start() while running does not; stop()
// interrupts the listener (at once) but does not close it; wait() closes it exactly once; a
// start() after wait() listens again on a fresh listener.
TEST(ServerMockTransportTest, StartListensOnceStopInterruptsWaitClosesOnceRestartListensAgain) {
  StrictMock<MockTransport> transport;
  Inbox inbox1, inbox2;
  std::atomic<int> closes1{0}, closes2{0};
  auto listener1 = std::make_unique<StrictMock<MockListener>>();
  auto listener2 = std::make_unique<StrictMock<MockListener>>();
  for (auto [listener, inbox, closes] : {std::tuple{listener1.get(), &inbox1, &closes1},
                                         std::tuple{listener2.get(), &inbox2, &closes2}}) {
    inbox->serve(*listener);
    EXPECT_CALL(*listener, poll(_, _, _)).Times(AnyNumber());
    Expectation interrupted = EXPECT_CALL(*listener, interrupt()).Times(AtLeast(1));
    EXPECT_CALL(*listener, close()).After(interrupted).WillOnce([counter = closes] { ++*counter; });
  }
  std::unique_ptr<Listener> first = std::move(listener1), second = std::move(listener2);
  const Address address{"ex", "tp", "srv", false};
  ASSERT_EQ(serverTarget().address(), address);
  EXPECT_CALL(transport, listen(address))
      .WillOnce([&](const Address&) { return handOver(first); })
      .WillOnce([&](const Address&) { return handOver(second); });

  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({calculator()}),
                               testing::ThreadPoolKind::make());
  ASSERT_OK(server.start());
  ASSERT_OK(server.start());  // running: a no-op, no second listen()
  EXPECT_EQ(inbox1.interrupts(), 0);
  server.stop();
  EXPECT_GE(inbox1.interrupts(), 1) << "stop() must interrupt the listener's poll()";
  EXPECT_EQ(closes1.load(), 0) << "stop() must not close the listener: wait() does";
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  EXPECT_EQ(closes1.load(), 1);
  ASSERT_OK(server.wait(deadlineAfter(kWait)));  // a completed epoch: nothing closed again
  server.stop();                                 // idle: nothing interrupted or closed
  EXPECT_EQ(closes1.load(), 1);

  ASSERT_OK(server.start());  // the second listen()
  EXPECT_EQ(closes2.load(), 0);
  server.stop();
  EXPECT_GE(inbox2.interrupts(), 1);
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  EXPECT_EQ(closes2.load(), 1);
}

// The blocking executor, stopped before execute() (the seed path): the listener is interrupted
// and closed once by wait(), and never polled; execute() returns ok at once.
TEST(ServerMockTransportTest, BlockingServerStoppedBeforeExecuteInterruptsAndClosesWithoutPolling) {
  StrictMock<MockTransport> transport;
  Inbox inbox;
  std::atomic<int> closes{0};
  auto mock = std::make_unique<StrictMock<MockListener>>();
  inbox.serve(*mock);
  EXPECT_CALL(*mock, poll(_, _, _)).Times(0);
  Expectation interrupted = EXPECT_CALL(*mock, interrupt()).Times(AtLeast(1));
  EXPECT_CALL(*mock, close()).After(interrupted).WillOnce([&] { ++closes; });
  std::unique_ptr<Listener> listener = std::move(mock);
  EXPECT_CALL(transport, listen(serverTarget().address()))
      .WillOnce([&](const Address&) { return handOver(listener); });

  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({calculator()}),
                               testing::BlockingKind::make());
  ASSERT_OK(server.start());
  std::thread([&] { server.stop(); }).join();
  EXPECT_GE(inbox.interrupts(), 1);
  auto executed = std::async(std::launch::async, [&] { return server.execute(); });
  ASSERT_TRUE(readyWithin(executed, 5s)) << "the stop() before execute() was lost";
  EXPECT_OK(executed.get());
  EXPECT_EQ(closes.load(), 0);
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  EXPECT_EQ(closes.load(), 1);
}

// ----- requests ---------------------------------------------------------------------------------

// One request [0, 7, "add", [2, 3]] is answered exactly once with the bytes of
// [1, 7, nil, 5] and acknowledged. Run for the pool and the blocking executor.
template <typename Kind>
void requestIsAnsweredOnceWithTheEncodedResponse() {
  NiceMock<MockTransport> transport;
  Inbox inbox;
  MockListener& listener = expectListen(transport, inbox, serverTarget().address());
  EXPECT_CALL(listener, close()).Times(1);
  std::future<Status> executed;  // declared first: the server's destructor ends execute()
  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({calculator()}),
                               Kind::make());
  ASSERT_OK(server.start());
  if (Kind::kBlocking) executed = std::async(std::launch::async, [&] { return server.execute(); });

  auto message = incoming(encodeMessage(RequestMessage{7, "add", {2, 3}, {}}));
  std::future<std::string> replied = expectOneReply(*message);
  std::future<void> acked = expectAcknowledged(*message);
  inbox.push(std::move(message));
  ASSERT_TRUE(readyWithin(replied));
  EXPECT_EQ(replied.get(), encodeMessage(ResponseMessage{7, Status::ok(), Value(5)}));
  ASSERT_TRUE(readyWithin(acked));

  server.stop();
  if (Kind::kBlocking) {
    ASSERT_TRUE(readyWithin(executed));
    EXPECT_OK(executed.get());
  }
  ASSERT_OK(server.wait(deadlineAfter(kWait)));  // the message (and its mock) is gone by now
  const MessageHandlingServer::Stats stats = server.stats();
  EXPECT_EQ(stats.received, 1u);
  EXPECT_EQ(stats.replied, 1u);
  EXPECT_EQ(stats.failed, 0u);
  EXPECT_EQ(stats.dropped, 0u);
}

TEST(ServerMockTransportTest, RequestIsAnsweredOnceWithTheEncodedResponseThreadPool) {
  requestIsAnsweredOnceWithTheEncodedResponse<testing::ThreadPoolKind>();
}

TEST(ServerMockTransportTest, RequestIsAnsweredOnceWithTheEncodedResponseBlocking) {
  requestIsAnsweredOnceWithTheEncodedResponse<testing::BlockingKind>();
}

// A thread pool that admits one task at a time (maxInFlight 1) frees a call's slot before its
// reply goes, not when the task returns: a client's next call, sent once it has the reply, is
// served, never refused Overloaded. The first reply() holds its task until the second call has
// been answered, so the second call finds the first task still running.
TEST(ServerMockTransportTest, AOneAtATimePoolServesTheCallSentAfterTheReply) {
  NiceMock<MockTransport> transport;
  Inbox inbox;
  expectListen(transport, inbox, serverTarget().address());
  Gate firstMayReturn;  // declared before the server, which outlives the first reply()
  std::promise<void> firstReplying;
  ThreadPoolExecutor::Options pool;
  pool.threads = 2;
  pool.maxInFlight = 1;
  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({calculator()}),
                               std::make_unique<ThreadPoolExecutor>(pool));
  ASSERT_OK(server.start());

  auto first = incoming(encodeMessage(RequestMessage{1, "add", {2, 3}, {}}));
  EXPECT_CALL(*first, reply(_)).WillOnce([&](std::string) {
    firstReplying.set_value();
    firstMayReturn.wait();
    return Status::ok();
  });
  auto second = incoming(encodeMessage(RequestMessage{2, "add", {20, 22}, {}}));
  std::future<std::string> secondReplied = expectOneReply(*second);
  inbox.push(std::move(first));
  auto replying = firstReplying.get_future();
  ASSERT_TRUE(readyWithin(replying));
  inbox.push(std::move(second));
  const bool answered = readyWithin(secondReplied);
  firstMayReturn.open();
  ASSERT_TRUE(answered);
  EXPECT_EQ(secondReplied.get(), encodeMessage(ResponseMessage{2, Status::ok(), Value(42)}));

  server.stop();
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  EXPECT_EQ(server.stats().rejected, 0u);
}

// A request whose msgid is readable but whose shape is bad gets a kProtocolError reply for that
// msgid; bytes that do not decode get no reply but are acknowledged and counted as dropped; the
// server keeps serving.
TEST(ServerMockTransportTest, MalformedMessagesAreAnsweredOrDroppedAndServingGoesOn) {
  NiceMock<MockTransport> transport;
  Inbox inbox;
  expectListen(transport, inbox);
  LogCapture log;
  MessageHandlingServer::Options options;
  options.log = log.sink();
  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({calculator()}),
                               testing::ThreadPoolKind::make(), options);
  ASSERT_OK(server.start());

  // [0, 9, 42, []]: a request with msgid 9 whose method is not a string.
  auto badShape = incoming(detail::encodeValue(Value(Array{0, 9, 42, Array{}})));
  std::future<std::string> badShapeReply = expectOneReply(*badShape);
  std::future<void> badShapeAcked = expectAcknowledged(*badShape);
  inbox.push(std::move(badShape));
  ASSERT_TRUE(readyWithin(badShapeReply));
  const ResponseMessage protocolError = decodeResponse(badShapeReply.get());
  EXPECT_EQ(protocolError.msgid, 9u);
  EXPECT_CODE(protocolError.error, StatusCode::kProtocolError);
  EXPECT_TRUE(protocolError.result.isNil());
  ASSERT_TRUE(readyWithin(badShapeAcked));
  EXPECT_EQ(server.stats().failed, 1u);

  // An array32 header claiming 2^32-1 elements and nothing after it: no msgid can be read.
  const uint64_t droppedBefore = server.stats().dropped;
  auto garbage = incoming(std::string("\xdd\xff\xff\xff\xff", 5));
  EXPECT_CALL(*garbage, reply(_)).Times(0);
  std::future<void> garbageAcked = expectAcknowledged(*garbage);
  inbox.push(std::move(garbage));
  ASSERT_TRUE(readyWithin(garbageAcked));
  EXPECT_EQ(server.stats().dropped, droppedBefore + 1);  // counted before the acknowledge
  EXPECT_EQ(server.stats().drops.at("malformed"), 1u);

  // And a good request after both is answered.
  auto good = incoming(encodeMessage(RequestMessage{8, "add", {20, 22}, {}}));
  std::future<std::string> goodReply = expectOneReply(*good);
  inbox.push(std::move(good));
  ASSERT_TRUE(readyWithin(goodReply));
  EXPECT_EQ(goodReply.get(), encodeMessage(ResponseMessage{8, Status::ok(), Value(42)}));

  server.stop();
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  const MessageHandlingServer::Stats stats = server.stats();
  EXPECT_EQ(stats.received, 3u);
  EXPECT_EQ(stats.replied, 2u);
  EXPECT_EQ(stats.failed, 1u);
  EXPECT_EQ(stats.dropped, 1u);
  EXPECT_EQ(stats.drops, (std::map<std::string, uint64_t>{{"malformed", 1}}));
  EXPECT_THAT(log.dump(), ::testing::HasSubstr("dropped a message"));
  EXPECT_THAT(log.dump(), ::testing::HasSubstr("reason=malformed"));
}

// ----- cancellation -----------------------------------------------------------------------------

// A cancel [4, msgid] from the caller's peer, read by the pool's receiving thread while a worker
// runs the call, sets the handler's ctx.isCancelled(); one from another peer does not.
TEST(ServerMockTransportTest, CancelForACallInFlightSetsIsCancelled) {
  NiceMock<MockTransport> transport;
  Inbox inbox;
  expectListen(transport, inbox);
  std::promise<void> entered;
  Endpoint ep;
  ep.method("slow", [&](CallContext& ctx) {
    entered.set_value();
    const Deadline bound = deadlineAfter(5s);
    while (!ctx.isCancelled() && Clock::now() < bound) std::this_thread::yield();
    return ctx.isCancelled();
  });
  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({ep}),
                               testing::ThreadPoolKind::make());
  ASSERT_OK(server.start());

  auto call = incoming(encodeMessage(RequestMessage{11, "slow", {}, {}}), "peer-a");
  std::future<std::string> replied = expectOneReply(*call);
  inbox.push(std::move(call));
  auto enteredF = entered.get_future();
  ASSERT_TRUE(readyWithin(enteredF));

  auto stranger = incoming(encodeMessage(CancelMessage{11}), "peer-b");  // same msgid, other peer
  EXPECT_CALL(*stranger, reply(_)).Times(0);
  std::future<void> strangerAcked = expectAcknowledged(*stranger);
  inbox.push(std::move(stranger));
  ASSERT_TRUE(readyWithin(strangerAcked));
  EXPECT_EQ(server.stats().cancelled, 0u);
  EXPECT_NE(replied.wait_for(0s), std::future_status::ready) << "cancelled by another peer";

  auto cancel = incoming(encodeMessage(CancelMessage{11}), "peer-a");
  EXPECT_CALL(*cancel, reply(_)).Times(0);
  std::future<void> cancelAcked = expectAcknowledged(*cancel);
  inbox.push(std::move(cancel));
  ASSERT_TRUE(readyWithin(cancelAcked));
  ASSERT_TRUE(readyWithin(replied));
  const ResponseMessage response = decodeResponse(replied.get());
  EXPECT_EQ(response.msgid, 11u);
  ASSERT_TRUE(response.error.isOk()) << response.error;
  EXPECT_EQ(response.result, Value(true)) << "the handler did not see the cancellation";

  server.stop();
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  const MessageHandlingServer::Stats stats = server.stats();
  EXPECT_EQ(stats.cancelled, 1u);
  EXPECT_EQ(stats.received, 3u);  // the call and both cancels
  EXPECT_EQ(stats.replied, 1u);
}

// Many calls in flight at once (each shard of the server's registry grows past its first
// buckets), then a cancel for each: every one is found, and its handler sees it.
TEST(ServerMockTransportTest, CancelsReachEachOfManyCallsInFlight) {
  constexpr uint32_t kCalls = 300;
  NiceMock<MockTransport> transport;
  Inbox inbox;
  expectListen(transport, inbox);
  std::promise<void> cancelsTaken;
  std::shared_future<void> gate = cancelsTaken.get_future().share();
  Endpoint ep;
  ep.method("slow", [gate](CallContext& ctx) {
    (void)gate.wait_for(kWait);
    return ctx.isCancelled();
  });
  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({ep}),
                               testing::ThreadPoolKind::make());
  ASSERT_OK(server.start());

  std::vector<std::future<std::string>> replies;
  for (uint32_t id = 1; id <= kCalls; ++id) {
    auto call = incoming(encodeMessage(RequestMessage{id, "slow", {}, {}}), "peer-a");
    replies.push_back(expectOneReply(*call));
    inbox.push(std::move(call));
  }
  std::vector<std::future<void>> acknowledged;
  for (uint32_t id = 1; id <= kCalls; ++id) {
    auto cancel = incoming(encodeMessage(CancelMessage{id}), "peer-a");
    EXPECT_CALL(*cancel, reply(_)).Times(0);
    acknowledged.push_back(expectAcknowledged(*cancel));
    inbox.push(std::move(cancel));
  }
  for (std::future<void>& ack : acknowledged) ASSERT_TRUE(readyWithin(ack));
  EXPECT_EQ(server.stats().cancelled, kCalls);
  cancelsTaken.set_value();
  for (std::future<std::string>& reply : replies) {
    ASSERT_TRUE(readyWithin(reply));
    const ResponseMessage response = decodeResponse(reply.get());
    ASSERT_TRUE(response.error.isOk()) << response.error;
    EXPECT_EQ(response.result, Value(true)) << "call " << response.msgid;
  }
  server.stop();
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
}

// ----- stop() while the receiving thread is inside poll() ---------------------------------------

// LIBRARY BUG (deterministic, hence DISABLED_; run with --gtest_also_run_disabled_tests):
// messaging/server.h promises "after [stop()] returns no new message is dispatched". Interleaving:
// the receiving thread has entered Listener::poll() but not yet looked at its queue; stop()
// interrupts the listener and returns; a request arrives; the poll() now wakes and returns it
// with the interrupt (InMemoryTransport's listener takes what is queued before it looks at the
// interrupt flag, and any listener can). ReceiveLoop::run (executors/detail/receive_loop.cc,
// "for (auto& task : tasks) handoff(std::move(task));" after source->poll()) hands every polled
// task to the executor without checking stopRequested_, so the handler runs after stop()
// returned. Expected: a task polled after the stop is refused with Task::reject(kShuttingDown)
// (executor.h names that code for "when stopping"), which answers the caller. Same root cause
// as executor_contract_test's DISABLED_NoTaskIsTakenAfterStopReturnedWhileTheLoopPolls, here
// deterministic and at the server's level.
TEST(ServerMockTransportTest, NoRequestIsDispatchedAfterStopReturned) {
  NiceMock<MockTransport> transport;
  Inbox inbox;
  std::promise<void> polling;
  Gate letGo;
  bool first = true;  // receiving thread only
  MockListener& listener = expectListen(transport, inbox);
  ON_CALL(listener, poll(_, _, _))  // overrides the inbox's poll()
      .WillByDefault([&](Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out) {
        if (std::exchange(first, false)) {  // the first poll() is held at its entry
          polling.set_value();
          (void)letGo.wait(kWait);
        }
        return inbox.poll(deadline, maxBatch, out);
      });
  std::atomic<int> dispatched{0};
  Endpoint ep;
  ep.method("add", [&](int64_t a, int64_t b) {
    ++dispatched;
    return a + b;
  });
  MessageHandlingServer server(transport, serverTarget(), RpcDispatcher({ep}),
                               testing::ThreadPoolKind::make());
  ASSERT_OK(server.start());
  auto pollingF = polling.get_future();
  ASSERT_TRUE(readyWithin(pollingF));  // the receiving thread is inside poll()
  server.stop();                       // interrupts the listener and returns

  auto late = incoming(encodeMessage(RequestMessage{5, "add", {1, 2}, {}}));
  std::future<std::string> replied = expectOneReply(*late);  // nothing accepted goes unanswered
  inbox.push(std::move(late));
  letGo.open();
  ASSERT_OK(server.wait(deadlineAfter(kWait)));
  EXPECT_EQ(dispatched.load(), 0) << "a request arriving after stop() returned was dispatched";
  ASSERT_TRUE(readyWithin(replied, 0s));
  const ResponseMessage response = decodeResponse(replied.get());
  EXPECT_EQ(response.msgid, 5u);
  EXPECT_CODE(response.error, StatusCode::kShuttingDown);
}

// ----- RpcClient over a mocked channel ----------------------------------------------------------

// A client on a MockTransport whose channel is a StrictMock; the reply callback is captured.
struct MockedClient {
  MockedClient() {
    auto owned = std::make_unique<StrictMock<MockClientChannel>>();
    channel = owned.get();
    auto handed = std::make_shared<std::unique_ptr<ClientChannel>>(std::move(owned));
    EXPECT_CALL(transport, openChannel(_, _))
        .WillOnce([this, handed](ReplyCallback onReply, LinkCallback) {
          replyCallback = std::move(onReply);
          return Result<std::unique_ptr<ClientChannel>>(std::move(*handed));
        });
  }
  RpcClient create() {
    Target t;
    t.topic = "calc";
    RpcClient::Options options;
    options.timeout = kWait;
    return RpcClient::create(transport, t, options).value();
  }

  StrictMock<MockTransport> transport;
  StrictMock<MockClientChannel>* channel = nullptr;  // owned by the client once created
  // Hands `bytes` to the client's reply callback, as a transport would.
  void deliver(std::string_view bytes) {
    replyCallback(std::span<const std::string_view>(&bytes, 1));
  }

  ReplyCallback replyCallback;  // the client's
};

// send() gets the encoded request (method, params, a "dl" budget) for the target's address and
// the call's deadline; the matching response completes the call with its value.
TEST(ClientMockTransportTest, SendCarriesTheRequestAndTheMatchingReplyCompletesTheCall) {
  MockedClient mocked;
  std::string sent;
  Deadline sentDeadline{};
  const Address address{"", "calc", "", false};
  EXPECT_CALL(*mocked.channel, send(address, _, _))
      .WillOnce([&](const Address&, std::string bytes, Deadline deadline) {
        sent = std::move(bytes);
        sentDeadline = deadline;
        return Status::ok();
      });
  RpcClient client = mocked.create();
  const Deadline before = Clock::now();
  boost::future<Result<Value>> call = client.callAsync("add", {2, 3});
  const Deadline after = Clock::now();

  const RequestMessage request = decodeRequest(sent);  // send() ran on this thread
  EXPECT_EQ(request.method, "add");
  EXPECT_EQ(request.params, (Array{2, 3}));
  ASSERT_TRUE(request.ext.budgetMs.has_value()) << "no \"dl\" budget in the request";
  EXPECT_GT(*request.ext.budgetMs, 0u);
  EXPECT_LE(*request.ext.budgetMs, 10000u);
  EXPECT_GE(sentDeadline, before + kWait);
  EXPECT_LE(sentDeadline, after + kWait);
  EXPECT_FALSE(readyWithin(call, 0s));

  mocked.deliver(encodeMessage(ResponseMessage{request.msgid, Status::ok(), Value(5)}));
  ASSERT_TRUE(readyWithin(call, 0s)) << "the reply callback completes the call on its thread";
  Result<Value> r = call.get();
  ASSERT_TRUE(r.isOk()) << r.status();
  EXPECT_EQ(*r, Value(5));
  EXPECT_EQ(client.stats().calls, 1u);
  EXPECT_EQ(client.stats().lateReplies, 0u);
}

// A response for a msgid with no call in flight (unknown, or already answered) is counted late
// and completes nothing.
TEST(ClientMockTransportTest, ReplyForAnUnknownMsgidCountsAsLate) {
  MockedClient mocked;
  std::string sent;
  EXPECT_CALL(*mocked.channel, send(_, _, _))
      .WillOnce([&](const Address&, std::string bytes, Deadline) {
        sent = std::move(bytes);
        return Status::ok();
      });
  RpcClient client = mocked.create();
  boost::future<Result<Value>> call = client.callAsync("add", {1, 1});
  const RequestMessage request = decodeRequest(sent);

  mocked.deliver(encodeMessage(ResponseMessage{request.msgid + 1000, Status::ok(), Value(9)}));
  EXPECT_EQ(client.stats().lateReplies, 1u);
  EXPECT_FALSE(readyWithin(call, 0s)) << "a reply for another msgid completed the call";

  mocked.deliver(encodeMessage(ResponseMessage{request.msgid, Status::ok(), Value(2)}));
  ASSERT_TRUE(readyWithin(call, 0s));
  EXPECT_EQ(call.get().value(), Value(2));
  mocked.deliver(encodeMessage(ResponseMessage{request.msgid, Status::ok(), Value(3)}));
  EXPECT_EQ(client.stats().lateReplies, 2u);  // a second answer to the same call
  EXPECT_EQ(client.stats().badReplies, 0u);
}

// When send() fails the call fails with that error at once, on the caller's thread.
TEST(ClientMockTransportTest, SendErrorFailsTheCallAtOnce) {
  MockedClient mocked;
  EXPECT_CALL(*mocked.channel, send(_, _, _))
      .Times(2)
      .WillRepeatedly(Return(Status(StatusCode::kTransportError, "link down")));
  RpcClient client = mocked.create();

  bool calledBack = false;  // set on this thread if the outcome comes at once
  Status outcome;
  client.callAsync("add", {1, 2}, [&](Result<Value> r) {
    calledBack = true;
    outcome = r.status();
  });
  ASSERT_TRUE(calledBack) << "a failed send must complete the call before callAsync returns";
  EXPECT_CODE(outcome, StatusCode::kTransportError);
  EXPECT_EQ(outcome.message(), "link down");

  const Deadline began = Clock::now();
  Result<Value> r = client.callValue("add", {1, 2});
  EXPECT_CODE(r.status(), StatusCode::kTransportError);
  EXPECT_LT(Clock::now() - began, kWait / 2) << "callValue() waited for the timeout";
  EXPECT_EQ(client.stats().timeouts, 0u);
}

}  // namespace
}  // namespace switchboard
