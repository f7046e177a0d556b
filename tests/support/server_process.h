// Child processes for the process-level suites: ChildProcess (any program, its stdout read line by
// line with deadlines) and ServerProcess (a switchboard-server child). Header-only.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "base/deadline.h"
#include "tests/support/test_util.h"

namespace switchboard::testing {

// The environment variable `name`, or `fallback` when it is unset.
inline std::string envOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

// A loopback tcp URL nobody listens on now: a port the kernel just handed out and took back.
inline std::string freeTcpUrl() {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (s >= 0 && ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  if (s >= 0) ::close(s);
  return "tcp://127.0.0.1:" + std::to_string(port);
}

// A fresh directory under the system's temporary directory, removed with what it holds.
class TempDir {
 public:
  TempDir() : path_((std::filesystem::temp_directory_path() / "switchboard-XXXXXX").string()) {
    if (::mkdtemp(path_.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed: errno " << errno;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A child running argv[0] (a path) with its stdout on a pipe to this process and its stderr
// shared with this one. Every wait takes a deadline: reads poll the pipe, exits poll a pidfd.
// Killed (SIGKILL, which also ends a stopped child) and reaped on destruction. The descriptors
// are close-on-exec, so other children do not inherit them. Thread-bound.
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv) {
    std::vector<char*> args;  // built before fork: the child only calls async-signal-safe functions
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2 failed: errno " << errno;
      return;
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);  // the copy is not close-on-exec
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(out[1]);
    stdout_ = out[0];
    if (pid_ < 0) {
      ADD_FAILURE() << "fork failed: errno " << errno;
      return;
    }
    // glibc 2.36's <sys/pidfd.h> lacks extern "C": the system call itself.
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd_ < 0) ADD_FAILURE() << "pidfd_open failed: errno " << errno;
  }
  ~ChildProcess() {
    if (pid_ > 0 && !exit_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);  // bounded: SIGKILL cannot be caught or ignored
    }
    if (stdout_ >= 0) ::close(stdout_);
    if (pidfd_ >= 0) ::close(pidfd_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  // The next line of the child's stdout without its newline (a last line without one too);
  // nullopt at end of file (eof() turns true) or when `deadline` passes first.
  std::optional<std::string> readLine(Deadline deadline) {
    for (;;) {
      if (const size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (eof_ || stdout_ < 0) {
        eof_ = true;
        if (buffer_.empty()) return std::nullopt;
        return std::exchange(buffer_, std::string());
      }
      pollfd item{stdout_, POLLIN, 0};
      const int ready = ::poll(&item, 1, msUntil(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return std::nullopt;
      char chunk[4096];
      const ssize_t n = ::read(stdout_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof_ = true;
      } else {
        buffer_.append(chunk, static_cast<size_t>(n));
      }
    }
  }
  bool eof() const { return eof_; }

  // Sends `sig` (SIGSTOP, SIGCONT, SIGTERM, SIGKILL...) unless the child was reaped.
  void kill(int sig) {
    if (pid_ > 0 && !exit_) ::kill(pid_, sig);
  }

  // SIGSTOP, and returns once every thread of the child has stopped (kill() alone returns
  // before that); false if it ended instead. Bounded: SIGSTOP cannot be caught or ignored.
  bool stop() {
    if (pid_ <= 0 || exit_) return false;
    ::kill(pid_, SIGSTOP);
    for (;;) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WUNTRACED);
      if (r < 0 && errno == EINTR) continue;
      if (r != pid_) return false;
      if (WIFSTOPPED(status)) return true;
      exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
  }

  // Reaps the child once it has ended: its exit code, or 128 + the signal that ended it;
  // nullopt if it is still running at `deadline`.
  std::optional<int> waitExit(Deadline deadline) {
    if (exit_ || pid_ <= 0) return exit_;
    for (;;) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_;
      }
      if (Clock::now() >= deadline) return std::nullopt;
      pollfd item{pidfd_, POLLIN, 0};  // the pidfd turns readable when the child exits
      if (::poll(&item, 1, msUntil(deadline)) < 0 && errno != EINTR) return std::nullopt;
    }
  }

 private:
  static int msUntil(Deadline deadline) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return static_cast<int>(std::clamp<int64_t>(left, 0, 24 * 3600 * 1000));
  }

  pid_t pid_ = -1;
  int stdout_ = -1;
  int pidfd_ = -1;
  std::string buffer_;  // read, not yet returned
  bool eof_ = false;
  std::optional<int> exit_;  // set once reaped
};

// A switchboard-server child ($SWITCHBOARD_SERVER) listening on a free tcp port, or on a given
// URL; url() is the endpoint it printed (empty if it printed none within 10 s). Killed and
// reaped on destruction. Thread-bound.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& executor)
      : ServerProcess(executor, "tcp://127.0.0.1:0") {}
  // `extraArgs` go after --listen and --executor.
  ServerProcess(const std::string& executor, const std::string& listenUrl,
                const std::vector<std::string>& extraArgs = {})
      : child_(argvOf(executor, listenUrl, extraArgs)) {
    // The first line is "listening on URL"; readLine returns at once if the child dies (EOF).
    const std::string prefix = "listening on ";
    std::optional<std::string> line = child_.readLine(deadlineAfter(kDefaultWait));
    if (line && line->rfind(prefix, 0) == 0) url_ = line->substr(prefix.size());
  }

  const std::string& url() const { return url_; }
  pid_t pid() const { return child_.pid(); }
  ChildProcess& process() { return child_; }

  void kill(int sig) { child_.kill(sig); }
  // Frozen once this returns true: its sockets stay open and nothing answers. resume() thaws it.
  bool stopProcess() { return child_.stop(); }
  void resume() { kill(SIGCONT); }

  // SIGTERM, then the exit status; -1 if it did not exit within 10 s.
  int terminate() {
    kill(SIGTERM);
    return child_.waitExit(deadlineAfter(kDefaultWait)).value_or(-1);
  }
  // SIGKILL, then reaped (the kernel has closed its sockets when this returns); 128 + SIGKILL.
  int killAndReap() {
    kill(SIGKILL);
    return child_.waitExit(deadlineAfter(kDefaultWait)).value_or(-1);
  }

  // Resident memory in KiB, from /proc.
  long rssKiB() const {
    std::ifstream status("/proc/" + std::to_string(pid()) + "/status");
    std::string key;
    long value = 0;
    while (status >> key) {
      if (key == "VmRSS:") {
        status >> value;
        return value;
      }
      status.ignore(1 << 12, '\n');
    }
    return -1;
  }

 private:
  static std::vector<std::string> argvOf(const std::string& executor, const std::string& listenUrl,
                                         const std::vector<std::string>& extraArgs) {
    std::vector<std::string> argv{envOr("SWITCHBOARD_SERVER", "switchboard-server"), "--listen",
                                  listenUrl, "--executor", executor};
    argv.insert(argv.end(), extraArgs.begin(), extraArgs.end());
    return argv;
  }
  ChildProcess child_;
  std::string url_;
};

}  // namespace switchboard::testing
