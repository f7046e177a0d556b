// MessagePack-RPC over TCP (msgpack+tcp://): RpcClient -> MsgpackRpcTcpTransport -> server for
// every executor; raw TCP peers (a stock client's bytes, and hostile ones: garbage, truncated,
// over-size, wrong shape, too many connections, idle), each disconnected and counted while a good
// client on another connection is still answered; link events and reconnection.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <latch>
#include <optional>

#include "messaging/detail/wire.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/test_util.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using detail::decodeMessage;
using detail::encodeMessage;
using detail::RequestMessage;
using detail::ResponseMessage;
using testing::kDefaultWait;

Endpoint service() {
  Endpoint ep;
  ep.method("echo", [](Value v) { return v; });
  ep.method("add", [](int64_t a, int64_t b) { return a + b; });
  ep.method("fail", [](std::string m) -> int { throw std::runtime_error(m); });
  ep.method("later", [](CallContext& ctx, int64_t ms) {
    auto reply = std::make_shared<DeferredReply>(ctx.defer());
    (void)ctx.executor()->runAt(deadlineAfter(std::chrono::milliseconds(ms)),
                                [reply, ms] { reply->complete(ms); });
  });
  return ep;
}

// A MessageHandlingServer on a msgpack+tcp:// port of its own, stopped by the destructor.
template <typename Kind>
class TcpServer {
 public:
  explicit TcpServer(std::vector<Endpoint> endpoints, MsgpackRpcTcpTransport::Options options = {})
      : transport_("msgpack+tcp://127.0.0.1:0", std::move(options)),
        server_(transport_, Target{.topic = "t", .server = "s"},
                RpcDispatcher(std::move(endpoints)), Kind::make()) {
    EXPECT_OK(server_.start());
    serving_ = std::make_unique<testing::ServingThread>(server_, Kind::kBlocking);
  }
  ~TcpServer() {
    server_.stop();
    EXPECT_OK(server_.wait(deadlineAfter(kDefaultWait)));
    serving_.reset();
  }
  std::string url() const { return transport_.boundEndpoint(); }
  uint16_t port() const {
    const std::string u = url();
    return static_cast<uint16_t>(std::stoi(u.substr(u.rfind(':') + 1)));
  }
  MsgpackRpcTcpTransport& transport() { return transport_; }
  MessageHandlingServer& server() { return server_; }

 private:
  MsgpackRpcTcpTransport transport_;
  MessageHandlingServer server_;
  std::unique_ptr<testing::ServingThread> serving_;
};

// ----- RpcClient end to end ---------------------------------------------------------------------

template <typename Kind>
class MsgpackTcpEndToEndTest : public ::testing::Test {
 protected:
  RpcClient client(const std::string& url, Duration timeout = kDefaultWait) {
    transports_.push_back(factory_.makeTransport(url).value());
    RpcClient::Options options;
    options.timeout = timeout;
    return RpcClient::create(*transports_.back(), Target{.topic = "t"}, options).value();
  }
  TransportFactory factory_;
  std::vector<std::unique_ptr<Transport>> transports_;  // outlive the clients of a test
};

using Kinds = ::testing::Types<testing::BlockingKind, testing::EventLoopKind,
                               testing::ThreadPoolKind>;
TYPED_TEST_SUITE(MsgpackTcpEndToEndTest, Kinds);

TYPED_TEST(MsgpackTcpEndToEndTest, CallsCastsAndTypedErrors) {
  std::promise<std::string> noted;
  Endpoint ep = service();
  ep.method("note", [&](std::string s) { noted.set_value(s); });
  TcpServer<TypeParam> server({ep});
  RpcClient client = this->client(server.url());
  EXPECT_EQ(client.template call<int64_t>("add", 2, 3).value(), 5);
  EXPECT_EQ(client.template call<std::string>("echo", "hi").value(), "hi");
  Result<Value> failed = client.callValue("fail", {"boom"});
  EXPECT_CODE(failed.status(), StatusCode::kRemoteError);
  EXPECT_EQ(failed.status().message(), "boom");
  EXPECT_EQ(failed.status().remoteType(), "std::runtime_error");
  EXPECT_CODE(client.callValue("nope", {}).status(), StatusCode::kNoSuchMethod);
  EXPECT_CODE(client.callValue("add", {1}).status(), StatusCode::kBadArguments);
  ASSERT_OK(client.cast("note", "hello"));
  auto f = noted.get_future();
  ASSERT_TRUE(testing::readyWithin(f));
  EXPECT_EQ(f.get(), "hello");
}

TYPED_TEST(MsgpackTcpEndToEndTest, ManyCallsInFlightAndALargePayload) {
  TcpServer<TypeParam> server({service()});
  RpcClient client = this->client(server.url());
  constexpr int kCalls = 300;
  std::vector<boost::future<Result<Value>>> futures;
  for (int i = 0; i < kCalls; ++i) futures.push_back(client.callAsync("add", {i, i}));
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(testing::readyWithin(futures[i]));
    EXPECT_EQ(futures[i].get()->asInt(), 2 * i);
  }
  const std::string big(4 << 20, 'x');  // arrives in many reads
  EXPECT_EQ(client.template call<std::string>("echo", big).value(), big);
}

TYPED_TEST(MsgpackTcpEndToEndTest, DeadlinesHeartbeatsAndNoServer) {
  TcpServer<TypeParam> server({service()});
  RpcClient client = this->client(server.url());
  EXPECT_CODE(client.prepare({.timeout = 50ms}).callValue("later", {2000}).status(),
              StatusCode::kTimeout);
  // Heartbeats go back on the request's connection and carry a call past its monitor.
  RpcClient monitored = client.prepare({.callMonitorTimeout = 60ms});
  EXPECT_EQ(monitored.template call<int64_t>("later", 300).value(), 300);
  EXPECT_GE(monitored.stats().heartbeats, 3u);
  RpcClient nobody = this->client("msgpack+tcp://127.0.0.1:1", 200ms);  // nothing on port 1
  EXPECT_CODE(nobody.callValue("echo", {1}).status(), StatusCode::kTimeout);
}

// ----- Raw TCP peers ----------------------------------------------------------------------------

// A blocking loopback TCP socket with bounded reads: what a stock or a hostile client sends.
class RawPeer {
 public:
  explicit RawPeer(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }
  ~RawPeer() { ::close(fd_); }
  RawPeer(const RawPeer&) = delete;
  RawPeer& operator=(const RawPeer&) = delete;

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return;  // the server may have closed on us already
      bytes.remove_prefix(static_cast<size_t>(n));
    }
  }
  void shutdownWrite() { ::shutdown(fd_, SHUT_WR); }

  // The next response, read until its bytes decode (bounded).
  std::optional<ResponseMessage> response() {
    const Deadline bound = deadlineAfter(kDefaultWait);
    while (Clock::now() < bound) {
      for (size_t end = 1; end <= buffer_.size(); ++end) {
        auto decoded = decodeMessage(std::string_view(buffer_).substr(0, end));
        if (decoded) {
          buffer_.erase(0, end);
          return std::get<ResponseMessage>(decoded.message());
        }
      }
      if (!readSome(bound)) return std::nullopt;
    }
    return std::nullopt;
  }

  // True once the server closed the connection (end of file or reset) within the bound; what
  // arrives before is discarded.
  bool closedByServer() {
    const Deadline bound = deadlineAfter(kDefaultWait);
    while (readSome(bound)) {
    }
    return eof_;
  }

 private:
  // Appends what arrives; false at end of file, on an error or when `bound` passed.
  bool readSome(Deadline bound) {
    pollfd item{fd_, POLLIN, 0};
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(bound - Clock::now()).count();
    if (left <= 0 || ::poll(&item, 1, static_cast<int>(left)) <= 0) return false;
    char chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  std::string buffer_;
  bool eof_ = false;
};

class MsgpackTcpRawPeerTest : public ::testing::Test {
 protected:
  void start(MsgpackRpcTcpTransport::Options options = {}) {
    options.log = log_.sink();
    server_ = std::make_unique<TcpServer<testing::ThreadPoolKind>>(
        std::vector<Endpoint>{service()}, std::move(options));
  }
  // A good client on a connection of its own is answered.
  void expectServing() {
    RawPeer good(server_->port());
    good.send(encodeMessage(RequestMessage{77, "add", {40, 2}, {}}));
    std::optional<ResponseMessage> r = good.response();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->msgid, 77u);
    EXPECT_EQ(r->result, Value(42));
  }
  MsgpackRpcTcpTransport::Stats stats() { return server_->transport().stats(); }

  testing::LogCapture log_;
  std::unique_ptr<TcpServer<testing::ThreadPoolKind>> server_;
};

TEST_F(MsgpackTcpRawPeerTest, AStockClientPipelinesRequestsAndGetsTheDocumentedBytes) {
  start();
  RawPeer peer(server_->port());
  // The exact bytes of docs/PROTOCOL.md, split across two writes.
  const std::string request("\x94\x00\x01\xa4\x65\x63\x68\x6f\x91\xa2\x68\x69", 12);
  peer.send(request.substr(0, 5));
  peer.send(request.substr(5));
  std::optional<ResponseMessage> r = peer.response();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(encodeMessage(*r), std::string("\x94\x01\x01\xc0\xa2\x68\x69", 7));
  // Many in one write, a cast and a cancel among them: one response per request.
  std::string batch;
  for (uint32_t id = 100; id < 150; ++id) {
    batch += encodeMessage(RequestMessage{id, "add", {int64_t{id}, 1}, {}});
  }
  batch += std::string("\x93\x02\xa4\x65\x63\x68\x6f\x91\xa2\x68\x69", 11);  // [2, "echo", ["hi"]]
  batch += std::string("\x92\x04\x05", 3);                                   // [4, 5]
  peer.send(batch);
  std::set<uint32_t> seen;
  for (int i = 0; i < 50; ++i) {
    r = peer.response();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, Value(int64_t{r->msgid} + 1));
    seen.insert(r->msgid);
  }
  EXPECT_EQ(seen.size(), 50u);
  // A request whose msgid can be read is answered even when the rest is wrong.
  peer.send(std::string("\x94\x00\x09\x2a\x90", 5));  // [0, 9, 42, []]
  r = peer.response();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->msgid, 9u);
  EXPECT_CODE(r->error, StatusCode::kProtocolError);
  EXPECT_EQ(stats().badPeers, 0u);
}

TEST_F(MsgpackTcpRawPeerTest, HostilePeersAreDisconnectedAndCountedWhileOthersAreServed) {
  start();
  const std::vector<std::pair<const char*, std::string>> hostile = {
      {"not MessagePack", std::string("\xc1\xc1\xc1", 3)},
      {"plain text", "GET / HTTP/1.0\r\n\r\n"},
      {"an over-size length header", std::string("\xdb\xff\xff\xff\xff", 5)},
      {"an over-size array header", std::string("\xdd\xff\xff\xff\xff", 5)},
      {"too deep", std::string(100, '\x91')},
      {"a response sent to a server", encodeMessage(ResponseMessage{1, Status::ok(), 1})},
      {"a notification of the wrong arity", std::string("\x92\x02\xa1m", 4)},
      {"an empty array", std::string("\x90", 1)},
  };
  uint64_t expected = 0;
  for (const auto& [what, bytes] : hostile) {
    SCOPED_TRACE(what);
    RawPeer bad(server_->port());
    bad.send(bytes);
    EXPECT_TRUE(bad.closedByServer());
    EXPECT_EQ(stats().badPeers, ++expected);  // counted before the connection closed
    expectServing();
  }
  EXPECT_TRUE(log_.waitFor(LogLevel::kWarning, "disconnected a peer")) << log_.dump();
}

TEST_F(MsgpackTcpRawPeerTest, ATruncatedMessageThenCloseLeavesTheServerServing) {
  start();
  {
    RawPeer truncated(server_->port());
    const std::string request = encodeMessage(RequestMessage{1, "echo", {"hi"}, {}});
    truncated.send(request.substr(0, request.size() - 2));
    truncated.shutdownWrite();
    EXPECT_TRUE(truncated.closedByServer());
  }
  expectServing();
  EXPECT_EQ(stats().badPeers, 0u);  // a peer that went away is not a bad one
}

TEST_F(MsgpackTcpRawPeerTest, AMessageOverMaxMessageBytesDisconnects) {
  MsgpackRpcTcpTransport::Options options;
  options.maxMessageBytes = 1024;
  start(options);
  RawPeer big(server_->port());
  big.send(encodeMessage(RequestMessage{1, "echo", {std::string(2000, 'x')}, {}}));
  EXPECT_TRUE(big.closedByServer());
  EXPECT_EQ(stats().badPeers, 1u);
  expectServing();
}

TEST_F(MsgpackTcpRawPeerTest, ConnectionsBeyondTheCapAreRefusedAndCounted) {
  MsgpackRpcTcpTransport::Options options;
  options.maxConnections = 2;
  start(options);
  RawPeer first(server_->port()), second(server_->port());
  // Both are accepted once each has been answered.
  for (RawPeer* peer : {&first, &second}) {
    peer->send(encodeMessage(RequestMessage{5, "echo", {1}, {}}));
    ASSERT_TRUE(peer->response().has_value());
  }
  RawPeer third(server_->port());
  EXPECT_TRUE(third.closedByServer());
  EXPECT_EQ(stats().connectionsRefused, 1u);
  first.send(encodeMessage(RequestMessage{6, "echo", {1}, {}}));
  EXPECT_TRUE(first.response().has_value());
}

TEST_F(MsgpackTcpRawPeerTest, AnIdleConnectionIsClosedAndCounted) {
  MsgpackRpcTcpTransport::Options options;
  options.idleTimeoutMs = 200;
  start(options);
  RawPeer idle(server_->port());
  const Deadline start = Clock::now();
  EXPECT_TRUE(idle.closedByServer());
  EXPECT_GE(Clock::now() - start, 150ms);
  EXPECT_EQ(stats().idleClosed, 1u);
  expectServing();
}

// ----- Channels: link events, reconnection, back-pressure ----------------------------------------

TEST(MsgpackTcpChannelTest, LinkEventsAndReconnectionAfterTheListenerComesBack) {
  MsgpackRpcTcpTransport server("msgpack+tcp://127.0.0.1:0");
  auto listener = server.listen(Address{.topic = "t", .server = "s"}).value();
  const std::string url = server.boundEndpoint();
  MsgpackRpcTcpTransport::Options fast;
  fast.reconnectIvlMs = 10;
  fast.reconnectIvlMaxMs = 50;
  MsgpackRpcTcpTransport client(url, fast);
  testing::Events up, down, refused;
  auto channel = client
                     .openChannel({},
                                  [&](LinkEvent event, std::string_view) {
                                    (event == LinkEvent::kUp     ? up
                                     : event == LinkEvent::kDown ? down
                                                                 : refused)
                                        .add();
                                  })
                     .value();
  ASSERT_TRUE(up.waitFor(1));
  listener.reset();  // closes its connections
  ASSERT_TRUE(down.waitFor(1));
  ASSERT_TRUE(refused.waitFor(1));  // retrying while nothing listens
  MsgpackRpcTcpTransport again(url);  // the same port
  auto relistened = again.listen(Address{.topic = "t", .server = "s"});
  ASSERT_TRUE(relistened.isOk()) << relistened.status();
  ASSERT_TRUE(up.waitFor(2));
  // Requests flow on the new connection.
  ASSERT_OK(channel->send(Address{}, std::string("\x94\x00\x01\xa1m\x90", 6), deadlineAfter(kDefaultWait)));
  std::vector<IncomingPtr> in;
  ASSERT_OK((*relistened)->poll(deadlineAfter(kDefaultWait), 1, in));
  EXPECT_EQ(in.size(), 1u);
}

TEST(MsgpackTcpChannelTest, NotificationsAreNotSupported) {
  MsgpackRpcTcpTransport transport("msgpack+tcp://127.0.0.1:0");
  EXPECT_CODE(transport.publish("t", "x"), StatusCode::kInvalidState);
  EXPECT_CODE(transport.subscribe(Subscription{.topics = {"t"}, .pool = ""}).status(),
              StatusCode::kInvalidState);
}

TEST(MsgpackTcpChannelTest, AServerThatIsNotPolledStopsReadingAtTheCap) {
  testing::LogCapture log;
  MsgpackRpcTcpTransport::Options options;
  options.maxBufferedBytes = 4096;
  options.log = log.sink();
  MsgpackRpcTcpTransport server("msgpack+tcp://127.0.0.1:0", options);
  auto listener = server.listen(Address{.topic = "t", .server = "s"}).value();
  MsgpackRpcTcpTransport client(server.boundEndpoint());
  auto channel = client.openChannel({}).value();
  constexpr uint32_t kMessages = 200;  // 200 x 1 KiB: far over the cap
  for (uint32_t i = 0; i < kMessages; ++i) {
    ASSERT_OK(channel->send(Address{},
                            encodeMessage(RequestMessage{i, "echo", {std::string(1000, 'x')}, {}}),
                            deadlineAfter(kDefaultWait)));
  }
  ASSERT_TRUE(log.waitFor(LogLevel::kInfo, "paused reading")) << log.dump();
  EXPECT_EQ(server.stats().readsPaused, 1u);
  EXPECT_LT(server.stats().received, kMessages);
  // Taken one poll at a time, every message still arrives: reading resumes below the cap.
  std::vector<IncomingPtr> in;
  const Deadline bound = deadlineAfter(kDefaultWait);
  while (in.size() < kMessages && Clock::now() < bound) {
    ASSERT_OK(listener->poll(bound, 1, in));
  }
  EXPECT_EQ(in.size(), kMessages);
  EXPECT_EQ(server.stats().received, kMessages);
}

}  // namespace
}  // namespace switchboard
