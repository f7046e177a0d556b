// switchboard-bench: Switchboard's call latency, call and cast throughput and server CPU per call,
// each next to the floor (a raw cppzmq + msgpack-c echo), over tcp, ipc and inproc loopback.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <memory>
#include <msgpack.hpp>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "executors/blocking_executor.h"
#include "executors/event_loop_executor.h"
#include "executors/thread_pool_executor.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "tools/sample_service.h"
#include "transports/transport_factory.h"

using namespace switchboard;

namespace {

constexpr auto kCallTimeout = std::chrono::seconds(2);      // the deadline of every call
constexpr auto kDrainGrace = std::chrono::seconds(2);       // for calls in flight after a figure
constexpr auto kConnectWait = std::chrono::seconds(5);      // for a client's first answer
constexpr auto kServerStartWait = std::chrono::seconds(5);  // for a child's "listening on"
constexpr auto kServerStopWait = std::chrono::seconds(3);   // for a server to stop before SIGKILL
constexpr int kMinCpuTicks = 10;  // a CPU figure needs this many ticks of its clock
constexpr size_t kMaxWindow = 256;
constexpr size_t kWindows[] = {1, 16, kMaxWindow};
constexpr uint64_t kCastBatch = 256;        // casts sent between two barrier calls
constexpr size_t kCastBatchesInFlight = 2;  // batches sent and not yet passed by their barrier

// The figures of one measurement, as --figures names them: latency, w1, w16, w256, casts.
std::string windowFigureName(size_t window) { return "w" + std::to_string(window); }
std::vector<std::string> figureNames() {
  std::vector<std::string> names = {"latency"};
  for (size_t window : kWindows) names.push_back(windowFigureName(window));
  names.push_back("casts");
  return names;
}

// The run's time plan: the default --seconds-per-figure divides kRunTarget, less the setup
// allowances, among the figures of every round; the hard bound is kHardBoundFactor times the
// planned time.
constexpr auto kRunTarget = std::chrono::seconds(60);
constexpr double kHardBoundFactor = 1.5;
constexpr auto kServerSetupAllowance = std::chrono::milliseconds(100);
constexpr auto kFigureSetupAllowance = std::chrono::milliseconds(10);
constexpr uint64_t kMaxCallsPerFigure = 5'000'000;
constexpr uint64_t kQuickCallsPerFigure = 300;
constexpr double kQuickSecondsPerFigure = 0.2;
constexpr size_t kWarmupCalls = 200;
constexpr size_t kQuickWarmupCalls = 20;
constexpr auto kWarmupTime = std::chrono::milliseconds(200);  // at most, and at most a figure's

constexpr const char* kTopic = "switchboard";
constexpr const char* kEchoMethod = "echo";
constexpr const char* kStatsNamespace = "bench";  // the Switchboard servers' stats endpoint
constexpr const char* kStatsMethod = "stats";     // on the floor and in kStatsNamespace
constexpr std::string_view kListeningPrefix = "listening on ";

using Payload = std::shared_ptr<const std::string>;

enum class ServerKind { kFloor, kThreadPool, kBlocking, kEventLoop };

std::string_view kindName(ServerKind kind) {
  switch (kind) {
    case ServerKind::kFloor:
      return "floor";
    case ServerKind::kThreadPool:
      return "threadpool";
    case ServerKind::kBlocking:
      return "blocking";
    case ServerKind::kEventLoop:
      return "eventloop";
  }
  return "?";
}

std::optional<ServerKind> parseKind(std::string_view name) {
  for (ServerKind kind : {ServerKind::kFloor, ServerKind::kThreadPool, ServerKind::kBlocking,
                          ServerKind::kEventLoop}) {
    if (kindName(kind) == name) return kind;
  }
  return std::nullopt;
}

Status errnoStatus(std::string_view what) {
  return Status(StatusCode::kTransportError, std::string(what) + ": " + std::strerror(errno));
}

// Milliseconds until `deadline` for poll(2) and zmq::poll: rounded up, 0 once passed.
int msUntil(Deadline deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 24 * 3600 * 1000));
}

double micros(Duration d) { return std::chrono::duration<double, std::micro>(d).count(); }
double seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

// CPU time used so far (user + system, every thread), and the granularity of that clock.
struct CpuReading {
  Duration used{};
  Duration tick{};
};

// This whole process's.
std::optional<CpuReading> processCpuTime() {
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return std::nullopt;
  const auto tv = [](const timeval& t) {
    return std::chrono::seconds(t.tv_sec) + std::chrono::microseconds(t.tv_usec);
  };
  return CpuReading{std::chrono::duration_cast<Duration>(tv(usage.ru_utime) + tv(usage.ru_stime)),
                    std::chrono::microseconds(1)};
}

// Process `pid`'s: utime + stime, in clock ticks, from /proc/<pid>/stat.
std::optional<CpuReading> childCpuTime(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const size_t commEnd = text.rfind(')');  // the command name may hold spaces and parentheses
  if (commEnd == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(commEnd + 1));
  std::string skipped;
  for (int field = 3; field < 14; ++field) fields >> skipped;  // state .. cmajflt
  unsigned long long utime = 0, stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  const long ticksPerSecond = ::sysconf(_SC_CLK_TCK);
  if (ticksPerSecond <= 0) return std::nullopt;
  const auto tick = std::chrono::duration_cast<Duration>(std::chrono::seconds(1)) / ticksPerSecond;
  return CpuReading{static_cast<int64_t>(utime + stime) * tick, tick};
}

// ---------------------------------------------------------------------------------------------
// The floor's messages: MessagePack-RPC packed and unpacked with msgpack-c directly.

using Packer = msgpack::packer<msgpack::sbuffer>;

void packString(Packer& packer, std::string_view s) {
  packer.pack_str(static_cast<uint32_t>(s.size()));
  packer.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

// [0, msgid, method, [payload]], or [0, msgid, method, []] without a payload.
void packRequest(msgpack::sbuffer& out, uint32_t msgid, std::string_view method,
                 const std::string* payload) {
  out.clear();
  Packer packer(out);
  packer.pack_array(4);
  packer.pack_uint8(0);
  packer.pack_uint32(msgid);
  packString(packer, method);
  packer.pack_array(payload ? 1 : 0);
  if (payload) packString(packer, *payload);
}

// [2, method, [payload]]
void packNotification(msgpack::sbuffer& out, std::string_view method, const std::string& payload) {
  out.clear();
  Packer packer(out);
  packer.pack_array(3);
  packer.pack_uint8(2);
  packString(packer, method);
  packer.pack_array(1);
  packString(packer, payload);
}

// [1, msgid, nil, result] or [1, msgid, error, nil]
template <typename R>
void packResponse(msgpack::sbuffer& out, uint32_t msgid, const std::string* error,
                  const R& result) {
  out.clear();
  Packer packer(out);
  packer.pack_array(4);
  packer.pack_uint8(1);
  packer.pack_uint32(msgid);
  if (error) {
    packString(packer, *error);
    packer.pack_nil();
  } else {
    packer.pack_nil();
    packer.pack(result);
  }
}

bool isString(const msgpack::object& o, std::string_view s) {
  return o.type == msgpack::type::STR && std::string_view(o.via.str.ptr, o.via.str.size) == s;
}

// An unpacked response: its msgid, and its error or its result (which `unpacked` owns).
struct FloorReply {
  uint32_t msgid = 0;
  Status error;
  msgpack::object_handle unpacked;
  msgpack::object result;
};

// nullopt when `frame` is not a response.
std::optional<FloorReply> unpackReply(const zmq::message_t& frame) {
  FloorReply reply;
  try {
    reply.unpacked = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const msgpack::object& m = reply.unpacked.get();
  if (m.type != msgpack::type::ARRAY || m.via.array.size != 4) return std::nullopt;
  const msgpack::object* e = m.via.array.ptr;
  if (e[0].type != msgpack::type::POSITIVE_INTEGER || e[0].via.u64 != 1 ||
      e[1].type != msgpack::type::POSITIVE_INTEGER || e[1].via.u64 > UINT32_MAX) {
    return std::nullopt;
  }
  reply.msgid = static_cast<uint32_t>(e[1].via.u64);
  if (e[2].type != msgpack::type::NIL) {
    reply.error =
        Status(StatusCode::kRemoteError, e[2].type == msgpack::type::STR
                                             ? std::string(e[2].via.str.ptr, e[2].via.str.size)
                                             : std::string("the floor server answered an error"));
  }
  reply.result = e[3];
  return reply;
}

Status checkEcho(const FloorReply& reply, const std::string& payload) {
  if (!reply.error) return reply.error;
  if (!isString(reply.result, payload)) {
    return Status(StatusCode::kProtocolError, "echo answered something else than its payload");
  }
  return Status::ok();
}

// The floor's sockets get the linger and high-water marks of ZmqTransport's sockets.
void applySocketOptions(zmq::socket_t& socket) {
  const ZmqTransport::Options switchboards;
  socket.set(zmq::sockopt::linger, switchboards.lingerMs);
  socket.set(zmq::sockopt::sndhwm, switchboards.sendHighWaterMark);
  socket.set(zmq::sockopt::rcvhwm, switchboards.sendHighWaterMark);
}

// Sends `bytes` as one frame (after an identity frame when given), waiting for room until
// `deadline`. Throws zmq::error_t for socket errors other than "would block".
bool sendBefore(zmq::socket_t& socket, const zmq::message_t* identity,
                const msgpack::sbuffer& bytes, Deadline deadline) {
  for (;;) {
    if (identity) {
      if (socket.send(zmq::buffer(identity->data(), identity->size()),
                      zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        (void)socket.send(zmq::buffer(bytes.data(), bytes.size()), zmq::send_flags::dontwait);
        return true;  // the second frame of a message goes with the first
      }
    } else if (socket.send(zmq::buffer(bytes.data(), bytes.size()), zmq::send_flags::dontwait)) {
      return true;
    }
    if (Clock::now() >= deadline) return false;
    zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLOUT, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(msUntil(deadline)));
  }
}

// ---------------------------------------------------------------------------------------------
// Servers.

// A server under measurement, running in this process or in a child. The destructor stops it
// (bounded by kServerStopWait, then killed for a child) and joins or reaps what ran it.
class RunningServer {
 public:
  virtual ~RunningServer() = default;
  // The URL clients connect to (the real port for tcp).
  virtual const std::string& url() const = 0;
  // CPU time so far of what cpuScope() names; nullopt when it cannot be read.
  virtual std::optional<CpuReading> cpuTime() const = 0;
  // "server" (the server's own process) or "process" (this one, client included).
  virtual std::string_view cpuScope() const = 0;

 protected:
  RunningServer() = default;
  RunningServer(const RunningServer&) = delete;
  RunningServer& operator=(const RunningServer&) = delete;
};

// The floor's server: a ROUTER and one thread that receives, unpacks, packs and sends in a loop.
// Answers [0, id, "echo", [x]] with [1, id, nil, x] and [0, id, "stats", []] with
// [1, id, nil, [notifications taken, messages dropped]]; counts [2, "echo", [x]]. Drops
// malformed messages and replies the peer has no room for.
class FloorServer final : public RunningServer {
 public:
  // `context` must outlive the server.
  static Result<std::unique_ptr<FloorServer>> start(zmq::context_t& context,
                                                    const std::string& url) {
    auto server = std::unique_ptr<FloorServer>(new FloorServer(context));
    if (server->wake_ < 0) return errnoStatus("floor: eventfd");
    try {
      applySocketOptions(server->router_);
      server->router_.bind(url);
      server->url_ = server->router_.get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kTransportError, "floor: cannot bind " + url + ": " + e.what());
    }
    server->thread_ = std::thread([s = server.get()] { s->serve(); });  // owns router_ now
    return server;
  }

  ~FloorServer() override {
    stopping_.store(true);
    const uint64_t one = 1;
    (void)::write(wake_, &one, sizeof one);  // ends the loop's poll
    if (thread_.joinable()) thread_.join();
    if (wake_ >= 0) ::close(wake_);
  }

  const std::string& url() const override { return url_; }
  std::optional<CpuReading> cpuTime() const override { return processCpuTime(); }
  std::string_view cpuScope() const override { return "process"; }

 private:
  explicit FloorServer(zmq::context_t& context)
      : router_(context, zmq::socket_type::router), wake_(::eventfd(0, EFD_CLOEXEC)) {}

  void serve() {
    try {
      zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0},
                                 {nullptr, wake_, ZMQ_POLLIN, 0}};
      while (!stopping_.load(std::memory_order_relaxed)) {
        zmq::poll(items, 2, std::chrono::milliseconds(-1));  // waker: wake_
        if ((items[0].revents & ZMQ_POLLIN) == 0) continue;
        for (;;) {
          zmq::message_t identity, body;
          if (!router_.recv(identity, zmq::recv_flags::dontwait)) break;
          if (!identity.more()) {
            ++dropped_;
            continue;
          }
          (void)router_.recv(body);                      // the frames of a message arrive together
          while (body.more()) (void)router_.recv(body);  // the body is the last frame
          handle(identity, body);
        }
      }
    } catch (const zmq::error_t& e) {
      std::cerr << "switchboard-bench: floor server: " << e.what() << "\n";
    }
    router_.close();
  }

  void handle(const zmq::message_t& identity, const zmq::message_t& body) {
    msgpack::object_handle unpacked;
    try {
      unpacked = msgpack::unpack(static_cast<const char*>(body.data()), body.size());
    } catch (const std::exception&) {
      ++dropped_;
      return;
    }
    const msgpack::object& m = unpacked.get();
    if (m.type != msgpack::type::ARRAY || m.via.array.size < 3 ||
        m.via.array.ptr[0].type != msgpack::type::POSITIVE_INTEGER) {
      ++dropped_;
      return;
    }
    const msgpack::object* e = m.via.array.ptr;
    const uint64_t kind = e[0].via.u64;
    if (kind == 2 && m.via.array.size == 3 && isString(e[1], kEchoMethod) &&
        e[2].type == msgpack::type::ARRAY && e[2].via.array.size == 1) {
      ++notifications_;
      return;
    }
    if (kind != 0 || m.via.array.size != 4 || e[1].type != msgpack::type::POSITIVE_INTEGER ||
        e[1].via.u64 > UINT32_MAX || e[3].type != msgpack::type::ARRAY) {
      ++dropped_;
      return;
    }
    const auto msgid = static_cast<uint32_t>(e[1].via.u64);
    const msgpack::object_array& params = e[3].via.array;
    if (isString(e[2], kEchoMethod) && params.size == 1) {
      packResponse(reply_, msgid, nullptr, params.ptr[0]);
    } else if (isString(e[2], kStatsMethod) && params.size == 0) {
      packResponse(reply_, msgid, nullptr, std::vector<uint64_t>{notifications_, dropped_});
    } else {
      const std::string error = "no such method";
      packResponse(reply_, msgid, &error, msgpack::type::nil_t());
    }
    if (!sendBefore(router_, &identity, reply_, Clock::now())) ++dropped_;  // the peer is full
  }

  zmq::socket_t router_;  // the loop thread's once it started
  std::string url_;
  const int wake_;  // an eventfd: the destructor's waker of the loop's poll
  std::atomic<bool> stopping_{false};
  uint64_t notifications_ = 0;  // loop thread only, like the two below
  uint64_t dropped_ = 0;
  msgpack::sbuffer reply_;
  std::thread thread_;
};

std::unique_ptr<Executor> makeExecutor(ServerKind kind) {
  if (kind == ServerKind::kBlocking) return std::make_unique<BlockingExecutor>();
  if (kind == ServerKind::kEventLoop) return std::make_unique<EventLoopExecutor>();
  return std::make_unique<ThreadPoolExecutor>();
}

// A MessageHandlingServer with the executor of `kind`, serving tools::sampleEndpoint() and, in
// namespace kStatsNamespace, stats() -> {"received", "dropped"} from MessageHandlingServer::stats()
// (the cast figures count with it). The blocking executor's execute() runs on a thread owned here.
class SwitchboardServer final : public RunningServer {
 public:
  // `factory` must outlive the server.
  static Result<std::unique_ptr<SwitchboardServer>> start(ServerKind kind,
                                                          TransportFactory& factory,
                                                          const std::string& url) {
    Result<std::unique_ptr<Transport>> transport = factory.makeTransport(url);
    if (!transport) return transport.status();
    auto server = std::unique_ptr<SwitchboardServer>(new SwitchboardServer());
    server->transport_ = std::move(transport).value();
    SwitchboardServer* self = server.get();
    Endpoint stats(kStatsNamespace);
    stats.method(kStatsMethod, [self]() {
      const MessageHandlingServer::Stats s = self->server_->stats();
      return Value(Map{{"received", s.received}, {"dropped", s.dropped}});
    });
    server->server_ = std::make_unique<MessageHandlingServer>(
        *server->transport_, Target{.topic = kTopic, .server = "bench"},
        RpcDispatcher({tools::sampleEndpoint("bench"), std::move(stats)}), makeExecutor(kind));
    if (Status started = server->server_->start(); !started) return started;
    if (kind == ServerKind::kBlocking) {
      server->blockingLoop_ = std::thread([self] {
        if (Status s = self->server_->execute(); !s) {
          std::cerr << "switchboard-bench: blocking executor: " << s << "\n";
        }
      });
    }
    auto* zmq = dynamic_cast<ZmqTransport*>(server->transport_.get());
    server->url_ = zmq ? zmq->boundEndpoint() : url;
    return server;
  }

  ~SwitchboardServer() override {
    if (!server_) return;
    server_->stop();
    // Bounded; for the blocking executor it also waits for execute() to return.
    if (Status s = server_->wait(deadlineAfter(kServerStopWait)); !s) {
      std::cerr << "switchboard-bench: server did not stop: " << s << "\n";
    }
    if (blockingLoop_.joinable()) blockingLoop_.join();
  }

  const std::string& url() const override { return url_; }
  std::optional<CpuReading> cpuTime() const override { return processCpuTime(); }
  std::string_view cpuScope() const override { return "process"; }

 private:
  SwitchboardServer() = default;

  std::unique_ptr<Transport> transport_;  // outlives server_
  std::unique_ptr<MessageHandlingServer> server_;
  std::thread blockingLoop_;  // the blocking executor's execute()
  std::string url_;
};

// A server of `kind` on `url`, run by threads of this process. `factory` and `floorContext`
// must outlive it.
Result<std::unique_ptr<RunningServer>> startInProcess(ServerKind kind, const std::string& url,
                                                      TransportFactory& factory,
                                                      zmq::context_t& floorContext) {
  if (kind == ServerKind::kFloor) {
    Result<std::unique_ptr<FloorServer>> floor = FloorServer::start(floorContext, url);
    if (!floor) return floor.status();
    return std::unique_ptr<RunningServer>(std::move(floor).value());
  }
  Result<std::unique_ptr<SwitchboardServer>> server = SwitchboardServer::start(kind, factory, url);
  if (!server) return server.status();
  return std::unique_ptr<RunningServer>(std::move(server).value());
}

// A line from `fd`, without its newline, read before `deadline`.
Result<std::string> readLineBefore(int fd, Deadline deadline) {
  std::string line;
  for (;;) {
    pollfd item{fd, POLLIN, 0};
    const int ready = ::poll(&item, 1, msUntil(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return errnoStatus("poll");
    if (ready == 0) return Status(StatusCode::kTimeout, "no line before the deadline");
    char c = 0;
    const ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errnoStatus("read");
    if (n == 0) return Status(StatusCode::kTransportError, "closed before a line: '" + line + "'");
    if (c == '\n') return line;
    line += c;
  }
}

// A server in a child process: this program re-executed as `--serve KIND URL` (serveMain), whose
// first stdout line is "listening on URL". The child leaves the terminal's process group (the
// bench, not ^C, ends it) and is killed by the kernel if this process dies (PR_SET_PDEATHSIG).
// The destructor sends SIGTERM, then SIGKILL after kServerStopWait, and reaps it.
class ChildServer final : public RunningServer {
 public:
  // `program`: the path of this executable. Fork with threads running: the child makes only
  // async-signal-safe calls before exec.
  static Result<std::unique_ptr<ChildServer>> start(const std::string& program, ServerKind kind,
                                                    const std::string& listenUrl) {
    std::vector<std::string> argv = {program, "--serve", std::string(kindName(kind)), listenUrl};
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return errnoStatus("pipe2");
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
      ::dup2(out[1], STDOUT_FILENO);
      ::close_range(3, ~0U, 0);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(out[1]);
    if (pid < 0) {
      ::close(out[0]);
      return errnoStatus("fork");
    }
    auto child = std::unique_ptr<ChildServer>(new ChildServer(pid, out[0]));
    Result<std::string> line = readLineBefore(out[0], deadlineAfter(kServerStartWait));
    if (!line) return Status(line.status().code(), "server child: " + line.status().message());
    if (line->rfind(kListeningPrefix, 0) != 0) {
      return Status(StatusCode::kTransportError, "server child said '" + *line + "'");
    }
    child->url_ = line->substr(kListeningPrefix.size());
    return child;
  }

  ~ChildServer() override {
    ::kill(pid_, SIGTERM);
    if (!reapBefore(deadlineAfter(kServerStopWait))) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }  // bounded: SIGKILL cannot be caught
    }
    ::close(stdout_);
    if (pidfd_ >= 0) ::close(pidfd_);
  }

  const std::string& url() const override { return url_; }
  std::optional<CpuReading> cpuTime() const override { return childCpuTime(pid_); }
  std::string_view cpuScope() const override { return "server"; }

 private:
  ChildServer(pid_t pid, int stdoutPipe)
      : pid_(pid),
        stdout_(stdoutPipe),
        // glibc 2.36's <sys/pidfd.h> lacks extern "C": the system call itself.
        pidfd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}

  // True once the child has exited and was reaped; false at `deadline` (or without a pidfd).
  bool reapBefore(Deadline deadline) {
    if (pidfd_ < 0) return false;
    for (;;) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return true;
      if (Clock::now() >= deadline) return false;
      pollfd item{pidfd_, POLLIN, 0};  // readable once the child has exited
      if (::poll(&item, 1, msUntil(deadline)) < 0 && errno != EINTR) return false;
    }
  }

  const pid_t pid_;
  const int stdout_;  // kept open until the child is gone: it never writes to a closed pipe
  const int pidfd_;
  std::string url_;
};

// ---------------------------------------------------------------------------------------------
// Clients.

// The outcomes of started calls taken at once.
struct Completions {
  uint64_t ok = 0;
  uint64_t failed = 0;
  std::string firstError;
  uint64_t count() const { return ok + failed; }
  void add(const Status& outcome) {
    if (outcome) {
      ++ok;
      return;
    }
    if (failed++ == 0) firstError = outcome.toString();
  }
  void merge(const Completions& other) {
    ok += other.ok;
    if (failed == 0 && other.failed > 0) firstError = other.firstError;
    failed += other.failed;
  }
};

// Counters of the casts a server took, which only grow.
struct CastTally {
  uint64_t taken = 0;   // casts taken off the transport
  uint64_t failed = 0;  // casts (or other messages) it dropped
};

// What the figures drive: echo calls and casts to one server, through the floor's raw socket or
// through an RpcClient. Every call has the deadline kCallTimeout. Thread-bound to the bench's
// thread (outcomes of started calls may arrive on other threads).
class EchoClient {
 public:
  virtual ~EchoClient() = default;
  // One echo(payload), waited for. Not ok unless the reply is the payload.
  virtual Status roundTrip(const Payload& payload) = 0;
  // Starts one echo(payload); awaitCompletions() reports its outcome. An error: not started.
  virtual Status startCall(const Payload& payload) = 0;
  // The outcomes of started calls that ended since the last take: waits until there is at
  // least one, or `deadline` (then maybe none).
  virtual Completions awaitCompletions(Deadline deadline) = 0;
  // Forgets the calls in flight: their outcomes will never be reported.
  virtual void abandonCalls() = 0;
  // Sends one echo(payload) cast. Ok means handed to the socket, not handled.
  virtual Status cast(const Payload& payload) = 0;
  // The server's cast counters (a stats call), counting every cast of this client, the only
  // one of its server, sent before.
  virtual Result<CastTally> castTally() = 0;

 protected:
  EchoClient() = default;
  EchoClient(const EchoClient&) = delete;
  EchoClient& operator=(const EchoClient&) = delete;
};

// The floor's client: a DEALER on the bench's thread; msgids match replies to calls.
class FloorClient final : public EchoClient {
 public:
  // `context` must outlive the client.
  static Result<std::unique_ptr<FloorClient>> connect(zmq::context_t& context,
                                                      const std::string& url) {
    auto client = std::unique_ptr<FloorClient>(new FloorClient(context));
    try {
      applySocketOptions(client->dealer_);
      client->dealer_.connect(url);
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kTransportError, "floor: cannot connect " + url + ": " + e.what());
    }
    return client;
  }

  Status roundTrip(const Payload& payload) override {
    Result<FloorReply> reply = call(kEchoMethod, payload.get());
    if (!reply) return reply.status();
    return checkEcho(*reply, *payload);
  }

  Status startCall(const Payload& payload) override {
    const uint32_t msgid = nextMsgid_;
    InFlightCall& slot = inFlight_[msgid % kMaxWindow];
    if (slot.payload) {
      return Status(StatusCode::kInvalidState,
                    "the floor client keeps at most " + std::to_string(kMaxWindow) +
                        " calls in flight");
    }
    ++nextMsgid_;
    packRequest(request_, msgid, kEchoMethod, payload.get());
    if (Status sent = send(deadlineAfter(kCallTimeout)); !sent) return sent;
    slot = {msgid, payload};
    return Status::ok();
  }

  Completions awaitCompletions(Deadline deadline) override {
    Completions done;
    try {
      for (;;) {
        zmq::message_t frame;
        while (dealer_.recv(frame, zmq::recv_flags::dontwait)) {
          std::optional<FloorReply> reply = unpackReply(frame);
          if (!reply) {
            done.add(Status(StatusCode::kProtocolError, "not a response"));
            continue;
          }
          InFlightCall& call = inFlight_[reply->msgid % kMaxWindow];
          if (!call.payload || call.msgid != reply->msgid) continue;  // an abandoned call's
          done.add(checkEcho(*reply, *call.payload));
          call.payload.reset();
        }
        if (done.count() > 0 || Clock::now() >= deadline) return done;
        zmq::pollitem_t item{dealer_.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(msUntil(deadline)));
      }
    } catch (const zmq::error_t& e) {
      done.add(Status(StatusCode::kTransportError, e.what()));
      return done;
    }
  }

  void abandonCalls() override { inFlight_.fill({}); }

  Status cast(const Payload& payload) override {
    packNotification(request_, kEchoMethod, *payload);
    return send(deadlineAfter(kCallTimeout));
  }

  Result<CastTally> castTally() override {
    Result<FloorReply> reply = call(kStatsMethod, nullptr);
    if (!reply) return reply.status();
    if (!reply->error) return reply->error;
    const msgpack::object& r = reply->result;
    if (r.type != msgpack::type::ARRAY || r.via.array.size != 2 ||
        r.via.array.ptr[0].type != msgpack::type::POSITIVE_INTEGER ||
        r.via.array.ptr[1].type != msgpack::type::POSITIVE_INTEGER) {
      return Status(StatusCode::kProtocolError, "stats: not [taken, dropped]");
    }
    return CastTally{r.via.array.ptr[0].via.u64, r.via.array.ptr[1].via.u64};
  }

 private:
  explicit FloorClient(zmq::context_t& context) : dealer_(context, zmq::socket_type::dealer) {}

  Status send(Deadline deadline) {
    try {
      if (sendBefore(dealer_, nullptr, request_, deadline)) return Status::ok();
      return Status(StatusCode::kTimeout, "the socket took no message before the deadline");
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kTransportError, e.what());
    }
  }

  // Calls `method` with [*payload] (or [] when null) and waits for its reply until kCallTimeout;
  // replies to other (abandoned) calls are skipped.
  Result<FloorReply> call(std::string_view method, const std::string* payload) {
    const Deadline deadline = deadlineAfter(kCallTimeout);
    const uint32_t msgid = nextMsgid_++;
    packRequest(request_, msgid, method, payload);
    if (Status sent = send(deadline); !sent) return sent;
    try {
      for (;;) {
        zmq::pollitem_t item{dealer_.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(msUntil(deadline)));
        zmq::message_t frame;
        if (!dealer_.recv(frame, zmq::recv_flags::dontwait)) {
          if (Clock::now() >= deadline) return Status(StatusCode::kTimeout, "no reply");
          continue;
        }
        std::optional<FloorReply> reply = unpackReply(frame);
        if (!reply) return Status(StatusCode::kProtocolError, "not a response");
        if (reply->msgid == msgid) return std::move(*reply);
      }
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kTransportError, e.what());
    }
  }

  zmq::socket_t dealer_;
  uint32_t nextMsgid_ = 1;
  msgpack::sbuffer request_;
  // Started calls, in slot msgid % kMaxWindow: msgids are consecutive and the floor answers in
  // order, so up to kMaxWindow calls in flight never share a slot. Starting a call allocates
  // nothing, as a floor's client should not. No payload: a free slot.
  struct InFlightCall {
    uint32_t msgid = 0;
    Payload payload;
  };
  std::array<InFlightCall, kMaxWindow> inFlight_;
};

// Outcomes of calls started with callAsync: recorded by their callbacks on any thread, taken by
// the bench's thread. Thread-safe.
class CompletionBox {
 public:
  void record(const Status& outcome) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_.add(outcome);
    }
    arrived_.notify_one();
  }

  Completions take(Deadline deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    arrived_.wait_until(lock, deadline, [&] { return pending_.count() > 0; });
    return std::exchange(pending_, Completions());
  }

 private:
  std::mutex mutex_;
  std::condition_variable arrived_;
  Completions pending_;  // guarded by mutex_
};

Status checkEcho(const Result<Value>& reply, const std::string& payload) {
  if (!reply) return reply.status();
  if (!reply->isString() || reply->asString() != payload) {
    return Status(StatusCode::kProtocolError, "echo answered something else than its payload");
  }
  return Status::ok();
}

// The Switchboard client: an RpcClient on a transport of its own. Counts the calls it makes, so
// that castTally() can tell casts from calls in the server's received counter.
class SwitchboardClient final : public EchoClient {
 public:
  // `factory` must outlive the client.
  static Result<std::unique_ptr<SwitchboardClient>> connect(TransportFactory& factory,
                                                            const std::string& url) {
    Result<std::unique_ptr<Transport>> transport = factory.makeTransport(url);
    if (!transport) return transport.status();
    RpcClient::Options options;
    options.timeout = kCallTimeout;
    Result<RpcClient> client = RpcClient::create(**transport, Target{.topic = kTopic}, options);
    if (!client) return client.status();
    return std::unique_ptr<SwitchboardClient>(
        new SwitchboardClient(std::move(transport).value(), std::move(client).value()));
  }

  Status roundTrip(const Payload& payload) override {
    ++callsSent_;
    return checkEcho(client_.callValue(kEchoMethod, Array{Value(*payload)}), *payload);
  }

  Status startCall(const Payload& payload) override {
    ++callsSent_;
    client_.callAsync(kEchoMethod, Array{Value(*payload)},
                      [box = completions_, payload](Result<Value> reply) {
                        box->record(checkEcho(reply, *payload));
                      });
    return Status::ok();
  }

  Completions awaitCompletions(Deadline deadline) override { return completions_->take(deadline); }

  void abandonCalls() override { completions_ = std::make_shared<CompletionBox>(); }

  Status cast(const Payload& payload) override {
    return client_.castValue(kEchoMethod, Array{Value(*payload)});
  }

  // Exact while no call timed out: a timed-out call's cancel is one more message received.
  Result<CastTally> castTally() override {
    ++callsSent_;
    Result<Value> stats = statsClient_.callValue(kStatsMethod, Array{});
    if (!stats) return stats.status();
    const Value* received = stats->find("received");
    const Value* dropped = stats->find("dropped");
    Result<uint64_t> r = fromValue<uint64_t>(received ? *received : Value());
    Result<uint64_t> d = fromValue<uint64_t>(dropped ? *dropped : Value());
    if (!r || !d) {
      return Status(StatusCode::kProtocolError,
                    "stats: not {received, dropped}: " + stats->toJson());
    }
    return CastTally{*r - std::min(*r, callsSent_), *d};
  }

 private:
  SwitchboardClient(std::unique_ptr<Transport> transport, RpcClient client)
      : transport_(std::move(transport)),
        client_(std::move(client)),
        statsClient_(client_.prepare({.ns = kStatsNamespace})) {}

  std::unique_ptr<Transport> transport_;  // outlives the clients (declared first)
  RpcClient client_;
  RpcClient statsClient_;  // shares client_'s channel
  std::shared_ptr<CompletionBox> completions_ = std::make_shared<CompletionBox>();
  uint64_t callsSent_ = 0;  // every call, stats calls included: messages that are not casts
};

// ---------------------------------------------------------------------------------------------
// Figures: the two generic loops, and the figures made with them.

// When a figure's loop stops: after `maxCalls` or at `until`, whichever comes first, or at once
// when the run is interrupted. Calls still in flight then have until `drainUntil`.
struct Bounds {
  uint64_t maxCalls = 0;
  Deadline until;
  Deadline drainUntil;
  bool drainCutByHardBound = false;  // drainUntil is the run's hard bound
  const std::atomic<bool>* interrupted = nullptr;

  bool over(uint64_t calls) const {
    return calls >= maxCalls || interrupted->load(std::memory_order_relaxed) ||
           Clock::now() >= until;
  }
};

struct LatencyFigure {
  bool selected = true;  // false: left out by --figures (and not measured)
  uint64_t calls = 0;  // answered
  uint64_t errors = 0;
  double p50Micros = 0;
  double p99Micros = 0;
  std::string firstError;
  std::vector<double> p50PerRound;  // of every round, in order; this figure is the median one's
  double key() const { return p50Micros; }
};

struct RateFigure {
  bool selected = true;  // false: left out by --figures (and not measured)
  uint64_t calls = 0;  // answered calls, or casts the server took and handled
  uint64_t errors = 0;
  double seconds = 0;
  std::optional<double> cpuMicrosPerCall;
  std::string firstError;
  std::vector<double> perSecondPerRound;  // of every round, in order; this is the median one's
  double perSecond() const { return seconds > 0 ? static_cast<double>(calls) / seconds : 0; }
  double key() const { return perSecond(); }
};

// Sequential round trips: the latency of each.
LatencyFigure measureLatency(EchoClient& client, const Payload& payload, const Bounds& bounds) {
  LatencyFigure figure;
  std::vector<Duration> samples;
  while (!bounds.over(figure.calls + figure.errors)) {
    const Deadline start = Clock::now();
    Status outcome = client.roundTrip(payload);
    const Duration took = Clock::now() - start;
    if (!outcome) {
      if (figure.errors++ == 0) figure.firstError = outcome.toString();
      continue;
    }
    samples.push_back(took);
    ++figure.calls;
  }
  if (samples.empty()) return figure;
  std::sort(samples.begin(), samples.end());
  const auto percentile = [&](double p) {  // nearest rank
    const auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(samples.size())));
    return micros(samples[std::clamp<size_t>(rank, 1, samples.size()) - 1]);
  };
  figure.p50Micros = percentile(0.50);
  figure.p99Micros = percentile(0.99);
  return figure;
}

struct WindowRun {
  Completions outcomes;
  uint64_t started = 0;
  Duration elapsed{};
};

// Keeps up to `window` units in flight. `startUnit` starts one: exactly one call on `client` when
// it returns ok (an error: nothing in flight, the unit counts failed); the unit ends with that
// call. Starts no more once `bounds` are over, then waits for those in flight until
// bounds.drainUntil; any still out then count failed and are abandoned.
WindowRun runWindow(EchoClient& client, size_t window, const Bounds& bounds,
                    const std::function<Status()>& startUnit) {
  WindowRun run;
  uint64_t inFlight = 0;
  const Deadline start = Clock::now();
  for (;;) {
    while (inFlight < window && !bounds.over(run.started)) {
      ++run.started;
      if (Status started = startUnit(); !started) {
        run.outcomes.add(started);
        continue;
      }
      ++inFlight;
    }
    if (inFlight == 0) break;
    Completions ended = client.awaitCompletions(bounds.drainUntil);
    if (ended.count() == 0) {
      client.abandonCalls();
      for (; inFlight > 0; --inFlight) {
        run.outcomes.add(Status(StatusCode::kTimeout, bounds.drainCutByHardBound
                                                          ? "unanswered at the run's hard bound"
                                                          : "unanswered at the figure's deadline"));
      }
      break;
    }
    inFlight -= std::min(inFlight, ended.count());
    run.outcomes.merge(ended);
  }
  run.elapsed = Clock::now() - start;
  return run;
}

// CPU per call between two readings; nullopt below kMinCpuTicks ticks of the clock (too coarse).
std::optional<double> cpuMicrosPer(const std::optional<CpuReading>& before,
                                   const std::optional<CpuReading>& after, uint64_t calls) {
  if (!before || !after || calls == 0) return std::nullopt;
  const Duration used = after->used - before->used;
  if (used < kMinCpuTicks * after->tick) return std::nullopt;
  return micros(used) / static_cast<double>(calls);
}

// `window` echo calls in flight, kept full.
RateFigure measureThroughput(EchoClient& client, const RunningServer& server,
                             const Payload& payload, size_t window, const Bounds& bounds) {
  const std::optional<CpuReading> cpuBefore = server.cpuTime();
  WindowRun run = runWindow(client, window, bounds, [&] { return client.startCall(payload); });
  const std::optional<CpuReading> cpuAfter = server.cpuTime();
  RateFigure figure;
  figure.calls = run.outcomes.ok;
  figure.errors = run.outcomes.failed;
  figure.firstError = run.outcomes.firstError;
  figure.seconds = seconds(run.elapsed);
  figure.cpuMicrosPerCall = cpuMicrosPer(cpuBefore, cpuAfter, figure.calls);
  return figure;
}

// Casts with flow control: batches of kCastBatch casts, each followed by an echo call (the
// barrier: one ordered link, so its reply means the server took the batch), kCastBatchesInFlight
// batches in flight. Then the server's counters say how many it took and did not drop (a server
// counts a message as it takes it, so the last barrier's reply means every cast sent is
// counted); a cast sent and not counted is an error.
RateFigure measureCasts(EchoClient& client, const RunningServer& server, const Payload& payload,
                        const Bounds& bounds) {
  RateFigure figure;
  Result<CastTally> before = client.castTally();
  if (!before) {
    figure.errors = 1;
    figure.firstError = "stats: " + before.status().toString();
    return figure;
  }
  Bounds batches = bounds;
  batches.maxCalls = (bounds.maxCalls + kCastBatch - 1) / kCastBatch;
  uint64_t castsSent = 0;
  Completions castFailures;
  const std::optional<CpuReading> cpuBefore = server.cpuTime();
  WindowRun run = runWindow(client, kCastBatchesInFlight, batches, [&] {
    const uint64_t batch = std::min(kCastBatch, bounds.maxCalls - castsSent - castFailures.failed);
    for (uint64_t i = 0; i < batch; ++i) {
      if (Status sent = client.cast(payload); sent) {
        ++castsSent;
      } else {
        castFailures.add(sent);
      }
    }
    return client.startCall(payload);
  });
  const Result<CastTally> after = client.castTally();
  const std::optional<CpuReading> cpuAfter = server.cpuTime();
  figure.seconds = seconds(run.elapsed);
  figure.errors = castFailures.failed + run.outcomes.failed;
  figure.firstError =
      !castFailures.firstError.empty() ? castFailures.firstError : run.outcomes.firstError;
  if (!after) {
    figure.errors += castsSent;
    if (figure.firstError.empty()) figure.firstError = "stats: " + after.status().toString();
    return figure;
  }
  const auto grown = [](uint64_t now, uint64_t then) { return now - std::min(now, then); };
  const uint64_t taken = grown(after->taken, before->taken);
  const uint64_t dropped = grown(after->failed, before->failed);
  figure.calls = taken - std::min(taken, dropped);
  if (figure.calls < castsSent) {
    figure.errors += castsSent - figure.calls;
    if (figure.firstError.empty()) {
      figure.firstError = std::to_string(castsSent - figure.calls) + " of " +
                          std::to_string(castsSent) + " casts not handled (" +
                          std::to_string(dropped) + " dropped)";
    }
  }
  figure.cpuMicrosPerCall = cpuMicrosPer(cpuBefore, cpuAfter, figure.calls);
  return figure;
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Plan {
  std::vector<std::string> transports;
  std::vector<ServerKind> servers;  // the floor first
  std::vector<size_t> payloads;
  std::vector<std::string> figures;  // of figureNames(), in any order
  size_t rounds = 1;                 // every server is measured once per round, in turn
  Duration perFigure{};              // per figure and round
  uint64_t maxCalls = 0;
  size_t warmupCalls = 0;
  Deadline hardDeadline;  // no wait outlives it

  bool wants(std::string_view figure) const {
    return std::find(figures.begin(), figures.end(), figure) != figures.end();
  }
  size_t serverCount() const { return transports.size() * servers.size(); }  // per round
  size_t figureCount() const {
    size_t selected = 0;
    for (const std::string& name : figureNames()) selected += wants(name) ? 1 : 0;
    return serverCount() * payloads.size() * selected;  // per round
  }
};

// One server kind on one transport with one payload.
struct Measurement {
  std::string transport;
  ServerKind server = ServerKind::kFloor;
  size_t payloadBytes = 0;
  std::string cpuScope;
  std::string setupError;  // when set, nothing was measured
  LatencyFigure latency;
  std::vector<RateFigure> windows;  // one per kWindows
  RateFigure casts;

  uint64_t errors() const {
    uint64_t n = (setupError.empty() ? 0 : 1) + latency.errors + casts.errors;
    for (const RateFigure& w : windows) n += w.errors;
    return n;
  }
};

// The figure of the round with the median key (the lower middle one for an even count), with
// every round's key, errors and first error. Precondition: `rounds` is not empty.
template <typename Figure>
Figure medianRound(std::vector<Figure> rounds, std::vector<double> Figure::*perRound) {
  std::vector<double> keys;
  uint64_t errors = 0;
  std::string firstError;
  for (const Figure& f : rounds) {
    keys.push_back(f.key());
    errors += f.errors;
    if (firstError.empty()) firstError = f.firstError;
  }
  std::stable_sort(rounds.begin(), rounds.end(),
                   [](const Figure& a, const Figure& b) { return a.key() < b.key(); });
  Figure median = std::move(rounds[(rounds.size() - 1) / 2]);
  median.*perRound = std::move(keys);
  median.errors = errors;
  median.firstError = std::move(firstError);
  return median;
}

// One measurement from the same one of every round. A round that could not measure it makes it
// not measured. Precondition: every round holds the measurements in the same order.
Measurement combineRounds(const std::vector<std::vector<Measurement>>& rounds, size_t index) {
  Measurement m = rounds.front()[index];
  for (const std::vector<Measurement>& round : rounds) {
    if (!round[index].setupError.empty()) {
      m.setupError = round[index].setupError;
      return m;
    }
  }
  const auto each = [&](const auto& pick) {
    std::vector<std::decay_t<decltype(pick(m))>> figures;
    for (const std::vector<Measurement>& round : rounds) figures.push_back(pick(round[index]));
    return figures;
  };
  m.latency = medianRound(each([](const Measurement& r) { return r.latency; }),
                          &LatencyFigure::p50PerRound);
  for (size_t w = 0; w < m.windows.size(); ++w) {
    m.windows[w] = medianRound(each([w](const Measurement& r) { return r.windows[w]; }),
                               &RateFigure::perSecondPerRound);
  }
  m.casts = medianRound(each([](const Measurement& r) { return r.casts; }),
                        &RateFigure::perSecondPerRound);
  return m;
}

std::string listenUrlFor(const std::string& transport, uint64_t serial) {
  const std::string name =
      "switchboard-bench-" + std::to_string(::getpid()) + "-" + std::to_string(serial);
  if (transport == "tcp") return "tcp://127.0.0.1:*";
  if (transport == "ipc") return "ipc:///tmp/" + name;
  return "inproc://" + name;
}

// Measures every figure of one server (started here) for each payload, into `out`.
class ServerBench {
 public:
  // Borrowed: all outlive the object.
  ServerBench(const Plan& plan, const std::string& program, TransportFactory& factory,
              zmq::context_t& floorContext, const std::atomic<bool>& interrupted)
      : plan_(plan),
        program_(program),
        factory_(factory),
        floorContext_(floorContext),
        interrupted_(interrupted) {}

  void run(const std::string& transport, ServerKind kind, std::vector<Measurement>& out) {
    const std::string url = listenUrlFor(transport, serial_++);
    Status ready = Status::ok();
    std::unique_ptr<RunningServer> server;
    std::unique_ptr<EchoClient> client;
    if (Result<std::unique_ptr<RunningServer>> started = startServer(transport, kind, url);
        !started) {
      ready = started.status();
    } else {
      server = std::move(started).value();
      Result<std::unique_ptr<EchoClient>> connected = connectClient(kind, server->url());
      if (connected) client = std::move(connected).value();
      ready = connected ? firstAnswer(*client) : connected.status();
    }
    for (size_t payloadBytes : plan_.payloads) {
      Measurement m;
      m.transport = transport;
      m.server = kind;
      m.payloadBytes = payloadBytes;
      m.cpuScope = server ? std::string(server->cpuScope()) : "";
      if (!ready) {
        m.setupError = ready.toString();
      } else if (std::optional<std::string> why = stopReason()) {
        m.setupError = *why;
      } else {
        measure(*client, *server, std::make_shared<const std::string>(payloadBytes, 'x'), m);
      }
      out.push_back(std::move(m));
    }
    client.reset();  // before the server goes
    server.reset();
    if (transport == "ipc") ::unlink(url.substr(std::strlen("ipc://")).c_str());
  }

 private:
  // tcp and ipc servers run in a child (their CPU is theirs alone); inproc needs this process.
  Result<std::unique_ptr<RunningServer>> startServer(const std::string& transport, ServerKind kind,
                                                     const std::string& url) {
    if (transport == "inproc") return startInProcess(kind, url, factory_, floorContext_);
    Result<std::unique_ptr<ChildServer>> child = ChildServer::start(program_, kind, url);
    if (!child) return child.status();
    return std::unique_ptr<RunningServer>(std::move(child).value());
  }

  Result<std::unique_ptr<EchoClient>> connectClient(ServerKind kind, const std::string& url) {
    if (kind == ServerKind::kFloor) {
      Result<std::unique_ptr<FloorClient>> floor = FloorClient::connect(floorContext_, url);
      if (!floor) return floor.status();
      return std::unique_ptr<EchoClient>(std::move(floor).value());
    }
    Result<std::unique_ptr<SwitchboardClient>> client = SwitchboardClient::connect(factory_, url);
    if (!client) return client.status();
    return std::unique_ptr<EchoClient>(std::move(client).value());
  }

  // Retries the first call (the link may not be up) until kConnectWait.
  Status firstAnswer(EchoClient& client) {
    const Payload probe = std::make_shared<const std::string>("hello");
    const Deadline giveUp = std::min(deadlineAfter(kConnectWait), plan_.hardDeadline);
    Status answered = client.roundTrip(probe);
    while (!answered && Clock::now() < giveUp && !interrupted_.load()) {
      answered = client.roundTrip(probe);
    }
    return answered;
  }

  // Why no more figures may start, if so: the run was interrupted or passed its hard bound.
  std::optional<std::string> stopReason() const {
    if (interrupted_.load()) return "interrupted";
    if (Clock::now() >= plan_.hardDeadline) return "not run: the run's hard bound passed";
    return std::nullopt;
  }

  // A figure's bounds: `maxCalls` calls, or the figure's time (never past the hard bound).
  Bounds boundsFor(uint64_t maxCalls, Duration time) const {
    Bounds b;
    b.maxCalls = maxCalls;
    b.until = std::min(deadlineAfter(time), plan_.hardDeadline);
    b.drainUntil = std::min(b.until + kDrainGrace, plan_.hardDeadline);
    b.drainCutByHardBound = b.drainUntil == plan_.hardDeadline;
    b.interrupted = &interrupted_;
    return b;
  }
  Bounds nextBounds() const { return boundsFor(plan_.maxCalls, plan_.perFigure); }

  // `measureFigure()`, or a figure with one error saying why it was not run.
  template <typename MeasureFigure>
  auto runOrSkip(const MeasureFigure& measureFigure) const {
    using Figure = decltype(measureFigure());
    if (std::optional<std::string> why = stopReason()) {
      Figure skipped;
      skipped.errors = 1;
      skipped.firstError = *why;
      return skipped;
    }
    return measureFigure();
  }

  // `measureFigure()` when the plan selected `name`, else a figure marked left out.
  template <typename MeasureFigure>
  auto runIfSelected(std::string_view name, const MeasureFigure& measureFigure) const {
    using Figure = decltype(measureFigure());
    if (!plan_.wants(name)) {
      Figure leftOut;
      leftOut.selected = false;
      return leftOut;
    }
    return runOrSkip(measureFigure);
  }

  // The warm-up (whatever figures follow) counts its failures as the latency figure's, or as
  // the first selected one's.
  void measure(EchoClient& client, const RunningServer& server, const Payload& payload,
               Measurement& m) {
    const LatencyFigure warmup = measureLatency(
        client, payload,
        boundsFor(plan_.warmupCalls, std::min<Duration>(plan_.perFigure, kWarmupTime)));
    m.latency =
        runIfSelected("latency", [&] { return measureLatency(client, payload, nextBounds()); });
    for (size_t window : kWindows) {
      m.windows.push_back(runIfSelected(windowFigureName(window), [&] {
        return measureThroughput(client, server, payload, window, nextBounds());
      }));
    }
    m.casts = runIfSelected(
        "casts", [&] { return measureCasts(client, server, payload, nextBounds()); });
    if (warmup.errors > 0) chargeWarmup(warmup, m);
  }

  static void chargeWarmup(const LatencyFigure& warmup, Measurement& m) {
    const auto charge = [&warmup](auto& figure) {
      if (figure.errors == 0) figure.firstError = "warm-up: " + warmup.firstError;
      figure.errors += warmup.errors;
    };
    if (m.latency.selected) return charge(m.latency);
    for (RateFigure& window : m.windows) {
      if (window.selected) return charge(window);
    }
    charge(m.casts);  // --figures names at least one figure
  }

  const Plan& plan_;
  const std::string& program_;
  TransportFactory& factory_;
  zmq::context_t& floorContext_;
  const std::atomic<bool>& interrupted_;
  uint64_t serial_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Reports.

std::optional<double> ratio(double switchboard, double floor) {
  if (switchboard <= 0 || floor <= 0) return std::nullopt;
  return switchboard / floor;
}

std::optional<double> ratio(const std::optional<double>& switchboard,
                            const std::optional<double>& floor) {
  if (!switchboard || !floor) return std::nullopt;
  return ratio(*switchboard, *floor);
}

const Measurement* floorOf(const std::vector<Measurement>& all, const Measurement& m) {
  for (const Measurement& candidate : all) {
    if (candidate.server == ServerKind::kFloor && candidate.transport == m.transport &&
        candidate.payloadBytes == m.payloadBytes && candidate.setupError.empty()) {
      return &candidate;
    }
  }
  return nullptr;
}

// One table row's cells, or a ratio row's (Switchboard / floor).
struct RowCells {
  std::optional<double> p50, p99;
  std::vector<std::optional<double>> rates;  // per window, then casts
  std::vector<std::optional<double>> cpu;    // likewise
};

std::optional<double> nonZero(double x) { return x > 0 ? std::optional<double>(x) : std::nullopt; }

RowCells valuesOf(const Measurement& m) {
  RowCells row{nonZero(m.latency.p50Micros), nonZero(m.latency.p99Micros), {}, {}};
  for (const RateFigure& w : m.windows) {
    row.rates.push_back(nonZero(w.perSecond()));
    row.cpu.push_back(w.cpuMicrosPerCall);
  }
  row.rates.push_back(nonZero(m.casts.perSecond()));
  row.cpu.push_back(m.casts.cpuMicrosPerCall);
  return row;
}

RowCells ratiosOf(const RowCells& switchboard, const RowCells& floor) {
  RowCells row{ratio(switchboard.p50, floor.p50), ratio(switchboard.p99, floor.p99), {}, {}};
  for (size_t i = 0; i < switchboard.rates.size() && i < floor.rates.size(); ++i) {
    row.rates.push_back(ratio(switchboard.rates[i], floor.rates[i]));
    row.cpu.push_back(ratio(switchboard.cpu[i], floor.cpu[i]));
  }
  return row;
}

std::string fixed(double x, int decimals) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(decimals) << x;
  return out.str();
}

// 950, 12.3k, 1.23M
std::string compactRate(double perSecond) {
  if (perSecond >= 1e6) return fixed(perSecond / 1e6, 2) + "M";
  if (perSecond >= 1e3) return fixed(perSecond / 1e3, 1) + "k";
  return fixed(perSecond, 0);
}

constexpr int kLabelWidth = 12;
constexpr int kCellWidth = 10;

std::string cell(const std::optional<double>& x, const std::function<std::string(double)>& show) {
  return x ? show(*x) : std::string("-");
}

void printRow(std::ostream& out, const std::string& label, const RowCells& row, bool ratios,
              const std::string& errors) {
  using Show = std::function<std::string(double)>;
  const Show micro = [](double x) { return fixed(x, 1); };
  const Show times = [](double x) { return fixed(x, 2) + "x"; };
  const Show rate = compactRate;
  out << std::left << std::setw(kLabelWidth) << label << std::right;
  out << std::setw(kCellWidth) << cell(row.p50, ratios ? times : micro) << std::setw(kCellWidth)
      << cell(row.p99, ratios ? times : micro);
  for (const auto& r : row.rates) out << std::setw(kCellWidth) << cell(r, ratios ? times : rate);
  for (const auto& c : row.cpu) out << std::setw(kCellWidth) << cell(c, ratios ? times : micro);
  out << std::setw(kCellWidth) << errors << "\n";
}

void printTable(std::ostream& out, const Plan& plan, const std::vector<Measurement>& all) {
  out << "switchboard-bench: " << fixed(seconds(plan.perFigure), 3) << " s and at most "
      << plan.maxCalls << " calls per figure";
  if (plan.rounds > 1) {
    out << " in each of " << plan.rounds
        << " rounds (each figure is the round with its median rate or p50)";
  }
  out << "; every call's deadline "
      << std::chrono::duration_cast<std::chrono::seconds>(kCallTimeout).count() << " s.\n"
      << "Latency: one call outstanding. Rates: calls per second with W calls outstanding; casts "
         "per second handled\n(batches of "
      << kCastBatch << " casts, each followed by an echo call; " << kCastBatchesInFlight
      << " batches in flight). CPU: us per call (or cast) of the\nserver's process for tcp and "
         "ipc, of this whole process (client + server) for inproc. 'vs floor': Switchboard / "
         "floor.\n";
  std::vector<std::string> header = {"p50 us", "p99 us"};
  for (size_t w : kWindows) header.push_back("W=" + std::to_string(w) + "/s");
  header.push_back("cast/s");
  for (size_t w : kWindows) header.push_back("cpu W=" + std::to_string(w));
  header.push_back("cpu cast");
  header.push_back("errors");
  for (const std::string& transport : plan.transports) {
    for (size_t payload : plan.payloads) {
      out << "\n" << transport << ", payload " << payload << " B";
      for (const Measurement& m : all) {
        if (m.transport == transport && m.payloadBytes == payload && !m.cpuScope.empty()) {
          out << " (CPU of the " << m.cpuScope << ")";
          break;
        }
      }
      out << "\n" << std::left << std::setw(kLabelWidth) << "server" << std::right;
      for (const std::string& h : header) out << std::setw(kCellWidth) << h;
      out << "\n";
      for (const Measurement& m : all) {
        if (m.transport != transport || m.payloadBytes != payload) continue;
        const std::string label(kindName(m.server));
        if (!m.setupError.empty()) {
          out << std::left << std::setw(kLabelWidth) << label << std::right
              << "not measured: " << m.setupError << "\n";
          continue;
        }
        printRow(out, label, valuesOf(m), false, std::to_string(m.errors()));
        const Measurement* floor = floorOf(all, m);
        if (m.server != ServerKind::kFloor && floor) {
          printRow(out, "  vs floor", ratiosOf(valuesOf(m), valuesOf(*floor)), true, "");
        }
      }
    }
  }
  for (const Measurement& m : all) {
    const auto note = [&](std::string_view figure, const std::string& error) {
      if (!error.empty()) {
        out << "error: " << m.transport << " " << kindName(m.server) << " " << m.payloadBytes
            << " B " << figure << ": " << error << "\n";
      }
    };
    note("latency", m.latency.firstError);
    for (size_t i = 0; i < m.windows.size(); ++i) {
      note("W=" + std::to_string(kWindows[i]), m.windows[i].firstError);
    }
    note("casts", m.casts.firstError);
  }
}

// Rounded for the report: microseconds to 0.01, ratios to 0.001.
Value rounded(double x, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return Value(std::round(x * scale) / scale);
}
Value roundedOrNull(const std::optional<double>& x, int decimals) {
  return x ? rounded(*x, decimals) : Value();
}
Value roundedEach(const std::vector<double>& xs, int decimals) {
  Array out;
  for (double x : xs) out.push_back(rounded(x, decimals));
  return Value(std::move(out));
}

Value latencyJson(const LatencyFigure& f, const LatencyFigure* floor) {
  Map json{{"calls", f.calls},
           {"errors", f.errors},
           {"p50_us", rounded(f.p50Micros, 2)},
           {"p99_us", rounded(f.p99Micros, 2)}};
  json.emplace_back("p50_us_per_round", roundedEach(f.p50PerRound, 2));
  if (floor) {
    json.emplace_back("ratio_p50", roundedOrNull(ratio(f.p50Micros, floor->p50Micros), 3));
    json.emplace_back("ratio_p99", roundedOrNull(ratio(f.p99Micros, floor->p99Micros), 3));
  }
  if (!f.firstError.empty()) json.emplace_back("first_error", f.firstError);
  return Value(std::move(json));
}

// `unit`: "call" or "cast", naming the count, rate and CPU keys.
Value rateJson(const RateFigure& f, const RateFigure* floor, const std::string& unit,
               std::optional<size_t> window) {
  Map json;
  if (window) json.emplace_back("window", *window);
  json.emplace_back(unit + "s", f.calls);
  json.emplace_back("errors", f.errors);
  json.emplace_back("seconds", rounded(f.seconds, 4));
  json.emplace_back(unit + "s_per_s", rounded(f.perSecond(), 1));
  json.emplace_back(unit + "s_per_s_per_round", roundedEach(f.perSecondPerRound, 1));
  json.emplace_back("cpu_us_per_" + unit, roundedOrNull(f.cpuMicrosPerCall, 2));
  if (floor) {
    json.emplace_back("ratio", roundedOrNull(ratio(f.perSecond(), floor->perSecond()), 3));
    json.emplace_back("cpu_ratio",
                      roundedOrNull(ratio(f.cpuMicrosPerCall, floor->cpuMicrosPerCall), 3));
  }
  if (!f.firstError.empty()) json.emplace_back("first_error", f.firstError);
  return Value(std::move(json));
}

std::string reportJson(const Plan& plan, const std::vector<Measurement>& all, Duration wall,
                       uint64_t errors, bool interrupted) {
  Array results;
  for (const Measurement& m : all) {
    Map json{{"transport", m.transport},
             {"payload_bytes", m.payloadBytes},
             {"server", std::string(kindName(m.server))},
             {"cpu_scope", m.cpuScope},
             {"errors", m.errors()}};
    if (!m.setupError.empty()) {
      json.emplace_back("setup_error", m.setupError);
      results.push_back(Value(std::move(json)));
      continue;
    }
    // Only the figures --figures selected.
    const Measurement* floor = m.server == ServerKind::kFloor ? nullptr : floorOf(all, m);
    if (m.latency.selected) {
      json.emplace_back("latency", latencyJson(m.latency, floor ? &floor->latency : nullptr));
    }
    Array windows;
    for (size_t i = 0; i < m.windows.size(); ++i) {
      if (!m.windows[i].selected) continue;
      const RateFigure* floorWindow =
          floor && i < floor->windows.size() ? &floor->windows[i] : nullptr;
      windows.push_back(rateJson(m.windows[i], floorWindow, "call", kWindows[i]));
    }
    if (!windows.empty()) json.emplace_back("throughput", Value(std::move(windows)));
    if (m.casts.selected) {
      json.emplace_back("cast", rateJson(m.casts, floor ? &floor->casts : nullptr, "cast", {}));
    }
    results.push_back(Value(std::move(json)));
  }
  Map report{{"rounds", plan.rounds},
             {"seconds_per_figure", rounded(seconds(plan.perFigure), 4)},
             {"max_calls_per_figure", plan.maxCalls},
             {"cast_batch", kCastBatch},
             {"figures", plan.figureCount()},
             {"wall_seconds", rounded(seconds(wall), 2)},
             {"interrupted", interrupted},
             {"errors", errors},
             {"results", Value(std::move(results))}};
  return Value(std::move(report)).toJson();
}

// ---------------------------------------------------------------------------------------------
// Modes.

// SIGINT, SIGTERM and SIGHUP, blocked in every thread from the start of main(), are taken here by
// sigwait: they set interrupted(), which ends the running figure (within its drain grace) so that
// every child is still stopped and reaped on the way out. The destructor wakes (SIGUSR1) and
// joins the thread.
class InterruptWatcher {
 public:
  static sigset_t signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&set, sig);
    return set;
  }

  // Precondition: signals() are blocked in the calling thread (and so in the ones it starts).
  InterruptWatcher() : thread_([this] { watch(); }) {}
  ~InterruptWatcher() {
    ::pthread_kill(thread_.native_handle(), SIGUSR1);
    thread_.join();
  }
  InterruptWatcher(const InterruptWatcher&) = delete;
  InterruptWatcher& operator=(const InterruptWatcher&) = delete;

  const std::atomic<bool>& interrupted() const { return interrupted_; }

 private:
  void watch() {
    const sigset_t set = signals();
    for (;;) {
      int sig = 0;
      if (::sigwait(&set, &sig) != 0 || sig == SIGUSR1) return;
      interrupted_.store(true);
    }
  }

  std::atomic<bool> interrupted_{false};
  std::thread thread_;
};

// --serve KIND URL: serves until SIGTERM or SIGINT (blocked: inherited from the parent bench, and
// blocked again here), after printing "listening on URL".
int serveMain(const std::vector<std::string>& serve) {
  const std::optional<ServerKind> kind = parseKind(serve.at(0));
  if (!kind) {
    std::cerr << "switchboard-bench --serve: unknown server kind '" << serve[0] << "'\n";
    return 2;
  }
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);
  zmq::context_t floorContext;
  TransportFactory factory;
  Result<std::unique_ptr<RunningServer>> server =
      startInProcess(*kind, serve.at(1), factory, floorContext);
  if (!server) {
    std::cerr << "switchboard-bench --serve: " << server.status() << "\n";
    return 2;
  }
  std::cout << kListeningPrefix << (*server)->url() << std::endl;
  int received = 0;
  sigwait(&stopSignals, &received);
  return 0;  // ~RunningServer stops it, bounded
}

int benchMain(Plan plan, bool json, const std::atomic<bool>& interrupted) {
  char self[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    std::cerr << "switchboard-bench: cannot find this executable: " << std::strerror(errno) << "\n";
    return 2;
  }
  const std::string program(self, static_cast<size_t>(n));
  const Deadline start = Clock::now();
  // Declared in the order they must outlive each other.
  zmq::context_t floorContext;
  TransportFactory factory;
  std::vector<std::vector<Measurement>> rounds(plan.rounds);
  {
    ServerBench bench(plan, program, factory, floorContext, interrupted);
    for (std::vector<Measurement>& round : rounds) {
      for (const std::string& transport : plan.transports) {
        for (ServerKind kind : plan.servers) bench.run(transport, kind, round);
      }
    }
  }
  std::vector<Measurement> all;
  for (size_t i = 0; i < rounds.front().size(); ++i) all.push_back(combineRounds(rounds, i));
  const Duration wall = Clock::now() - start;
  uint64_t errors = 0;
  for (const Measurement& m : all) errors += m.errors();
  if (json) {
    std::cout << reportJson(plan, all, wall, errors, interrupted.load()) << std::endl;
  } else {
    printTable(std::cout, plan, all);
    std::cout << "\nwall time " << fixed(seconds(wall), 1) << " s, " << errors << " errors\n";
  }
  if (interrupted.load()) return 130;
  return errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread: every thread inherits the mask; the InterruptWatcher takes the signals.
  const sigset_t watched = InterruptWatcher::signals();
  pthread_sigmask(SIG_BLOCK, &watched, nullptr);

  CLI::App app(
      "switchboard-bench: Switchboard's latency, throughput, cast rate and server CPU per call\n"
      "against the floor (raw ZeroMQ DEALER/ROUTER + msgpack-c echo), over loopback transports.\n"
      "Exits 1 if any figure had errors.");
  bool json = false;
  bool quick = false;
  std::vector<std::string> transports = {"tcp", "ipc", "inproc"};
  std::vector<std::string> executors = {"threadpool", "blocking", "eventloop"};
  std::vector<size_t> payloads = {32, 4096};
  std::vector<std::string> figures = figureNames();
  double secondsPerFigure = 0;
  size_t rounds = 1;
  std::vector<std::string> serve;
  app.add_flag("--json", json, "print one JSON object with every figure and ratio");
  app.add_option("--transports", transports, "comma-separated: tcp, ipc, inproc")
      ->delimiter(',')
      ->check(CLI::IsMember({"tcp", "ipc", "inproc"}))
      ->capture_default_str();
  app.add_option("--executors", executors,
                 "comma-separated Switchboard executors: threadpool, blocking, eventloop (the "
                 "floor is always measured)")
      ->delimiter(',')
      ->check(CLI::IsMember({"threadpool", "blocking", "eventloop"}))
      ->capture_default_str();
  app.add_option("--payloads", payloads, "comma-separated payload sizes in bytes")
      ->delimiter(',')
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--figures", figures,
                 "comma-separated figures to measure (the others print as -): latency, w1, w16, "
                 "w256 (calls per second with W outstanding), casts")
      ->delimiter(',')
      ->check(CLI::IsMember(figureNames()))
      ->capture_default_str();
  app.add_option("--seconds-per-figure", secondsPerFigure,
                 "time bound of each figure in each round (default: about 60 s for the whole run)")
      ->check(CLI::Range(0.001, 3600.0));
  app.add_option("--rounds", rounds,
                 "measure every server this many times, in turn, and report each figure's "
                 "median round (interleaving the floor with Switchboard against a drifting "
                 "machine)")
      ->check(CLI::Range(size_t{1}, size_t{100}))
      ->capture_default_str();
  app.add_flag("--quick", quick,
               "a smoke run: " + std::to_string(kQuickCallsPerFigure) + " calls per figure");
  app.add_option("--serve", serve, "internal: serve KIND on URL (the bench's child servers)")
      ->expected(2)
      ->group("");
  CLI11_PARSE(app, argc, argv);
  if (!serve.empty()) return serveMain(serve);

  Plan plan;
  plan.transports = transports;
  plan.servers.push_back(ServerKind::kFloor);
  for (const std::string& e : executors) {
    const ServerKind kind = *parseKind(e);
    if (std::find(plan.servers.begin(), plan.servers.end(), kind) == plan.servers.end()) {
      plan.servers.push_back(kind);
    }
  }
  plan.payloads = payloads;
  plan.figures = figures;
  plan.rounds = rounds;
  plan.maxCalls = quick ? kQuickCallsPerFigure : kMaxCallsPerFigure;
  plan.warmupCalls = quick ? kQuickWarmupCalls : kWarmupCalls;
  const auto servers = static_cast<int64_t>(plan.serverCount() * plan.rounds);
  const auto figureCount = static_cast<int64_t>(plan.figureCount() * plan.rounds);
  const Duration setup =
      servers * Duration(kServerSetupAllowance) + figureCount * Duration(kFigureSetupAllowance);
  if (secondsPerFigure == 0) {
    secondsPerFigure = quick ? kQuickSecondsPerFigure
                             : std::max(0.01, (seconds(kRunTarget) - seconds(setup)) /
                                                  static_cast<double>(figureCount));
  }
  plan.perFigure =
      std::chrono::duration_cast<Duration>(std::chrono::duration<double>(secondsPerFigure));
  const Duration planned = setup + figureCount * plan.perFigure;
  plan.hardDeadline =
      deadlineAfter(std::chrono::duration_cast<Duration>(planned * kHardBoundFactor));

  InterruptWatcher watcher;
  return benchMain(std::move(plan), json, watcher.interrupted());
}
