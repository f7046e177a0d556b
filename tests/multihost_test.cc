// Several hosts on one machine: network namespaces that the test makes itself (NetnsLab), a
// Redis host, three switchboard-server hosts registered in it, and a client host running
// switchboard-call --registry. A server host is cut off (its link goes down, as a pulled cable)
// and the client's calls fail over within the heartbeat timeout; then the Redis host is cut off
// and the calls go on over the servers the client knows. Skipped, saying why, where namespaces
// cannot be made (not root). Every wait is bounded by a deadline on the children's output.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/netns_lab.h"
#include "tests/support/redis_server.h"
#include "tests/support/server_process.h"
#include "tests/support/test_util.h"

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::envOr;
using testing::NetnsLab;

constexpr Duration kWait = 10s;
constexpr int kPingIntervalMs = 300;
constexpr int kPingTimeoutMs = 300;
// A server that stops answering is given up at most one interval and one timeout after it went
// silent: its last ping answered just before, the next one sent an interval later and left
// unanswered for the timeout.
constexpr auto kHeartbeatTimeout = std::chrono::milliseconds(kPingIntervalMs + kPingTimeoutMs);
constexpr int kCalls = 150;

// Reads `child`'s lines until one starts with `prefix`; false at EOF or the deadline.
bool waitForLine(ChildProcess& child, const std::string& prefix, std::string* seen = nullptr) {
  const Deadline deadline = deadlineAfter(kWait);
  while (std::optional<std::string> line = child.readLine(deadline)) {
    if (line->find(prefix) != std::string::npos) return true;
    if (seen != nullptr) *seen += *line + "\n";
  }
  return false;
}

TEST(MultiHostTest, CallsFailOverWithinTheHeartbeatTimeoutWhenAServerHostIsCutOff) {
  std::string why;
  std::unique_ptr<NetnsLab> lab = NetnsLab::make(why);
  if (!lab) GTEST_SKIP() << "network namespaces unavailable: " << why;
  if (testing::skipRedisCases()) GTEST_SKIP() << "SWITCHBOARD_SKIP_REDIS=1";
  const std::string redisBinary = testing::redisServerBinary();
  ASSERT_FALSE(redisBinary.empty()) << "redis-server not found: install it (Debian: redis-server)";

  ASSERT_TRUE(lab->addHost("redis", 2));
  const std::vector<std::string> servers{"s1", "s2", "s3"};
  for (size_t i = 0; i < servers.size(); ++i) {
    ASSERT_TRUE(lab->addHost(servers[i], 11 + static_cast<int>(i)));
  }
  ASSERT_TRUE(lab->addHost("client", 20));

  const std::string registry = "redis://10.77.0.2:6379";
  ChildProcess redis(lab->inHost("redis", {redisBinary, "--bind", "10.77.0.2", "--port", "6379",
                                           "--save", "", "--appendonly", "no",
                                           "--protected-mode", "no"}));
  ASSERT_TRUE(waitForLine(redis, "Ready to accept connections")) << "redis-server did not start";

  std::map<std::string, std::unique_ptr<ChildProcess>> serverProcesses;
  for (size_t i = 0; i < servers.size(); ++i) {
    const std::string& name = servers[i];
    serverProcesses[name] = std::make_unique<ChildProcess>(lab->inHost(
        name, {envOr("SWITCHBOARD_SERVER", "switchboard-server"), "--listen",
               "tcp://10.77.0." + std::to_string(11 + i) + ":5555", "--registry", registry,
               "--topic", "lab", "--name", name, "--registry-ttl-ms", "1500", "--log-level",
               "warning"}));
    std::string said;
    ASSERT_TRUE(waitForLine(*serverProcesses[name], "registered as lab." + name, &said))
        << name << " did not register: " << said;
  }

  ChildProcess client(lab->inHost(
      "client", {envOr("SWITCHBOARD_CALL", "switchboard-call"), "--registry", registry, "--topic",
                 "lab", "--repeat", std::to_string(kCalls), "--interval-ms", "20", "--idempotent",
                 "--timeout", "5000", "--ping-interval-ms", std::to_string(kPingIntervalMs),
                 "--ping-timeout-ms", std::to_string(kPingTimeoutMs), "whoami"}));
  std::vector<std::string> answers;
  const auto nextAnswer = [&]() -> std::optional<std::string> {
    std::optional<std::string> line = client.readLine(deadlineAfter(kWait));
    if (line) answers.push_back(*line);
    return line;
  };

  // The main server answers every call (sticky); then its host is cut off.
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(nextAnswer()) << "answer " << i;
  const std::string main = answers.front();
  for (const std::string& a : answers) ASSERT_EQ(a, main) << "one main server answers";
  const std::string mainHost = main.substr(1, main.size() - 2);  // "s1" from the JSON "\"s1\""
  ASSERT_TRUE(lab->setLink(mainHost, false));
  const auto cut = Clock::now();
  std::optional<std::string> after;
  while ((after = nextAnswer()) && *after == main) {
  }
  ASSERT_TRUE(after) << "no answer after the cut";
  const size_t firstFromAnother = answers.size() - 1;
  const auto failover = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - cut);
  RecordProperty("failover_ms", static_cast<int>(failover.count()));
  // The first answer from another server comes once the silence is detected and the call is
  // replayed there: within the heartbeat timeout, plus one call's pacing and round trip.
  EXPECT_LE(failover, kHeartbeatTimeout + 200ms) << "failed over after " << failover.count() << " ms";

  // Redis goes too: the client keeps the servers it knows.
  ASSERT_TRUE(lab->setLink("redis", false));
  while (nextAnswer()) {
  }
  EXPECT_EQ(client.waitExit(deadlineAfter(kWait)), 0) << "every call succeeded";
  EXPECT_EQ(answers.size(), static_cast<size_t>(kCalls));
  for (size_t i = firstFromAnother; i < answers.size(); ++i) {
    if (answers[i] == main) {
      ADD_FAILURE() << "answer " << i << " came from the server that was cut off";
      break;
    }
  }
}

}  // namespace
}  // namespace switchboard
