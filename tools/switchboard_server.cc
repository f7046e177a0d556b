// switchboard-server: the sample RPC server. Serves the sample service on one URL with the
// chosen executor; SIGINT/SIGTERM stop it, drain in-flight calls and exit 0. Logs through
// spdlog to stderr; its stats go to the log and/or a file every --stats-interval-ms and at exit.
#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "executors/blocking_executor.h"
#include "executors/event_loop_executor.h"
#include "executors/thread_pool_executor.h"
#include "discovery/registry_factory.h"
#include "messaging/server.h"
#include "tools/sample_service.h"
#include "transports/msgpack_rpc_tcp_transport.h"
#include "transports/transport_factory.h"
#include "transports/zmq_notification_broker.h"

using namespace switchboard;

namespace {

// `pool` is used by the thread-pool executor only.
std::unique_ptr<Executor> makeExecutor(const std::string& kind,
                                       const ThreadPoolExecutor::Options& pool) {
  if (kind == "blocking") return std::make_unique<BlockingExecutor>();
  if (kind == "eventloop") return std::make_unique<EventLoopExecutor>();
  return std::make_unique<ThreadPoolExecutor>(pool);
}

spdlog::level::level_enum spdlogLevel(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarning:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::err;
}

// Switchboard's records as "[component] message (key=value, ...)" lines of `logger`.
LogSink spdlogSink(std::shared_ptr<spdlog::logger> logger) {
  return [logger = std::move(logger)](const LogRecord& record) {
    const spdlog::level::level_enum level = spdlogLevel(record.level);
    if (logger->should_log(level)) {
      logger->log(level, "[{}] {}", record.component, formatLogRecord(record));
    }
  };
}

Value latencyValue(const HistogramSnapshot& h) {
  return Map{{"count", h.count},
             {"mean_us", h.mean().count()},
             {"p50_us", h.percentile(0.5).count()},
             {"p99_us", h.percentile(0.99).count()},
             {"max_us", h.percentile(1.0).count()}};
}

Value countsValue(const std::map<std::string, uint64_t>& counts) {
  Map out;
  for (const auto& [name, n] : counts) out.emplace_back(name, n);
  return out;
}

// One JSON object: the server's counters, per-method outcomes and latency, and the ZeroMQ
// transport's counters when it is one.
std::string statsJson(const MessageHandlingServer::Stats& s, const ZmqTransport* zmq) {
  Map methods;
  for (const auto& [name, m] : s.methods) {
    if (m.latency.count == 0 && m.outcomes.empty()) continue;
    methods.emplace_back(name, Map{{"outcomes", countsValue(m.outcomes)},
                                   {"latency", latencyValue(m.latency)}});
  }
  Map out{{"received", s.received},   {"replied", s.replied},
          {"failed", s.failed},       {"rejected", s.rejected},
          {"dropped", s.dropped},     {"drops", countsValue(s.drops)},
          {"cancelled", s.cancelled}, {"in_flight", s.inFlight},
          {"methods", std::move(methods)}};
  if (zmq) {
    const ZmqTransport::Stats t = zmq->stats();
    out.emplace_back("transport", Map{{"received", t.received},
                                      {"malformed_dropped", t.malformedDropped},
                                      {"replies_sent", t.repliesSent},
                                      {"replies_dropped", t.repliesDropped},
                                      {"auth_refused", t.authRefused}});
  }
  return Value(std::move(out)).toJson();
}

// Writes `json` to `path` through a temporary file and a rename, so readers never see half.
// False when the file could not be written or renamed.
bool writeStatsFile(const std::string& path, const std::string& json) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::trunc);
    file << json << "\n";
    if (!file.flush()) return false;
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  return !error;
}

std::string hostName() {
  char name[256] = {};
  return ::gethostname(name, sizeof name - 1) == 0 ? std::string(name) : std::string("server");
}

// A flag of up to a minute in milliseconds, its default shown in --help.
void addGraceOption(CLI::App& app, const std::string& flag, int& ms, const std::string& help) {
  app.add_option(flag, ms, help)->check(CLI::Range(0, 60 * 1000))->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("switchboard-server: the sample Switchboard RPC server");
  std::string listen = "tcp://127.0.0.1:5555";
  std::string brokerUrl;  // empty: no notification broker
  std::string executorKind = "threadpool";
  ThreadPoolExecutor::Options pool;
  MessageHandlingServer::Options serverOptions;
  std::string name = hostName();
  std::string topic = "switchboard";
  int drainSeconds = 30;
  auto wakeAnotherAfterUs =
      std::chrono::duration_cast<std::chrono::microseconds>(pool.wakeAnotherAfter).count();
  auto takeLeadAfterUs =
      std::chrono::duration_cast<std::chrono::microseconds>(pool.takeLeadAfter).count();
  std::string curveSecretFile;
  std::string allowClientsFile;
  std::string logLevel = "info";
  int statsIntervalMs = 0;
  std::string statsFile;
  std::string journalFile;
  std::string registryUrl;  // empty: not registered anywhere
  std::string advertise;    // empty: the endpoint bound
  int registryTtlMs = 6000;
  int unregisterGraceMs = 500;
  int refuseAfterStopMs = 1000;
  app.add_option("--notification-broker", brokerUrl,
                 "also run a notification broker on this ZeroMQ URL (switchboard-call notify/listen)");
  app.add_option("--listen", listen,
                 "URL to serve on (tcp://, ipc://, inproc://, msgpack+tcp://, memory://)")
      ->capture_default_str();
  app.add_option("--executor", executorKind, "threadpool, blocking or eventloop")
      ->check(CLI::IsMember({"threadpool", "blocking", "eventloop"}))
      ->capture_default_str();
  app.add_option("--threads", pool.threads, "thread-pool workers")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--queue-capacity", pool.queueCapacity,
                 "thread pool: calls waiting for a worker; more are answered Overloaded")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-in-flight", pool.maxInFlight,
                 "thread pool: calls queued or running; more are answered Overloaded")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-unanswered-calls", serverOptions.maxUnansweredCalls,
                 "calls taken and not answered yet, deferred ones included; more are answered "
                 "Overloaded")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  app.add_option("--wake-another-after-us", wakeAnotherAfterUs,
                 "thread pool: a call queued this long wakes one more idle worker")
      ->check(CLI::Range(0, 1000 * 1000))
      ->capture_default_str();
  app.add_option("--take-lead-after-us", takeLeadAfterUs,
                 "thread pool: a call that holds the polling thread this long (up to twice "
                 "this) passes polling on to an idle worker")
      ->check(CLI::Range(10, 1000 * 1000))
      ->capture_default_str();
  app.add_option("--name", name, "server name in the target")->capture_default_str();
  app.add_option("--topic", topic, "topic served")->capture_default_str();
  app.add_option("--drain-seconds", drainSeconds,
                 "how long a stop waits for in-flight calls after --refuse-after-stop-ms")
      ->capture_default_str();
  addGraceOption(app, "--refuse-after-stop-ms", refuseAfterStopMs,
                 "after SIGINT/SIGTERM, keep refusing new calls (ShuttingDown, which a client "
                 "network sends to another server) this long before closing, so that calls sent "
                 "before a client learnt of the stop are not lost");
  auto* curveSecret = app.add_option(
      "--curve-secret", curveSecretFile,
      "CURVE: this server's secret key file (switchboard-keygen); tcp://, ipc://, inproc://");
  auto* allowClients =
      app.add_option("--allow-clients", allowClientsFile,
                     "CURVE: the clients admitted, one Z85 public key per line ('#' comments)");
  curveSecret->needs(allowClients);
  allowClients->needs(curveSecret);
  app.add_option("--log-level", logLevel, "debug, info, warning or error (to stderr)")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}))
      ->capture_default_str();
  app.add_option("--stats-interval-ms", statsIntervalMs,
                 "log the stats as one JSON line (and write --stats-file) this often; 0: at exit "
                 "only")
      ->check(CLI::Range(0, 3600 * 1000))
      ->capture_default_str();
  app.add_option("--stats-file", statsFile,
                 "write the latest stats as JSON to this file (replaced atomically)");
  app.add_option("--journal", journalFile,
                 "serve record(token), appending each token as a line to this file");
  app.add_option("--registry", registryUrl,
                 "register as --topic and --topic.--name in this registry (redis://host:port) "
                 "while serving; unregistered when stopped");
  app.add_option("--advertise", advertise,
                 "the URL clients reach this server at, registered (default: the endpoint bound; "
                 "set it when listening on a wildcard address)");
  app.add_option("--registry-ttl-ms", registryTtlMs,
                 "how long the registration outlives this server if it dies (refreshed every "
                 "third of it)")
      ->check(CLI::Range(30, 3600 * 1000))
      ->capture_default_str();
  addGraceOption(app, "--unregister-grace-ms", unregisterGraceMs,
                 "after unregistering at SIGINT/SIGTERM, keep serving this long before the drain, "
                 "so that clients following the registry stop sending first (a second signal "
                 "cuts it short)");
  CLI11_PARSE(app, argc, argv);
  pool.wakeAnotherAfter = std::chrono::microseconds(wakeAnotherAfterUs);
  pool.takeLeadAfter = std::chrono::microseconds(takeLeadAfterUs);
  serverOptions.refuseAfterStop = std::chrono::milliseconds(refuseAfterStopMs);
  // A stop's end: the refusing, then up to --drain-seconds more for the calls in flight (which
  // drain beside it).
  const auto drainDeadline = [&] {
    return deadlineAfter(serverOptions.refuseAfterStop + std::chrono::seconds(drainSeconds));
  };

  auto logger = spdlog::stderr_logger_mt("switchboard-server");
  logger->set_level(spdlog::level::from_str(logLevel));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  const LogSink log = spdlogSink(logger);

  ZmqTransport::Options zmqOptions;
  if (!curveSecretFile.empty()) {
    if (listen.rfind("memory://", 0) == 0) {
      std::cerr << "switchboard-server: CURVE needs a ZeroMQ URL (tcp://, ipc://, inproc://)\n";
      return 2;
    }
    Result<std::string> secret = readZ85KeyFile(curveSecretFile);
    Result<std::set<std::string>> allowed = readZ85KeyListFile(allowClientsFile);
    for (const Status& s : {secret.status(), allowed.status()}) {
      if (!s) {
        std::cerr << "switchboard-server: " << s << "\n";
        return 2;
      }
    }
    zmqOptions.curveSecretKey = std::move(secret).value();
    zmqOptions.allowedClientKeys = std::move(allowed).value();
  }

  // Signals are taken by one thread with sigwait; every other thread has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  int journalFd = -1;
  if (!journalFile.empty()) {
    journalFd = ::open(journalFile.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (journalFd < 0) {
      std::cerr << "switchboard-server: cannot open the journal " << journalFile << ": "
                << std::strerror(errno) << "\n";
      return 2;
    }
  }

  zmqOptions.log = log;
  TransportFactory factory;
  Result<std::unique_ptr<Transport>> transport = factory.makeTransport(listen, zmqOptions);
  if (!transport) {
    std::cerr << "switchboard-server: " << transport.status() << "\n";
    return 2;
  }
  std::optional<ZmqNotificationBroker> broker;  // stopped and joined by its destructor
  if (!brokerUrl.empty()) {
    ZmqNotificationBroker::Options brokerOptions;
    brokerOptions.log = log;
    broker.emplace(factory.zmqContext(), brokerUrl, brokerOptions);
    if (Status started = broker->start(); !started) {
      std::cerr << "switchboard-server: notification broker: " << started << "\n";
      return 2;
    }
  }
  Target target;
  target.topic = topic;
  target.server = name;
  serverOptions.log = log;
  MessageHandlingServer server(**transport, target, RpcDispatcher({tools::sampleEndpoint(name, journalFd)}),
                               makeExecutor(executorKind, pool), serverOptions);
  if (Status started = server.start(); !started) {
    std::cerr << "switchboard-server: " << started << "\n";
    return 1;
  }
  auto* zmq = dynamic_cast<ZmqTransport*>(transport->get());
  auto* tcp = dynamic_cast<MsgpackRpcTcpTransport*>(transport->get());
  const std::string endpoint = zmq ? zmq->boundEndpoint() : tcp ? tcp->boundEndpoint() : listen;
  std::cout << "listening on " << endpoint << std::endl;
  if (broker) std::cout << "notification broker on " << broker->boundEndpoint() << std::endl;
  logger->info("serving topic {} as {} on {} with the {} executor", topic, name, endpoint,
               executorKind);

  // Registered once serving, unregistered before the drain (clients stop sending new calls
  // while the calls they sent are answered).
  std::unique_ptr<Registry> registry;
  std::unique_ptr<Registry::Registration> registration;
  if (!registryUrl.empty()) {
    Result<std::unique_ptr<Registry>> made = makeRegistry(registryUrl, log);
    Result<std::unique_ptr<Registry::Registration>> registered =
        made ? (*made)->registerServer({.topic = topic,
                                        .server = name,
                                        .url = advertise.empty() ? endpoint : advertise},
                                       std::chrono::milliseconds(registryTtlMs))
             : Result<std::unique_ptr<Registry::Registration>>(made.status());
    if (!registered) {
      std::cerr << "switchboard-server: registry: " << registered.status() << "\n";
      server.stop();
      (void)server.wait(drainDeadline());
      return 2;
    }
    registry = std::move(made).value();
    registration = std::move(registered).value();
    std::cout << "registered as " << topic << "." << name << " in " << registryUrl << std::endl;
  }

  const auto reportStats = [&] {
    const std::string json = statsJson(server.stats(), zmq);
    logger->info("stats {}", json);
    if (!statsFile.empty() && !writeStatsFile(statsFile, json)) {
      logger->warn("cannot write the stats file {}", statsFile);
    }
  };
  std::mutex reporterMutex;
  std::condition_variable reporterWake;
  bool serving = true;  // guarded by reporterMutex
  std::thread statsReporter([&] {
    if (statsIntervalMs == 0) return;
    std::unique_lock<std::mutex> lock(reporterMutex);
    while (!reporterWake.wait_for(lock, std::chrono::milliseconds(statsIntervalMs),
                                  [&] { return !serving; })) {
      reportStats();
    }
  });

  std::thread signalWaiter([&] {
    int received = 0;
    sigwait(&signals, &received);
    if (registration) {
      if (Status removed = registration->close(); !removed) {
        logger->warn("could not unregister (the entry expires by its TTL): {}", removed.toString());
      }
      // Calls keep coming until the clients' watches drop this server: serve them normally, so
      // that none arrives at a socket that is closing.
      const timespec grace{unregisterGraceMs / 1000, (unregisterGraceMs % 1000) * 1000000L};
      (void)sigtimedwait(&signals, nullptr, &grace);
    }
    server.stop();
  });
  if (executorKind == "blocking") {
    if (Status s = server.execute(); !s) {
      std::cerr << "switchboard-server: " << s << "\n";
      pthread_kill(signalWaiter.native_handle(), SIGTERM);  // release the waiter
    }
  }
  signalWaiter.join();  // returns once a signal stopped the server
  const Status drained = server.wait(drainDeadline());
  {
    std::lock_guard<std::mutex> lock(reporterMutex);
    serving = false;
  }
  reporterWake.notify_all();
  statsReporter.join();
  reportStats();
  if (!drained) {
    std::cerr << "switchboard-server: " << drained << "\n";
    return 1;
  }
  return 0;
}
