// RedisServer: a redis-server child on a loopback port for the registry tests (no persistence),
// waited for with deadlines, killed and restarted on the same port. Header-only.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "base/deadline.h"
#include "tests/support/server_process.h"
#include "tests/support/test_util.h"

namespace switchboard::testing {

// The redis-server to run: $SWITCHBOARD_REDIS_SERVER, else the first one on PATH; empty if it
// is not an executable.
inline std::string redisServerBinary() {
  if (const char* set = std::getenv("SWITCHBOARD_REDIS_SERVER")) {
    return ::access(set, X_OK) == 0 ? std::string(set) : std::string();
  }
  std::istringstream path(envOr("PATH", ""));
  for (std::string dir; std::getline(path, dir, ':');) {
    const std::filesystem::path candidate = std::filesystem::path(dir) / "redis-server";
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

// True when SWITCHBOARD_SKIP_REDIS=1: the Redis cases are skipped instead of failing.
inline bool skipRedisCases() { return envOr("SWITCHBOARD_SKIP_REDIS", "") == "1"; }

// The first line of the reply to an inline command (e.g. "PING" -> "+PONG", "ZCARD k" -> ":1")
// from the Redis server on 127.0.0.1:`port`; nullopt if none came by `deadline`.
inline std::optional<std::string> redisInlineCommand(int port, const std::string& command,
                                                     Deadline deadline) {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return std::nullopt;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::optional<std::string> line;
  const std::string request = command + "\r\n";
  // A loopback connect is answered at once; the reply is awaited with poll and the deadline.
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(s, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    std::string received;
    for (;;) {
      if (const size_t end = received.find("\r\n"); end != std::string::npos) {
        line = received.substr(0, end);
        break;
      }
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd item{s, POLLIN, 0};
      if (left <= 0 || ::poll(&item, 1, static_cast<int>(left)) <= 0) break;
      char chunk[512];
      const ssize_t n = ::recv(s, chunk, sizeof chunk, 0);
      if (n <= 0) break;
      received.append(chunk, static_cast<size_t>(n));
    }
  }
  ::close(s);
  return line;
}

// A redis-server child listening on 127.0.0.1 only, saving nothing. Killed and reaped on
// destruction. Thread-bound. Check ready() after constructing or restart()ing it.
class RedisServer {
 public:
  // On a free port (another is tried if the first is taken meanwhile).
  explicit RedisServer(std::string binary) : binary_(std::move(binary)) {
    for (int attempt = 0; attempt < 3 && !ready_; ++attempt) {
      const std::string url = freeTcpUrl();
      port_ = std::stoi(url.substr(url.rfind(':') + 1));
      ready_ = start();
    }
  }

  bool ready() const { return ready_; }
  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  // How the last start failed, for failure messages.
  const std::string& error() const { return error_; }

  // SIGKILL and reap: when it returns the port is closed and every key is gone.
  void kill() {
    if (child_) {
      child_->kill(SIGKILL);
      child_->waitExit(deadlineAfter(kDefaultWait));
    }
    child_.reset();
    ready_ = false;
  }
  // kill(), then a new server on the same port; true once it answers.
  bool restart() {
    kill();
    ready_ = start();
    return ready_;
  }

 private:
  // Starts the child and waits (bounded) for its "Ready to accept connections" line and a PONG.
  bool start() {
    child_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        binary_, "--port", std::to_string(port_), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no"});
    const Deadline deadline = deadlineAfter(kDefaultWait);
    for (;;) {
      const std::optional<std::string> line = child_->readLine(deadline);
      if (!line) {
        error_ = child_->eof() ? "redis-server exited (port " + std::to_string(port_) + " taken?)"
                               : "redis-server was not ready within the deadline";
        child_.reset();
        return false;
      }
      if (line->find("Ready to accept connections") != std::string::npos) break;
    }
    if (redisInlineCommand(port_, "PING", deadline) != "+PONG") {
      error_ = "redis-server did not answer PING";
      return false;
    }
    return true;
  }

  const std::string binary_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> child_;
  bool ready_ = false;
  std::string error_;
};

}  // namespace switchboard::testing

// The Redis cases need a redis-server; CI installs it. Without one they fail, unless
// SWITCHBOARD_SKIP_REDIS=1 makes them skip. Use in SetUp or a test body.
#define SWITCHBOARD_START_REDIS(server)                                                     \
  if (::switchboard::testing::skipRedisCases()) GTEST_SKIP() << "SWITCHBOARD_SKIP_REDIS=1"; \
  ASSERT_FALSE(::switchboard::testing::redisServerBinary().empty())                         \
      << "redis-server not found: install it (Debian: redis-server), set "                  \
         "SWITCHBOARD_REDIS_SERVER to its path, or set SWITCHBOARD_SKIP_REDIS=1 to skip";   \
  server.emplace(::switchboard::testing::redisServerBinary());                              \
  ASSERT_TRUE(server->ready()) << server->error()
