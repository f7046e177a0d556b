// switchboard-server as a child process, driven by switchboard-call, by raw ZeroMQ peers sending
// hostile input thousands of times, and by the Python interop client of tests/interop/; CURVE
// keys from switchboard-keygen.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "messaging/detail/wire.h"
#include "tests/support/sanitizers.h"
#include "tests/support/server_process.h"

namespace switchboard {
namespace {

using detail::decodeMessage;
using detail::encodeMessage;
using detail::RequestMessage;
using detail::ResponseMessage;

using testing::ChildProcess;
using testing::envOr;
using testing::ServerProcess;
using testing::TempDir;

struct CommandResult {
  int exitCode = -1;
  std::string out;
};

// Runs a shell command line, capturing stdout (stderr to stdout with 2>&1 in `command`).
CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class ToolsProcessTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string call(const std::string& url, const std::string& args) {
    return envOr("SWITCHBOARD_CALL", "switchboard-call") + " --connect " + url + " " + args;
  }
  void expectCliOutcomes(const std::string& url);
  // A DEALER connected to `url`: no linger, receives time out after 10 s.
  static zmq::socket_t dealerTo(zmq::context_t& context, const std::string& url) {
    zmq::socket_t dealer(context, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.set(zmq::sockopt::rcvtimeo, 10000);
    dealer.connect(url);
    return dealer;
  }
};

// switchboard-call against a server at `url`: results, typed errors and their exit codes.
void ToolsProcessTest::expectCliOutcomes(const std::string& url) {
  ServerProcess server(GetParam(), url);
  ASSERT_FALSE(server.url().empty()) << "server did not print its endpoint";
  auto r = run(call(server.url(), "echo '\"hi\"'"));
  EXPECT_EQ(r.exitCode, 0);
  EXPECT_EQ(r.out, "\"hi\"\n");
  r = run(call(server.url(), "add 2 3"));
  EXPECT_EQ(r.out, "5\n");
  r = run(call(server.url(), "echo '{\"a\":[1,2.5,null,true]}'"));
  EXPECT_EQ(r.out, "{\"a\":[1,2.5,null,true]}\n");
  r = run(call(server.url(), "fail '\"boom\"' 2>&1"));
  EXPECT_EQ(r.exitCode, 4);
  EXPECT_NE(r.out.find("\"code\":\"RemoteError\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("boom"), std::string::npos);
  r = run(call(server.url(), "--timeout 200 sleep 5000 2>&1"));
  EXPECT_EQ(r.exitCode, 3) << r.out;
  r = run(call(server.url(), "add 1 2>&1"));
  EXPECT_EQ(r.exitCode, 4);
  EXPECT_NE(r.out.find("BadArguments"), std::string::npos);
  r = run(call(server.url(), "echo '{bad json' 2>&1"));
  EXPECT_EQ(r.exitCode, 2);
  r = run(call(server.url(), "--cast echo 1"));
  EXPECT_EQ(r.exitCode, 0);
  r = run(call(server.url(), "_health"));
  EXPECT_EQ(r.out, "\"serving\"\n");
  r = run(call(server.url(), "_introspect"));
  EXPECT_NE(r.out.find("sleep(ms: integer)"), std::string::npos) << r.out;
  EXPECT_EQ(server.terminate(), 0);
}

TEST_P(ToolsProcessTest, CliCallsTheServerAndReportsTypedErrors) {
  expectCliOutcomes("tcp://127.0.0.1:0");
}

TEST_P(ToolsProcessTest, CliCallsTheServerOverMsgpackTcp) {
  expectCliOutcomes("msgpack+tcp://127.0.0.1:0");
}

TEST_P(ToolsProcessTest, SigtermDrainsCallsInFlight) {
  ServerProcess server(GetParam());
  ASSERT_FALSE(server.url().empty());
  zmq::context_t context;
  zmq::socket_t dealer = dealerTo(context, server.url());
  dealer.send(zmq::buffer(encodeMessage(RequestMessage{1, "sleep", {300}, {}})));
  // The call is in flight once an echo sent after it has been answered (one connection, one
  // receiving thread: the sleep was taken first).
  dealer.send(zmq::buffer(encodeMessage(RequestMessage{2, "echo", {1}, {}})));
  zmq::message_t reply;
  ASSERT_TRUE(dealer.recv(reply).has_value());
  server.kill(SIGTERM);
  ASSERT_TRUE(dealer.recv(reply).has_value()) << "the in-flight sleep was not answered";
  auto decoded = decodeMessage(reply.to_string_view());
  ASSERT_TRUE(decoded.isOk());
  const auto& response = std::get<ResponseMessage>(decoded.message());
  EXPECT_EQ(response.msgid, 1u);
  EXPECT_EQ(response.result, Value(300));
  EXPECT_EQ(server.terminate(), 0);
}

// --drain-seconds counts after the refuse period: a refuse period longer than it is not a
// drain that timed out (exit 1), and the exit waits for the period.
TEST_P(ToolsProcessTest, SigtermWithARefusePeriodLongerThanTheDrainExitsZeroAfterIt) {
  ServerProcess server(GetParam(), "tcp://127.0.0.1:0",
                       {"--drain-seconds", "1", "--refuse-after-stop-ms", "1500"});
  ASSERT_FALSE(server.url().empty());
  const Deadline stopped = Clock::now();
  EXPECT_EQ(server.terminate(), 0);
  EXPECT_GE(Clock::now() - stopped, std::chrono::milliseconds(1500));
}

TEST_P(ToolsProcessTest, SurvivesHostileInputWithBoundedMemory) {
  ServerProcess server(GetParam());
  ASSERT_FALSE(server.url().empty());
  zmq::context_t context;
  zmq::socket_t dealer = dealerTo(context, server.url());
  dealer.set(zmq::sockopt::sndtimeo, 10000);
  auto echoWorks = [&](uint32_t id) {
    dealer.send(zmq::buffer(encodeMessage(RequestMessage{id, "echo", {"ok"}, {}})));
    for (;;) {  // skip the error replies to the hostile requests that had a msgid
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(dealer, std::back_inserter(frames))) return false;
      auto decoded = decodeMessage(frames.back().to_string_view());
      if (!decoded) return false;
      const auto& r = std::get<ResponseMessage>(decoded.message());
      if (r.msgid == id) return r.error.isOk() && r.result == Value("ok");
    }
  };
  ASSERT_TRUE(echoWorks(1'000'000));

  const std::string hugeName(1 << 20, 'm');
  const std::vector<std::string> hostile = {
      std::string("\xc1", 1),                       // a never-used byte
      std::string("\xdd\xff\xff\xff\xff", 5),       // array32 claiming 4G elements
      std::string(100000, '\x91'),                  // 100,000-deep nesting
      std::string(17 << 20, 'x').substr(0, 0) + std::string("\x94\x00\x01", 3),  // truncated
      encodeMessage(RequestMessage{5, "add", {1}, {}}),                     // wrong arity
      std::string("\x94\xa1x\xa4\x65\x63\x68\x6f\x90", 9),           // msgid not an integer
      std::string("\x93\x07\x01\x02", 4),                            // unknown kind 7
      encodeMessage(RequestMessage{6, hugeName, {}, {}}),            // 1 MB method name
  };
  // The first rounds warm the allocator and ZeroMQ's buffers up; after them, thousands more
  // rounds must not grow the server: memory is bounded, not proportional to the input.
  constexpr int kWarmUpRounds = 500;
  constexpr int kRounds = 4000;
  long before = -1;
  for (int round = 0; round < kRounds; ++round) {
    for (const std::string& bytes : hostile) {
      // The 1 MB name is sent less often: it is the slowest to move, not the most telling.
      if (bytes.size() > 100000 && round % 50 != 0) continue;
      ASSERT_TRUE(dealer.send(zmq::buffer(bytes)).has_value());
    }
    if (round % 100 == 99) {
      ASSERT_TRUE(echoWorks(round));  // paces the sender
    }
    if (round == kWarmUpRounds) before = server.rssKiB();
  }
  ASSERT_TRUE(echoWorks(2'000'000));
  const long after = server.rssKiB();
#ifndef SWITCHBOARD_SANITIZED_ALLOCATOR  // there the quarantine fills: judged in plain builds
  EXPECT_LT(after - before, 10 * 1024) << "RSS grew from " << before << " to " << after << " KiB";
#endif
  std::cerr << "RSS " << before << " -> " << after << " KiB\n";
  EXPECT_EQ(server.terminate(), 0);
}

// The stats written at exit count every call by method and outcome, and drops by reason.
TEST_P(ToolsProcessTest, StatsFileHoldsCallsByMethodAndOutcomeAndDropsByReasonAtExit) {
  TempDir temp;
  const std::string statsFile = temp.path() + "/stats.json";
  ServerProcess server(GetParam(), "tcp://127.0.0.1:0",
                       {"--stats-file", statsFile, "--log-level", "warning"});
  ASSERT_FALSE(server.url().empty());
  EXPECT_EQ(run(call(server.url(), "echo 1")).exitCode, 0);
  EXPECT_EQ(run(call(server.url(), "echo 2")).exitCode, 0);
  EXPECT_EQ(run(call(server.url(), "fail '\"x\"' 2>/dev/null")).exitCode, 4);
  zmq::context_t context;
  zmq::socket_t dealer = dealerTo(context, server.url());
  dealer.send(zmq::buffer(std::string("\xc1", 1)));  // no msgid to answer: dropped
  dealer.send(zmq::buffer(encodeMessage(RequestMessage{1, "echo", {1}, {}})));
  zmq::message_t reply;
  ASSERT_TRUE(dealer.recv(reply).has_value());  // the drop was counted before this answer
  EXPECT_EQ(server.terminate(), 0);
  const std::string stats = readFile(statsFile);
  EXPECT_NE(stats.find(R"("echo":{"outcomes":{"Ok":3})"), std::string::npos) << stats;
  EXPECT_NE(stats.find(R"("fail":{"outcomes":{"RemoteError":1})"), std::string::npos) << stats;
  EXPECT_NE(stats.find(R"("drops":{"malformed":1})"), std::string::npos) << stats;
  EXPECT_NE(stats.find(R"("in_flight":0)"), std::string::npos) << stats;
}

TEST_P(ToolsProcessTest, PythonClientWrittenFromTheProtocolDoc) {
  const std::string script =
      std::string(SWITCHBOARD_SOURCE_ROOT) + "/tests/interop/zmq_client.py";
  ASSERT_EQ(::access("/usr/bin/python3", X_OK), 0)
      << "needs /usr/bin/python3 with python3-zmq and python3-msgpack (.ci/packages.txt)";
  auto r = run("/usr/bin/python3 " + script + " " +
               envOr("SWITCHBOARD_SERVER", "switchboard-server") + " " + GetParam() + " 2>&1");
  EXPECT_EQ(r.exitCode, 0) << r.out;
}

// A stock MessagePack-RPC client (python3-pynvim's session) over msgpack+tcp://.
TEST_P(ToolsProcessTest, PynvimClientOverMsgpackTcp) {
  const std::string script =
      std::string(SWITCHBOARD_SOURCE_ROOT) + "/tests/interop/pynvim_client.py";
  // CI installs python3-pynvim (.ci/packages.txt): missing, the case fails rather than skips.
  ASSERT_TRUE(::access("/usr/bin/python3", X_OK) == 0 &&
              run("/usr/bin/python3 -c 'import pynvim.msgpack_rpc' 2>&1").exitCode == 0)
      << "needs /usr/bin/python3 with Debian's python3-pynvim";
  auto r = run("/usr/bin/python3 " + script + " " +
               envOr("SWITCHBOARD_SERVER", "switchboard-server") + " " + GetParam() + " 2>&1");
  EXPECT_EQ(r.exitCode, 0) << r.out;
}

INSTANTIATE_TEST_SUITE_P(Executors, ToolsProcessTest,
                         ::testing::Values("threadpool", "blocking", "eventloop"));

// keygen makes the keys, the server admits the allow-listed client only.
TEST(ToolsCurveProcessTest, KeygenServerAndCallWithKeys) {
  TempDir temp;
  const std::string& dir = temp.path();
  const std::string keygen = envOr("SWITCHBOARD_KEYGEN", "switchboard-keygen");
  for (const char* name : {"server", "client", "stranger"}) {
    auto r = run(keygen + " " + dir + "/" + name);
    ASSERT_EQ(r.exitCode, 0) << r.out;
    EXPECT_EQ(r.out.size(), 41u) << r.out;  // the public key and a newline
  }
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/client.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(run(keygen + " " + dir + "/client 2>&1").exitCode, 0) << "replaced a key file";
  {
    std::ifstream pub(dir + "/client.pub");
    std::string key;
    pub >> key;
    std::ofstream(dir + "/allowed") << "# the clients admitted\n" << key << "  # client\n";
  }

  ChildProcess server({envOr("SWITCHBOARD_SERVER", "switchboard-server"), "--listen",
                       "tcp://127.0.0.1:0", "--curve-secret", dir + "/server.key",
                       "--allow-clients", dir + "/allowed"});
  const std::string prefix = "listening on ";
  std::optional<std::string> line = server.readLine(deadlineAfter(testing::kDefaultWait));
  ASSERT_TRUE(line && line->rfind(prefix, 0) == 0) << "server did not start";
  const std::string url = line->substr(prefix.size());
  auto call = [&](const std::string& args) {
    return run(envOr("SWITCHBOARD_CALL", "switchboard-call") + " --connect " + url + " " + args);
  };
  const std::string serverKey = " --curve-server-key " + dir + "/server.pub";
  auto r = call(serverKey + " --curve-secret " + dir + "/client.key echo '\"hi\"'");
  EXPECT_EQ(r.exitCode, 0) << r.out;
  EXPECT_EQ(r.out, "\"hi\"\n");
  // Refused: never answered, so the calls time out (exit 3).
  r = call(serverKey + " --curve-secret " + dir + "/stranger.key --timeout 300 echo 1 2>&1");
  EXPECT_EQ(r.exitCode, 3) << r.out;
  r = call("--timeout 300 echo 1 2>&1");  // plain
  EXPECT_EQ(r.exitCode, 3) << r.out;
  // A file that is not a key is a usage error (exit 2).
  r = call("--curve-server-key " + dir + "/allowed --curve-secret " + dir +
           "/client.key echo 1 2>&1");
  EXPECT_EQ(r.exitCode, 2) << r.out;
  EXPECT_NE(r.out.find("not a Z85 key file"), std::string::npos) << r.out;

  server.kill(SIGTERM);
  EXPECT_EQ(server.waitExit(deadlineAfter(testing::kDefaultWait)), 0);
}

TEST(ToolsNotificationTest, CliNotifyReachesCliListenThroughTheServersBroker) {
  using namespace std::chrono_literals;
  ServerProcess server("threadpool", "tcp://127.0.0.1:0",
                       {"--notification-broker", "tcp://127.0.0.1:0"});
  ASSERT_FALSE(server.url().empty()) << "the server did not start";
  const std::string prefix = "notification broker on ";
  std::optional<std::string> line = server.process().readLine(deadlineAfter(10s));
  ASSERT_TRUE(line && line->rfind(prefix, 0) == 0) << line.value_or("(nothing)");
  const std::string broker = line->substr(prefix.size());
  ChildProcess listener({envOr("SWITCHBOARD_CALL", "switchboard-call"), "listen", "--connect",
                         broker, "--topic", "ops", "--priority", "warn", "--count", "1",
                         "--timeout", "20000"});
  // A listener gets what is published after its subscription reached the broker, which nothing
  // reports: publish until one arrives (each wait bounded), as a late PUB/SUB subscriber would.
  std::optional<std::string> received;
  for (int attempt = 0; attempt < 50 && !received; ++attempt) {
    const std::string notify = envOr("SWITCHBOARD_CALL", "switchboard-call") +
                               " notify --connect " + broker +
                               " --topic ops --priority warn --event-type disk.low "
                               "--publisher-id host1 '{\"free\":3}'";
    ASSERT_EQ(run(notify).exitCode, 0);
    received = listener.readLine(deadlineAfter(200ms));
  }
  ASSERT_TRUE(received) << "no notification reached the listener";
  for (const char* field : {"\"publisher_id\":\"host1\"", "\"event_type\":\"disk.low\"",
                            "\"priority\":\"warn\"", "\"payload\":{\"free\":3}"}) {
    EXPECT_NE(received->find(field), std::string::npos) << field << " in " << *received;
  }
  EXPECT_EQ(listener.waitExit(deadlineAfter(10s)).value_or(-1), 0) << "--count 1 ends it";
  EXPECT_EQ(server.terminate(), 0);
}

}  // namespace
}  // namespace switchboard
