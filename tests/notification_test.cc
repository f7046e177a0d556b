// Notifications: the Notifier's messages and the filter table; then, over the in-memory transport
// and over ZeroMQ through a broker on tcp loopback, the listener's dispatch rules, requeue,
// batches, pools, restarts and malformed input, with every executor. Every wait is bounded; no
// sleep synchronises anything.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "messaging/detail/codec.h"
#include "messaging/notification_listener.h"
#include "messaging/notifier.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/mock_transport.h"
#include "tests/support/test_util.h"
#include "transports/detail/notification_router.h"
#include "transports/in_memory_transport.h"
#include "transports/zmq_notification_broker.h"
#include "transports/zmq_transport.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::Events;
using testing::LogCapture;
using ::testing::_;
using ::testing::Return;

constexpr Duration kWait = 5s;

// Records what a handler was given; thread-safe.
class Recorder {
 public:
  NotificationHandler handler(NotificationResult result = NotificationResult::kHandled) {
    return [this, result](const Notification& n) {
      add({n});
      return result;
    };
  }
  BatchNotificationHandler batchHandler() {
    return [this](const std::vector<Notification>& batch) {
      add(batch);
      return NotificationResult::kHandled;
    };
  }
  void add(const std::vector<Notification>& batch) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      calls_.push_back(batch);
    }
    for (size_t i = 0; i < batch.size(); ++i) events_.add();
  }
  bool waitFor(int notifications, Duration bound = kWait) {
    return events_.waitFor(notifications, bound);
  }
  std::vector<std::vector<Notification>> calls() {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }
  // In arrival order (a thread pool may run notifications in any order: see sortedEventTypes).
  std::vector<std::string> eventTypes() {
    std::vector<std::string> out;
    for (const auto& call : calls()) {
      for (const Notification& n : call) out.push_back(n.eventType);
    }
    return out;
  }
  std::vector<std::string> sortedEventTypes() {
    std::vector<std::string> out = eventTypes();
    std::sort(out.begin(), out.end());
    return out;
  }
  int count() { return events_.count(); }

 private:
  std::mutex mutex_;
  std::vector<std::vector<Notification>> calls_;
  Events events_;
};

std::vector<Target> topic(std::string name) { return {Target{.topic = std::move(name)}}; }

std::unique_ptr<Executor> pool() { return testing::ThreadPoolKind::make(); }

// ----- the transports the listener is tested over ----------------------------------------------
// Each gives a Transport, a bounded wait for its routing counters to reach a condition, and a
// wait until the router knows `count` subscriptions (what is published before a subscription is
// known reaches only the pools that exist).

using StatsCondition = std::function<bool(const NotificationStats&)>;

class InMemoryNotifications {
 public:
  static std::string name() { return "InMemory"; }
  Transport& transport() { return transport_; }
  NotificationStats stats() const { return transport_.notificationStats(); }
  // In memory the counters are up to date when a call returns: checked once.
  bool statsReach(const StatsCondition& condition) const { return condition(stats()); }
  bool waitForSubscribers(uint64_t) const { return true; }  // subscribe() returned: known

 private:
  InMemoryTransport transport_;
};

// ZmqTransport::publish/subscribe through a ZmqNotificationBroker on tcp loopback. Settling
// messages and subscribing reach the broker asynchronously: the waits follow its counters.
class ZmqNotifications {
 public:
  static std::string name() { return "Zmq"; }
  ZmqNotifications() : broker_(context_, "tcp://127.0.0.1:0") {
    EXPECT_OK(broker_.start());
    transport_ = std::make_unique<ZmqTransport>(context_, broker_.boundEndpoint());
  }
  Transport& transport() { return *transport_; }
  NotificationStats stats() const { return broker_.stats(); }
  bool statsReach(const StatsCondition& condition) const {
    return broker_.waitForStats([&](const ZmqNotificationBroker::Stats& s) { return condition(s); },
                                deadlineAfter(kWait));
  }
  bool waitForSubscribers(uint64_t count) const {
    return broker_.waitForStats(
        [&](const ZmqNotificationBroker::Stats& s) { return s.subscribers == count; },
        deadlineAfter(kWait));
  }

 private:
  ZmqContext context_;
  ZmqNotificationBroker broker_;
  std::unique_ptr<ZmqTransport> transport_;
};

using TransportKinds = ::testing::Types<InMemoryNotifications, ZmqNotifications>;

// Names typed cases after their transport (and executor): "Zmq", "InMemory_ThreadPool"...
struct KindNames {
  template <typename T>
  static std::string GetName(int) {
    return T::name();
  }
};

// ----- the router's settling rules -------------------------------------------------------------

TEST(NotificationRouterTest, RequeueCountsAnAttemptReleaseDoesNotAndEachSettlesOnce) {
  detail::NotificationRouter router(detail::NotificationRouter::Options{.maxQueued = 10,
                                                                        .maxDeliveries = 2});
  const auto id = router.subscribe({{"t"}, "pool"}, [] {}).value();
  router.publish("t", "body");
  std::vector<detail::NotificationRouter::Delivery> taken;
  for (int round = 0; round < 3; ++round) {  // released: never an attempt, so never exhausted
    taken.clear();
    router.take(id, 10, taken);
    ASSERT_EQ(taken.size(), 1u);
    EXPECT_EQ(taken[0].attempt, 1u);
    EXPECT_EQ(router.heldCount(id), 1u);
    EXPECT_TRUE(router.release(id, taken[0].id));
    EXPECT_FALSE(router.release(id, taken[0].id)) << "settled once";
  }
  taken.clear();
  router.take(id, 10, taken);
  ASSERT_TRUE(router.requeue(id, taken[0].id));
  taken.clear();
  router.take(id, 10, taken);
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].attempt, 2u);
  EXPECT_TRUE(router.requeue(id, taken[0].id));  // the last allowed delivery: dropped
  taken.clear();
  router.take(id, 10, taken);
  EXPECT_TRUE(taken.empty());
  EXPECT_FALSE(router.acknowledge(id, 12345)) << "not held";
  const NotificationStats stats = router.stats();
  EXPECT_EQ(stats.exhausted, 1u);
  EXPECT_EQ(stats.requeued, 1u);
  EXPECT_EQ(stats.delivered, 5u);
  EXPECT_EQ(router.heldCount(id), 0u);
}

// ----- Notifier ------------------------------------------------------------------------------

TEST(NotifierTest, EachPriorityGoesToTopicDotPriorityOfEveryTopicWithEveryField) {
  InMemoryTransport transport;
  auto raw = transport.subscribe({{"a.info", "b.info", "a.error"}, ""}).value();
  Notifier notifier(transport, "compute.host1", {"a", "b"});
  notifier.info(Value(Map{{Value("user"), Value("alice")}}), "instance.create",
                Value(Map{{Value("id"), Value(7)}}));
  notifier.error(Value(), "instance.fail", Value("boom"));
  std::vector<IncomingPtr> got;
  while (got.size() < 3) ASSERT_OK(raw->poll(deadlineAfter(kWait), 10, got));
  ASSERT_EQ(got.size(), 3u);
  std::set<std::string> ids;
  for (const IncomingPtr& m : got) {
    Result<Notification> n = detail::decodeNotification(m->body());
    ASSERT_OK(n.status());
    EXPECT_EQ(n->publisherId, "compute.host1");
    EXPECT_FALSE(n->messageId().empty());
    ids.insert(n->messageId());
    EXPECT_THAT(n->timestamp(), ::testing::MatchesRegex(
                                    "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{6}Z"));
    if (n->priority == Priority::kInfo) {
      EXPECT_EQ(n->eventType, "instance.create");
      EXPECT_EQ(*n->payload.find("id"), Value(7));
      EXPECT_EQ(*n->context.find("user"), Value("alice"));
    } else {
      EXPECT_EQ(n->priority, Priority::kError);
      EXPECT_EQ(n->eventType, "instance.fail");
      EXPECT_EQ(n->payload, Value("boom"));
    }
    m->acknowledge();
  }
  EXPECT_EQ(ids.size(), 2u) << "one id per notification, the same for each of its topics";
  EXPECT_EQ(notifier.stats().sent, 4u);  // b.error too, which nobody subscribed to
  EXPECT_EQ(notifier.stats().failed, 0u);
}

TEST(NotifierTest, TheNoOpNotifierDoesNothing) {
  Notifier notifier;
  EXPECT_FALSE(notifier.isEnabled());
  notifier.critical(Value(), "x", Value(1));
  notifier.prepare({.publisherId = "p"}).info(Value(), "x", Value(1));
  EXPECT_EQ(notifier.stats().sent, 0u);
  EXPECT_EQ(notifier.stats().failed, 0u);
}

TEST(NotifierTest, ARefusedPublishIsRetriedThenLoggedAndCountedNeverThrown) {
  testing::MockTransport transport;
  EXPECT_CALL(transport, publish(std::string_view("t.warn"), _))
      .Times(3)
      .WillRepeatedly(Return(Status(StatusCode::kOverloaded, "full")));
  LogCapture log;
  Notifier::Options options;
  options.log = log.sink();
  options.retry = 5;
  Notifier notifier(transport, "svc", {"t"}, options);
  notifier.prepare({.retry = 2}).warn(Value(), "disk.low", Value(3));
  EXPECT_EQ(notifier.stats().failed, 1u);
  EXPECT_EQ(notifier.stats().sent, 0u);
  EXPECT_EQ(log.count(LogLevel::kWarning, "full"), 1);
}

TEST(NotifierTest, ASerializerThatThrowsIsCountedForEveryTopicAndLogged) {
  // Regression: the log's back-off used the per-topic count, so with three topics (3, 6, 9...
  // never a power of two) no failure was ever logged.
  struct Throwing final : Serializer {
    Value serializeEntity(const Context&, Value) const override {
      throw std::runtime_error("cannot serialize");
    }
  } throwing;
  InMemoryTransport transport;
  LogCapture log;
  Notifier::Options options;
  options.serializer = &throwing;
  options.log = log.sink();
  Notifier notifier(transport, "svc", {"a", "b", "c"}, options);
  notifier.info(Value(), "e", Value(1));
  notifier.info(Value(), "e", Value(2));
  EXPECT_EQ(notifier.stats().failed, 6u);
  EXPECT_EQ(notifier.stats().sent, 0u);
  EXPECT_EQ(log.count(LogLevel::kWarning, "cannot serialize"), 2) << "the 1st and 2nd failure";
  EXPECT_EQ(transport.notificationStats().published, 0u);
}

TEST(NotifierTest, PrepareOverridesThePublisherIdOfTheCopyOnly) {
  InMemoryTransport transport;
  auto raw = transport.subscribe({{"t.sample"}, ""}).value();
  Notifier notifier(transport, "original", {"t"});
  Notifier prepared = notifier.prepare({.publisherId = "override"});
  EXPECT_EQ(notifier.publisherId(), "original");
  prepared.sample(Value(), "e", Value());
  std::vector<IncomingPtr> got;
  ASSERT_OK(raw->poll(deadlineAfter(kWait), 10, got));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(detail::decodeNotification(got[0]->body())->publisherId, "override");
  EXPECT_EQ(notifier.stats().sent, 1u) << "copies share the counters";
}

// ----- filters -------------------------------------------------------------------------------

TEST(NotificationFilterTest, Table) {
  using F = NotificationFilter::Field;
  Notification n;
  n.publisherId = "compute.host1";
  n.eventType = "instance.create.end";
  n.context = Value(Map{{Value("project"), Value("p42")}, {Value("count"), Value(3)}});
  n.payload = Value(Map{{Value("state"), Value("active")}});
  n.metadata = Value(Map{{Value("message_id"), Value("abc")}, {Value("timestamp"), Value("t")}});
  struct Row {
    std::vector<NotificationFilter::Rule> rules;
    bool matches;
  };
  const std::vector<Row> table = {
      {{}, true},
      {{{F::kEventType, "", "instance\\..*"}}, true},
      {{{F::kEventType, "", "instance"}}, false},  // anchored: the whole string must match
      {{{F::kEventType, "", "create"}}, false},
      {{{F::kPublisherId, "", "compute\\..*"}}, true},
      {{{F::kPublisherId, "", "network\\..*"}}, false},
      {{{F::kContext, "project", "p4[0-9]"}}, true},
      {{{F::kContext, "missing", ".*"}}, false},  // a missing key does not match
      {{{F::kContext, "count", ".*"}}, false},    // nor a value that is not a string
      {{{F::kPayload, "state", "active|error"}}, true},
      {{{F::kPayload, "state", "error"}}, false},
      {{{F::kMetadata, "message_id", "abc"}}, true},
      {{{F::kEventType, "", "instance.*"}, {F::kPayload, "state", "error"}}, false},  // all rules
      {{{F::kEventType, "", "instance.*"}, {F::kPublisherId, "", "compute.*"}}, true},
  };
  for (size_t i = 0; i < table.size(); ++i) {
    Result<NotificationFilter> filter = NotificationFilter::make(table[i].rules);
    ASSERT_OK(filter.status());
    EXPECT_EQ(filter->matches(n), table[i].matches) << "row " << i;
  }
  Notification bare;  // payload and context nil: keyed rules do not match
  EXPECT_FALSE(NotificationFilter::make({{F::kPayload, "state", ".*"}})->matches(bare));
}

TEST(NotificationFilterTest, ABadPatternOrAMissingKeyIsBadArguments) {
  using F = NotificationFilter::Field;
  EXPECT_EQ(NotificationFilter::make({{F::kEventType, "", "("}}).status().code(),
            StatusCode::kBadArguments);
  EXPECT_EQ(NotificationFilter::make({{F::kPayload, "", "x"}}).status().code(),
            StatusCode::kBadArguments);
}

// ----- the listener, for every executor -------------------------------------------------------

// A transport kind with an executor kind.
template <typename Notifications, typename Executor>
struct Over {
  using Net = Notifications;
  using Kind = Executor;
  static std::string name() { return Net::name() + "_" + Kind::name(); }
};
using ThreadPool = testing::ThreadPoolKind;
using Blocking = testing::BlockingKind;
using EventLoop = testing::EventLoopKind;
using ListenerCases =
    ::testing::Types<Over<InMemoryNotifications, ThreadPool>, Over<InMemoryNotifications, Blocking>,
                     Over<InMemoryNotifications, EventLoop>, Over<ZmqNotifications, ThreadPool>,
                     Over<ZmqNotifications, Blocking>, Over<ZmqNotifications, EventLoop>>;

template <typename Case>
class NotificationListenerTest : public ::testing::Test {
 protected:
  typename Case::Net net_;
};
TYPED_TEST_SUITE(NotificationListenerTest, ListenerCases, KindNames);

// A started listener on topic "n" with executor kind `Kind` (a blocking one executes on a
// thread of its own), subscribed once start() returns.
template <typename Kind>
struct RunningListener {
  template <typename Net>
  RunningListener(Net& net, std::vector<NotificationEndpoint> endpoints,
                  NotificationListener::Options options = {})
      : listener(net.transport(), topic("n"), std::move(endpoints), Kind::make(),
                 std::move(options)),
        started(listener.start()),
        serving(listener, Kind::kBlocking && started.isOk()) {
    if (started) {
      EXPECT_TRUE(net.waitForSubscribers(1));
    }
  }
  // Stops it; ok once everything it took is settled and its threads are joined.
  Status stop() {
    listener.stop();
    Status waited = listener.wait(deadlineAfter(kWait));
    serving.join();
    return waited;
  }

  NotificationListener listener;
  Status started;
  testing::ServingThread serving;
};

TYPED_TEST(NotificationListenerTest, DispatchesInEndpointOrderToThoseWithThePriorityAndFilter) {
  using F = NotificationFilter::Field;
  auto& net = this->net_;
  Transport& transport = net.transport();
  Recorder first, onlyErrors, filtered, last;
  std::mutex orderMutex;
  std::map<std::string, std::vector<int>> order;  // event type -> endpoints, in call order
  const auto logged = [&](int endpoint, Recorder& recorder) -> NotificationHandler {
    return [&, endpoint](const Notification& n) {
      {
        std::lock_guard<std::mutex> lock(orderMutex);
        order[n.eventType].push_back(endpoint);
      }
      return recorder.handler()(n);
    };
  };
  std::vector<NotificationEndpoint> endpoints(4);
  endpoints[0].on(Priority::kInfo, logged(0, first));
  endpoints[1].on(Priority::kError, logged(1, onlyErrors));
  endpoints[2]
      .on(Priority::kInfo, logged(2, filtered))
      .filter(NotificationFilter::make({{F::kEventType, "", "volume\\..*"}}).value());
  endpoints[3].on(Priority::kInfo, logged(3, last)).on(Priority::kError, logged(3, last));
  RunningListener<typename TypeParam::Kind> running(net, std::move(endpoints));
  ASSERT_OK(running.started);
  Notifier notifier(transport, "p", {"n"});
  notifier.info(Value(), "instance.create", Value(1));
  notifier.info(Value(), "volume.attach", Value(2));
  notifier.error(Value(), "instance.fail", Value(3));
  notifier.debug(Value(), "nobody.listens", Value(4));  // no endpoint: not even subscribed
  ASSERT_TRUE(last.waitFor(3));
  EXPECT_EQ(first.sortedEventTypes(),
            (std::vector<std::string>{"instance.create", "volume.attach"}));
  EXPECT_EQ(filtered.eventTypes(), (std::vector<std::string>{"volume.attach"}));
  EXPECT_EQ(onlyErrors.eventTypes(), (std::vector<std::string>{"instance.fail"}));
  std::lock_guard<std::mutex> lock(orderMutex);
  EXPECT_EQ(order["instance.create"], (std::vector<int>{0, 3}));
  EXPECT_EQ(order["volume.attach"], (std::vector<int>{0, 2, 3}));
  EXPECT_EQ(order["instance.fail"], (std::vector<int>{1, 3}));
  ASSERT_OK(running.stop());
  EXPECT_EQ(running.listener.stats().handled, 3u);
  EXPECT_EQ(running.listener.stats().received, 3u);
  EXPECT_TRUE(net.statsReach([](const NotificationStats& s) { return s.unrouted == 1; }))
      << "unrouted: " << net.stats().unrouted;
}

TYPED_TEST(NotificationListenerTest, TheFirstRequeueStopsDispatchAndRedeliversWhenAllowed) {
  auto& net = this->net_;
  Transport& transport = net.transport();
  std::atomic<int> attempts{0};
  Recorder after;
  std::vector<NotificationEndpoint> endpoints(2);
  endpoints[0].on(Priority::kWarn, [&](const Notification&) {
    return attempts.fetch_add(1) == 0 ? NotificationResult::kRequeue
                                      : NotificationResult::kHandled;
  });
  endpoints[1].on(Priority::kWarn, after.handler());
  NotificationListener::Options options;
  options.allowRequeue = true;
  RunningListener<typename TypeParam::Kind> running(net, std::move(endpoints), options);
  ASSERT_OK(running.started);
  Notifier(transport, "p", {"n"}).warn(Value(), "e", Value());
  ASSERT_TRUE(after.waitFor(1));
  EXPECT_EQ(attempts.load(), 2) << "requeued once, then delivered again";
  EXPECT_EQ(after.count(), 1) << "the requeue stopped dispatch before the second endpoint";
  ASSERT_OK(running.stop());
  EXPECT_EQ(running.listener.stats().requeued, 1u);
  EXPECT_EQ(running.listener.stats().handled, 1u);
  EXPECT_TRUE(net.statsReach([](const NotificationStats& s) { return s.requeued == 1; }))
      << "requeued: " << net.stats().requeued;
}

TYPED_TEST(NotificationListenerTest, ARequeueNotAllowedOrAThrowIsAcknowledgedDroppedAndCounted) {
  auto& net = this->net_;
  Transport& transport = net.transport();
  LogCapture log;
  Events calls;
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0]
      .on(Priority::kInfo,
          [&](const Notification&) {
            calls.add();
            return NotificationResult::kRequeue;
          })
      .on(Priority::kError, [&](const Notification&) -> NotificationResult {
        calls.add();
        throw std::runtime_error("handler bug");
      });
  NotificationListener::Options options;
  options.log = log.sink();
  RunningListener<typename TypeParam::Kind> running(net, std::move(endpoints), options);
  ASSERT_OK(running.started);
  Notifier notifier(transport, "p", {"n"});
  notifier.info(Value(), "e", Value());
  notifier.error(Value(), "e", Value());
  ASSERT_TRUE(calls.waitFor(2, kWait));
  ASSERT_OK(running.stop());
  EXPECT_EQ(calls.count(), 2) << "neither was delivered again";
  EXPECT_EQ(running.listener.stats().requeueRefused, 2u);
  EXPECT_EQ(running.listener.stats().requeued, 0u);
  EXPECT_TRUE(net.statsReach([](const NotificationStats& s) { return s.acknowledged == 2; }))
      << "acknowledged: " << net.stats().acknowledged;
  EXPECT_EQ(log.count(LogLevel::kWarning, "handler bug"), 1);
}

TYPED_TEST(NotificationListenerTest, AnUndecodableMessageIsCountedAndTheNextOneServed) {
  auto& net = this->net_;
  Transport& transport = net.transport();
  LogCapture log;
  Recorder got;
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0].on(Priority::kInfo, got.handler());
  NotificationListener::Options options;
  options.log = log.sink();
  RunningListener<typename TypeParam::Kind> running(net, std::move(endpoints), options);
  ASSERT_OK(running.started);
  ASSERT_OK(transport.publish("n.info", "\xc1 not msgpack"));
  ASSERT_OK(transport.publish("n.info", detail::encodeValue(Value(Map{{Value("a"), Value(1)}}))));
  Notifier(transport, "p", {"n"}).info(Value(), "good", Value());
  ASSERT_TRUE(got.waitFor(1));
  ASSERT_OK(running.stop());
  EXPECT_EQ(got.eventTypes(), std::vector<std::string>{"good"});
  EXPECT_EQ(running.listener.stats().malformed, 2u);
  EXPECT_EQ(log.count(LogLevel::kWarning, "undecodable"), 2);
}

// ----- batches and pools, over each transport (with the thread pool) --------------------------

template <typename Net>
class NotificationBatchTest : public ::testing::Test {
 protected:
  Net net_;
};
TYPED_TEST_SUITE(NotificationBatchTest, TransportKinds, KindNames);

template <typename Net>
class NotificationPoolTest : public ::testing::Test {
 protected:
  Net net_;
};
TYPED_TEST_SUITE(NotificationPoolTest, TransportKinds, KindNames);

struct BatchRun {
  std::vector<size_t> sizes;
  NotificationListener::Stats stats;
};

// Publishes `count` info notifications, then runs a batch listener until `expect` have arrived.
template <typename Net>
BatchRun runBatches(Net& net, int count, size_t batchSize, Duration timeout, int expect) {
  Recorder got;
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0].onBatch(Priority::kInfo, got.batchHandler());
  NotificationListener::Options options;
  options.batchSize = batchSize;
  options.batchTimeout = timeout;
  NotificationListener listener(net.transport(), topic("n"), std::move(endpoints), pool(),
                                options);
  if (Status s = listener.start(); !s) {
    ADD_FAILURE() << s.toString();
    return {};
  }
  EXPECT_TRUE(net.waitForSubscribers(1));
  Notifier notifier(net.transport(), "p", {"n"});
  for (int i = 0; i < count; ++i) notifier.info(Value(), "e" + std::to_string(i), Value(i));
  EXPECT_TRUE(got.waitFor(expect));
  listener.stop();
  EXPECT_OK(listener.wait(deadlineAfter(kWait)));
  BatchRun run;
  for (const auto& call : got.calls()) run.sizes.push_back(call.size());
  run.stats = listener.stats();
  return run;
}

TYPED_TEST(NotificationBatchTest, TenMessagesBatchFiveNoTimeoutGiveTwoCallsOfFive) {
  BatchRun run = runBatches(this->net_, 10, 5, Duration::zero(), 10);
  EXPECT_EQ(run.sizes, (std::vector<size_t>{5, 5}));
  EXPECT_EQ(run.stats.batches, 2u);
  EXPECT_EQ(run.stats.handled, 10u);
}

TYPED_TEST(NotificationBatchTest, TwelveMessagesBatchFiveWithATimeoutGiveFiveFiveTwo) {
  BatchRun run = runBatches(this->net_, 12, 5, 100ms, 12);
  std::vector<size_t> sorted = run.sizes;  // the pool may run the batches in any order
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<size_t>{2, 5, 5}));
  EXPECT_EQ(run.stats.handled, 12u);
}

TYPED_TEST(NotificationBatchTest, WithoutATimeoutAPartialBatchWaitsAndGoesBackAtStop) {
  auto& net = this->net_;
  Recorder got;
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0].onBatch(Priority::kInfo, got.batchHandler());
  NotificationListener::Options options;
  options.batchSize = 5;
  options.pool = "workers";
  auto listener = std::make_unique<NotificationListener>(net.transport(), topic("n"), endpoints,
                                                         pool(), options);
  ASSERT_OK(listener->start());
  ASSERT_TRUE(net.waitForSubscribers(1));
  Notifier notifier(net.transport(), "p", {"n"});
  for (int i = 0; i < 7; ++i) notifier.info(Value(), "e", Value(i));
  ASSERT_TRUE(got.waitFor(5));
  listener->stop();
  ASSERT_OK(listener->wait(deadlineAfter(kWait)));
  EXPECT_EQ(got.count(), 5) << "the two left never made a batch";
  EXPECT_EQ(listener->stats().requeued, listener->stats().received - 5)
      << "what it took of them went back to the pool's queue";
  EXPECT_TRUE(net.statsReach([](const NotificationStats& s) { return s.queuedNow == 2; }))
      << "queued: " << net.stats().queuedNow;
  // The next member of the pool gets them once three more arrive.
  listener = std::make_unique<NotificationListener>(net.transport(), topic("n"), endpoints, pool(),
                                                    options);
  ASSERT_OK(listener->start());
  for (int i = 7; i < 10; ++i) notifier.info(Value(), "e", Value(i));
  ASSERT_TRUE(got.waitFor(10));
  std::vector<int64_t> payloads;
  for (const auto& call : got.calls()) {
    for (const Notification& n : call) payloads.push_back(n.payload.asInt());
  }
  std::sort(payloads.begin(), payloads.end());
  EXPECT_EQ(payloads, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TYPED_TEST(NotificationBatchTest, ABatchIsSplitByPriority) {
  auto& net = this->net_;
  Recorder infos, errors;
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0].onBatch(Priority::kInfo, infos.batchHandler());
  endpoints[0].onBatch(Priority::kError, errors.batchHandler());
  NotificationListener::Options options;
  options.batchSize = 4;
  NotificationListener listener(net.transport(), topic("n"), std::move(endpoints), pool(),
                                options);
  Notifier notifier(net.transport(), "p", {"n"});
  ASSERT_OK(listener.start());
  ASSERT_TRUE(net.waitForSubscribers(1));
  notifier.info(Value(), "i1", Value());
  notifier.error(Value(), "e1", Value());
  notifier.info(Value(), "i2", Value());
  notifier.error(Value(), "e2", Value());
  ASSERT_TRUE(infos.waitFor(2));
  ASSERT_TRUE(errors.waitFor(2));
  EXPECT_EQ(infos.calls().size(), 1u);
  EXPECT_EQ(infos.eventTypes(), (std::vector<std::string>{"i1", "i2"}));
  EXPECT_EQ(errors.eventTypes(), (std::vector<std::string>{"e1", "e2"}));
}

TYPED_TEST(NotificationBatchTest, EachEndpointGetsThePartOfABatchItsFilterPasses) {
  using F = NotificationFilter::Field;
  auto& net = this->net_;
  Recorder kept, everything;
  std::vector<NotificationEndpoint> endpoints(2);
  endpoints[0]
      .onBatch(Priority::kInfo, kept.batchHandler())
      .filter(NotificationFilter::make({{F::kEventType, "", "keep\\..*"}}).value());
  endpoints[1].onBatch(Priority::kInfo, everything.batchHandler());
  NotificationListener::Options options;
  options.batchSize = 4;
  NotificationListener listener(net.transport(), topic("n"), std::move(endpoints), pool(),
                                options);
  ASSERT_OK(listener.start());
  ASSERT_TRUE(net.waitForSubscribers(1));
  Notifier notifier(net.transport(), "p", {"n"});
  for (const char* e : {"keep.a", "drop.b", "keep.c", "drop.d"}) notifier.info(Value(), e, Value());
  ASSERT_TRUE(everything.waitFor(4));
  EXPECT_EQ(kept.eventTypes(), (std::vector<std::string>{"keep.a", "keep.c"}));
  EXPECT_EQ(everything.eventTypes(),
            (std::vector<std::string>{"keep.a", "drop.b", "keep.c", "drop.d"}));
  listener.stop();
  ASSERT_OK(listener.wait(deadlineAfter(kWait)));
  EXPECT_EQ(listener.stats().batches, 2u);
  EXPECT_EQ(listener.stats().handled, 4u);
}

TYPED_TEST(NotificationPoolTest, EveryPoolAndEveryUnpooledListenerGetsEveryNotification) {
  auto& net = this->net_;
  constexpr int kCount = 20;
  Recorder p1, p2, unpooled[2];
  std::vector<std::unique_ptr<NotificationListener>> listeners;
  const auto add = [&](Recorder& recorder, std::string poolName) {
    std::vector<NotificationEndpoint> endpoints(1);
    endpoints[0].on(Priority::kInfo, recorder.handler());
    NotificationListener::Options options;
    options.pool = std::move(poolName);
    listeners.push_back(std::make_unique<NotificationListener>(net.transport(), topic("n"),
                                                               std::move(endpoints), pool(),
                                                               options));
    ASSERT_OK(listeners.back()->start());
  };
  add(p1, "p1");  // two members share p1's recorder
  add(p1, "p1");
  add(p2, "p2");
  add(unpooled[0], "");
  add(unpooled[1], "");
  ASSERT_TRUE(net.waitForSubscribers(5));
  Notifier notifier(net.transport(), "p", {"n"});
  for (int i = 0; i < kCount; ++i) notifier.info(Value(), "e" + std::to_string(i), Value());
  for (Recorder* r : {&p1, &p2, &unpooled[0], &unpooled[1]}) ASSERT_TRUE(r->waitFor(kCount));
  for (auto& l : listeners) {
    l->stop();
    ASSERT_OK(l->wait(deadlineAfter(kWait)));
  }
  for (Recorder* r : {&p1, &p2, &unpooled[0], &unpooled[1]}) {
    const std::vector<std::string> got = r->sortedEventTypes();
    EXPECT_EQ(got.size(), static_cast<size_t>(kCount)) << "each notification once";
    EXPECT_EQ(std::set<std::string>(got.begin(), got.end()).size(), static_cast<size_t>(kCount));
  }
}

TYPED_TEST(NotificationPoolTest, AListenerRestartedWithinItsPoolMissesNothing) {
  auto& net = this->net_;
  Recorder got;
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0].on(Priority::kAudit, got.handler());
  NotificationListener::Options options;
  options.pool = "auditors";
  Notifier notifier(net.transport(), "p", {"n"});
  {
    NotificationListener listener(net.transport(), topic("n"), endpoints, pool(), options);
    ASSERT_OK(listener.start());
    ASSERT_TRUE(net.waitForSubscribers(1));
    for (int i = 0; i < 5; ++i) notifier.audit(Value(), "before", Value(i));
    ASSERT_TRUE(got.waitFor(5));
  }
  // Settled before it went (else its five would be delivered again, at least once).
  ASSERT_TRUE(net.statsReach([](const NotificationStats& s) { return s.acknowledged == 5; }))
      << "acknowledged: " << net.stats().acknowledged;
  for (int i = 5; i < 10; ++i) notifier.audit(Value(), "between", Value(i));
  NotificationListener listener(net.transport(), topic("n"), endpoints, pool(), options);
  ASSERT_OK(listener.start());
  ASSERT_TRUE(got.waitFor(10));
  std::vector<int64_t> payloads;
  for (const auto& call : got.calls()) payloads.push_back(call[0].payload.asInt());
  std::sort(payloads.begin(), payloads.end());
  EXPECT_EQ(payloads, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(NotificationListenerStartTest, NoTopicOrNoHandlerIsInvalidTarget) {
  InMemoryTransport transport;
  std::vector<NotificationEndpoint> none(1);
  NotificationListener noHandler(transport, topic("n"), none, pool());
  EXPECT_EQ(noHandler.start().code(), StatusCode::kInvalidTarget);
  std::vector<NotificationEndpoint> endpoints(1);
  endpoints[0].on(Priority::kInfo, [](const Notification&) { return NotificationResult::kHandled; });
  NotificationListener noTopic(transport, {Target{}}, endpoints, pool());
  EXPECT_EQ(noTopic.start().code(), StatusCode::kInvalidTarget);
  NotificationListener batchWithoutBatchHandler(transport, topic("n"), endpoints, pool(),
                                                {.batchSize = 3});
  EXPECT_EQ(batchWithoutBatchHandler.start().code(), StatusCode::kInvalidTarget);
}

}  // namespace
}  // namespace switchboard
