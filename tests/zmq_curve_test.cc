// CURVE over the ZeroMQ transport, on tcp loopback: the ZAP handler admits the allow-listed
// clients (whose key reaches handlers as CallContext::identity()) and refuses the others; key
// files.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <zmq.hpp>

#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "tests/support/executor_kinds.h"
#include "tests/support/test_util.h"
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;

constexpr auto kWait = 10s;           // the bound of every wait expected to succeed
constexpr auto kRefusedWait = 300ms;  // a call expected to time out (refused, never served)

CurveKeyPair keyPair() { return makeCurveKeyPair().value(); }

// whoami answers the caller's authenticated identity; every call is counted.
Endpoint service(std::atomic<int>& calls) {
  Endpoint ep;
  ep.method("whoami", [&calls](CallContext& ctx) {
    ++calls;
    return std::string(ctx.identity());
  });
  return ep;
}

// A server on tcp://127.0.0.1:* with its own transport, stopped and waited for on destruction.
template <typename Kind = testing::ThreadPoolKind>
class Served {
 public:
  Served(ZmqContext& context, ZmqTransport::Options options, std::atomic<int>& calls)
      : transport_(context, "tcp://127.0.0.1:*", std::move(options)),
        server_(transport_, Target{.topic = "t", .server = "s"}, RpcDispatcher({service(calls)}),
                Kind::make()) {}
  ~Served() {
    if (!started_) return;
    server_.stop();
    EXPECT_OK(server_.wait(deadlineAfter(kWait)));
    serving_.reset();
  }
  Status start() {
    Status s = server_.start();
    if (s) {
      started_ = true;
      serving_ = std::make_unique<testing::ServingThread>(server_, Kind::kBlocking);
    }
    return s;
  }
  std::string url() const { return transport_.boundEndpoint(); }
  ZmqTransport& transport() { return transport_; }

 private:
  ZmqTransport transport_;
  MessageHandlingServer server_;
  std::unique_ptr<testing::ServingThread> serving_;
  bool started_ = false;
};

ZmqTransport::Options curveServerOptions(const CurveKeyPair& server, std::set<std::string> allowed,
                                         LogSink log) {
  ZmqTransport::Options o;
  o.curveSecretKey = server.secretKey;
  o.allowedClientKeys = std::move(allowed);
  o.log = std::move(log);
  return o;
}

// A client of `serverPublicKey` with the secret of `client` (its public key is derived).
ZmqTransport::Options curveClientOptions(const std::string& serverPublicKey,
                                         const CurveKeyPair& client, LogSink log) {
  ZmqTransport::Options o;
  o.curveServerKey = serverPublicKey;
  o.curveSecretKey = client.secretKey;
  o.log = std::move(log);
  return o;
}

RpcClient clientOf(Transport& transport, Duration timeout) {
  RpcClient::Options options;
  options.timeout = timeout;
  return RpcClient::create(transport, Target{.topic = "t"}, options).value();
}

// Declared first in every test, so it outlives the transports that log to it.
class ZmqCurveTest : public ::testing::Test {
 protected:
  testing::LogCapture log_;
  TransportFactory factory_;
  std::atomic<int> calls_{0};
  const CurveKeyPair serverKeys_ = keyPair();
};

// ----- Admitted and refused clients -------------------------------------------------------------

template <typename Kind>
class ZmqCurveAdmitTest : public ZmqCurveTest {};
using Kinds =
    ::testing::Types<testing::BlockingKind, testing::EventLoopKind, testing::ThreadPoolKind>;
TYPED_TEST_SUITE(ZmqCurveAdmitTest, Kinds);

TYPED_TEST(ZmqCurveAdmitTest, KnownClientsAreServedAndHandlersSeeTheirKeys) {
  const CurveKeyPair alice = keyPair(), bob = keyPair();
  Served<TypeParam> served(
      this->factory_.zmqContext(),
      curveServerOptions(this->serverKeys_, {alice.publicKey, bob.publicKey}, this->log_.sink()),
      this->calls_);
  ASSERT_OK(served.start());
  for (const CurveKeyPair* who : {&alice, &bob}) {
    auto transport =
        this->factory_
            .makeTransport(served.url(),
                           curveClientOptions(this->serverKeys_.publicKey, *who, this->log_.sink()))
            .value();
    RpcClient client = clientOf(*transport, kWait);
    EXPECT_EQ(client.template call<std::string>("whoami").value(), who->publicKey);
  }
  EXPECT_EQ(this->calls_.load(), 2);
  EXPECT_EQ(served.transport().stats().authRefused, 0u) << this->log_.dump();
}

TEST_F(ZmqCurveTest, PlainServersHaveNoIdentity) {
  Served<> served(factory_.zmqContext(), ZmqTransport::Options{}, calls_);
  ASSERT_OK(served.start());
  auto transport = factory_.makeTransport(served.url()).value();
  EXPECT_EQ(clientOf(*transport, kWait).call<std::string>("whoami").value(), "");
}

TEST_F(ZmqCurveTest, UnknownClientIsRefusedLoggedAndNeverServed) {
  const CurveKeyPair known = keyPair(), stranger = keyPair();
  Served<> served(factory_.zmqContext(),
                  curveServerOptions(serverKeys_, {known.publicKey}, log_.sink()), calls_);
  ASSERT_OK(served.start());
  auto transport = factory_
                       .makeTransport(served.url(), curveClientOptions(serverKeys_.publicKey,
                                                                       stranger, log_.sink()))
                       .value();
  // Its channel learns of the refusal from the handshake.
  testing::Events refused;
  std::mutex mutex;
  std::string detail;  // guarded by mutex
  auto channel = transport->openChannel(ReplyCallback(), [&](LinkEvent event, std::string_view d) {
    if (event != LinkEvent::kRefused) return;
    std::lock_guard<std::mutex> lock(mutex);
    detail = d;
    refused.add();
  });
  ASSERT_OK(channel.status());
  ASSERT_TRUE(refused.waitFor(1, kWait));
  {
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_NE(detail.find("authentication refused"), std::string::npos) << detail;
  }
  // The server logged why, and from where.
  ASSERT_TRUE(log_.waitFor(LogLevel::kWarning, "not in the allow-list", kWait)) << log_.dump();
  const std::string logged = log_.dump();
  EXPECT_NE(logged.find("[zap] refused a client: "), std::string::npos) << logged;
  EXPECT_NE(logged.find("client_key=" + stranger.publicKey), std::string::npos) << logged;
  EXPECT_NE(logged.find("address=127.0.0.1"), std::string::npos) << logged;
  EXPECT_GE(served.transport().stats().authRefused, 1u);
  // Its calls never reach the handler.
  EXPECT_CODE(clientOf(*transport, kRefusedWait).callValue("whoami", {}).status(),
              StatusCode::kTimeout);
  EXPECT_EQ(calls_.load(), 0);
  // A known client of the same server still gets through.
  auto knownTransport = factory_
                            .makeTransport(served.url(), curveClientOptions(serverKeys_.publicKey,
                                                                            known, log_.sink()))
                            .value();
  EXPECT_EQ(clientOf(*knownTransport, kWait).call<std::string>("whoami").value(), known.publicKey);
}

TEST_F(ZmqCurveTest, PlainClientOfACurveServerIsRefused) {
  const CurveKeyPair known = keyPair();
  Served<> served(factory_.zmqContext(),
                  curveServerOptions(serverKeys_, {known.publicKey}, log_.sink()), calls_);
  ASSERT_OK(served.start());
  ZmqTransport::Options plain;
  plain.log = log_.sink();
  auto transport = factory_.makeTransport(served.url(), plain).value();
  testing::Events refused, up;
  auto channel = transport->openChannel(ReplyCallback(), [&](LinkEvent event, std::string_view) {
    if (event == LinkEvent::kRefused) refused.add();
    if (event == LinkEvent::kUp) up.add();
  });
  ASSERT_OK(channel.status());
  ASSERT_TRUE(refused.waitFor(1, kWait));
  EXPECT_CODE(clientOf(*transport, kRefusedWait).callValue("whoami", {}).status(),
              StatusCode::kTimeout);
  EXPECT_EQ(calls_.load(), 0);
  EXPECT_EQ(up.count(), 0);
}

TEST_F(ZmqCurveTest, AllowListsArePerServer) {
  const CurveKeyPair alice = keyPair(), bob = keyPair();
  const CurveKeyPair otherServerKeys = keyPair();
  std::atomic<int> otherCalls{0};
  // Two servers of one context share its ZAP handler, each with its own list.
  Served<> forAlice(factory_.zmqContext(),
                    curveServerOptions(serverKeys_, {alice.publicKey}, log_.sink()), calls_);
  Served<> forBob(factory_.zmqContext(),
                  curveServerOptions(otherServerKeys, {bob.publicKey}, log_.sink()), otherCalls);
  ASSERT_OK(forAlice.start());
  ASSERT_OK(forBob.start());
  auto aliceToHers = factory_
                         .makeTransport(forAlice.url(), curveClientOptions(serverKeys_.publicKey,
                                                                           alice, log_.sink()))
                         .value();
  auto bobToHis = factory_
                      .makeTransport(forBob.url(), curveClientOptions(otherServerKeys.publicKey,
                                                                      bob, log_.sink()))
                      .value();
  auto aliceToBobs = factory_
                         .makeTransport(forBob.url(), curveClientOptions(otherServerKeys.publicKey,
                                                                         alice, log_.sink()))
                         .value();
  EXPECT_EQ(clientOf(*aliceToHers, kWait).call<std::string>("whoami").value(), alice.publicKey);
  EXPECT_EQ(clientOf(*bobToHis, kWait).call<std::string>("whoami").value(), bob.publicKey);
  EXPECT_CODE(clientOf(*aliceToBobs, kRefusedWait).callValue("whoami", {}).status(),
              StatusCode::kTimeout);
  EXPECT_EQ(otherCalls.load(), 1);
  EXPECT_GE(forBob.transport().stats().authRefused, 1u) << log_.dump();
  EXPECT_EQ(forAlice.transport().stats().authRefused, 0u) << log_.dump();
}

// ----- Starting and stopping the ZAP handler ----------------------------------------------------

TEST_F(ZmqCurveTest, CurveServerRefusesToStartWhenItsZapHandlerCannotRun) {
  // Someone else owns the ZAP endpoint of the context: our handler cannot bind it.
  zmq::socket_t squatter(*static_cast<zmq::context_t*>(factory_.zmqContext().handle()),
                         zmq::socket_type::rep);
  squatter.set(zmq::sockopt::linger, 0);
  squatter.bind("inproc://zeromq.zap.01");
  const CurveKeyPair known = keyPair();
  Served<> served(factory_.zmqContext(),
                  curveServerOptions(serverKeys_, {known.publicKey}, log_.sink()), calls_);
  const Status started = served.start();
  EXPECT_CODE(started, StatusCode::kUnauthorized);
  EXPECT_NE(started.message().find("ZAP handler"), std::string::npos) << started;
  // A plain server of the same context does not need it.
  Served<> plain(factory_.zmqContext(), ZmqTransport::Options{}, calls_);
  EXPECT_OK(plain.start());
}

TEST_F(ZmqCurveTest, MalformedCurveOptionsAreRefused) {
  const CurveKeyPair client = keyPair();
  auto listenWith = [&](ZmqTransport::Options o) {
    ZmqTransport transport(factory_.zmqContext(), "tcp://127.0.0.1:*", std::move(o));
    return transport.listen(Target{.topic = "t", .server = "s"}.address()).status();
  };
  ZmqTransport::Options o = curveServerOptions(serverKeys_, {client.publicKey}, log_.sink());
  o.curveSecretKey = "too short";
  EXPECT_CODE(listenWith(o), StatusCode::kInvalidTarget);
  o = curveServerOptions(serverKeys_, {}, log_.sink());
  EXPECT_CODE(listenWith(o), StatusCode::kInvalidTarget) << "an empty allow-list admits no one";
  o = curveServerOptions(serverKeys_, {client.publicKey, std::string(40, '~')}, log_.sink());
  EXPECT_CODE(listenWith(o), StatusCode::kInvalidTarget);

  auto openWith = [&](ZmqTransport::Options options) {
    ZmqTransport transport(factory_.zmqContext(), "tcp://127.0.0.1:1", std::move(options));
    return transport.openChannel(ReplyCallback()).status();
  };
  o = curveClientOptions("not a key", client, log_.sink());
  EXPECT_CODE(openWith(o), StatusCode::kInvalidTarget);
  o = curveClientOptions(serverKeys_.publicKey, client, log_.sink());
  o.curveSecretKey.clear();
  EXPECT_CODE(openWith(o), StatusCode::kInvalidTarget);
  o = curveClientOptions(serverKeys_.publicKey, client, log_.sink());
  o.curvePublicKey = serverKeys_.publicKey;  // not the client's
  EXPECT_CODE(openWith(o), StatusCode::kInvalidTarget);
  o.curvePublicKey = client.publicKey;
  EXPECT_OK(openWith(o));
}

TEST(ZmqCurveContextTest, DestroyingTheContextJoinsTheZapHandler) {
  const size_t before = testing::countEntries("/proc/self/task");
  {
    testing::LogCapture log;
    TransportFactory factory;
    std::atomic<int> calls{0};
    const CurveKeyPair server = keyPair(), client = keyPair();
    Served<> served(factory.zmqContext(),
                    curveServerOptions(server, {client.publicKey}, log.sink()), calls);
    ASSERT_OK(served.start());
    auto transport =
        factory
            .makeTransport(served.url(), curveClientOptions(server.publicKey, client, log.sink()))
            .value();
    EXPECT_EQ(clientOf(*transport, kWait).call<std::string>("whoami").value(), client.publicKey);
    EXPECT_GT(testing::countEntries("/proc/self/task"), before);
  }
  EXPECT_EQ(testing::threadsSettledTo(before), before);
}

// ----- Keys and key files -----------------------------------------------------------------------

// A fresh directory, removed with what it holds on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "switchboard-curve-XXXXXX");
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  bool ok() const { return !path_.empty(); }

 private:
  std::filesystem::path path_;
};

void writeText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

unsigned modeOf(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<unsigned>(st.st_mode & 07777) : 0u;
}

TEST(CurveKeyTest, KeysAndDerivedPublicKeys) {
  const CurveKeyPair pair = keyPair();
  EXPECT_TRUE(isZ85Key(pair.publicKey));
  EXPECT_TRUE(isZ85Key(pair.secretKey));
  EXPECT_NE(pair.publicKey, pair.secretKey);
  EXPECT_EQ(curvePublicKeyOf(pair.secretKey).value(), pair.publicKey);
  EXPECT_CODE(curvePublicKeyOf("short").status(), StatusCode::kInvalidTarget);
  EXPECT_FALSE(isZ85Key(std::string(40, '~')));  // '~' is not a Z85 character
  EXPECT_FALSE(isZ85Key(pair.publicKey + "0"));
}

TEST(CurveKeyTest, KeyFilesRoundTrip) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const CurveKeyPair pair = keyPair();
  ASSERT_OK(writeZ85KeyFile(dir.file("k.key"), pair.secretKey, 0600));
  ASSERT_OK(writeZ85KeyFile(dir.file("k.pub"), pair.publicKey, 0644));
  EXPECT_EQ(modeOf(dir.file("k.key")), 0600u);
  EXPECT_EQ(modeOf(dir.file("k.pub")), 0644u);
  EXPECT_EQ(readZ85KeyFile(dir.file("k.key")).value(), pair.secretKey);
  EXPECT_EQ(readZ85KeyFile(dir.file("k.pub")).value(), pair.publicKey);
  std::ifstream in(dir.file("k.pub"));
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text, pair.publicKey + "\n");
  // A key file is never replaced.
  EXPECT_CODE(writeZ85KeyFile(dir.file("k.key"), keyPair().secretKey, 0600),
              StatusCode::kTransportError);
  EXPECT_EQ(readZ85KeyFile(dir.file("k.key")).value(), pair.secretKey);
  EXPECT_CODE(writeZ85KeyFile(dir.file("bad.key"), "not a key", 0600), StatusCode::kInvalidTarget);
}

TEST(CurveKeyTest, BadKeyFilesGiveTypedErrors) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string key = keyPair().publicKey;
  EXPECT_CODE(readZ85KeyFile(dir.file("missing")).status(), StatusCode::kTransportError);
  writeText(dir.file("empty"), "");
  EXPECT_CODE(readZ85KeyFile(dir.file("empty")).status(), StatusCode::kInvalidTarget);
  writeText(dir.file("short"), key.substr(0, 39) + "\n");
  EXPECT_CODE(readZ85KeyFile(dir.file("short")).status(), StatusCode::kInvalidTarget);
  writeText(dir.file("two"), key + "\n" + key + "\n");
  EXPECT_CODE(readZ85KeyFile(dir.file("two")).status(), StatusCode::kInvalidTarget);
  writeText(dir.file("alphabet"), std::string(40, '~') + "\n");
  EXPECT_CODE(readZ85KeyFile(dir.file("alphabet")).status(), StatusCode::kInvalidTarget);
  writeText(dir.file("huge"), std::string(1 << 16, 'a'));
  EXPECT_CODE(readZ85KeyFile(dir.file("huge")).status(), StatusCode::kInvalidTarget);
  writeText(dir.file("crlf"), "  " + key + "\r\n");  // surrounding blanks are fine
  EXPECT_EQ(readZ85KeyFile(dir.file("crlf")).value(), key);
}

TEST(CurveKeyTest, AllowListFiles) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string a = keyPair().publicKey, b = keyPair().publicKey;
  writeText(dir.file("allowed"), "# clients\n" + a + "  # alice\n\n   \n" + b + "\n" + a + "\n");
  EXPECT_EQ(readZ85KeyListFile(dir.file("allowed")).value(), (std::set<std::string>{a, b}));
  // '#' is a Z85 character, but no key starts with it: a comment after a key needs a blank.
  EXPECT_FALSE(isZ85Key("#" + a.substr(1)));
  writeText(dir.file("glued"), a + "#not-a-comment\n");
  EXPECT_CODE(readZ85KeyListFile(dir.file("glued")).status(), StatusCode::kInvalidTarget);
  writeText(dir.file("none"), "# nobody yet\n");
  EXPECT_TRUE(readZ85KeyListFile(dir.file("none")).value().empty());
  writeText(dir.file("bad"), a + "\n# fine\nnot-a-key\n");
  const Status bad = readZ85KeyListFile(dir.file("bad")).status();
  EXPECT_CODE(bad, StatusCode::kInvalidTarget);
  EXPECT_NE(bad.message().find(":3:"), std::string::npos) << bad;
  EXPECT_CODE(readZ85KeyListFile(dir.file("missing")).status(), StatusCode::kTransportError);
}

}  // namespace
}  // namespace switchboard
