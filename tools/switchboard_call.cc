// switchboard-call: the CLI client. Calls (or casts) METHOD with JSON arguments, once or --repeat
// times, over one server or a network of several; results go to stdout as JSON, errors to stderr.
#include <CLI/CLI.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "discovery/registry_factory.h"
#include "executors/event_loop_executor.h"
#include "messaging/network.h"
#include "messaging/notification_listener.h"
#include "messaging/notifier.h"
#include "messaging/registry_network.h"
#include "messaging/rpc_client.h"
#include "tools/json.h"
#include "transports/transport_factory.h"

using namespace switchboard;

namespace {

enum ExitCode {
  kExitOk = 0,
  kExitUsage = 2,
  kExitTimeout = 3,
  kExitRemote = 4,  // the server answered with an error
  kExitConnection = 5,
};

int exitCodeFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kTimeout:
      return kExitTimeout;
    case StatusCode::kTransportError:
    case StatusCode::kPeerLost:
    case StatusCode::kShuttingDown:
      return kExitConnection;
    case StatusCode::kInvalidTarget:
      return kExitUsage;
    default:
      return kExitRemote;
  }
}

// Whole lines to stdout and stderr. Thread-safe: network events arrive on a network thread while
// the main thread reports outcomes, and no line may be cut by another.
class LineWriter {
 public:
  void out(const std::string& line) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::cout << line << std::endl;
  }
  void err(const std::string& line) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::cerr << line << std::endl;
  }

 private:
  std::mutex mutex_;
};

// Prints `s` as {"error":{...}} on stderr; returns its exit code.
int report(LineWriter& writer, const Status& s) {
  Map error{{"code", std::string(statusCodeName(s.code()))}, {"message", s.message()}};
  if (!s.remoteType().empty()) error.emplace_back("type", s.remoteType());
  writer.err(Value(Map{{"error", Value(std::move(error))}}).toJson());
  return exitCodeFor(s);
}

// The network's and the transports' log as {"log":{...}} lines on stderr: errors always, warnings
// with `verbose` (the network's own are left out: its events say the same).
LogSink jsonLogSink(LineWriter& writer, bool verbose) {
  return [&writer, verbose](const LogRecord& record) {
    if (record.level < LogLevel::kWarning) return;
    if (record.level == LogLevel::kWarning && (!verbose || record.component == "network")) return;
    Map fields;
    for (const LogField& field : record.fields) fields.emplace_back(std::string(field.key), field.value);
    writer.err(Value(Map{{"log", Value(Map{{"level", std::string(logLevelName(record.level))},
                                           {"component", std::string(record.component)},
                                           {"message", std::string(record.message)},
                                           {"fields", Value(std::move(fields))}})}})
                   .toJson());
  };
}

std::chrono::milliseconds millis(int64_t ms) { return std::chrono::milliseconds(ms); }

// Parses `app`; returns the exit code to leave with, or nothing to go on.
std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  return std::nullopt;
}

// switchboard-call notify: publishes one notification.
int notifyMain(int argc, char** argv) {
  CLI::App app("switchboard-call notify: publish one notification (delivery is not confirmed).");
  std::string connect = "tcp://127.0.0.1:5556";
  std::string topic = "notifications";
  std::string priorityName = "info";
  std::string eventType;
  std::string publisherId = "switchboard-call";
  std::string payload;
  app.add_option("--connect", connect, "transport URL (ZeroMQ: the notification broker)")
      ->capture_default_str();
  app.add_option("--topic", topic, "notification topic")->capture_default_str();
  app.add_option("--priority", priorityName,
                 "audit, debug, info, warn, error, critical or sample")
      ->capture_default_str();
  app.add_option("--event-type", eventType, "e.g. instance.create")->required();
  app.add_option("--publisher-id", publisherId)->capture_default_str();
  app.add_option("payload", payload, "the payload, a JSON value")->required();
  if (std::optional<int> code = parse(app, argc, argv)) return *code;
  LineWriter writer;
  const std::optional<Priority> priority = parsePriority(priorityName);
  if (!priority) {
    return report(writer, Status(StatusCode::kInvalidTarget, "unknown priority " + priorityName));
  }
  Result<Value> value = tools::parseJson(payload);
  if (!value) return report(writer, Status(StatusCode::kInvalidTarget, value.status().message()));
  TransportFactory factory;
  ZmqTransport::Options zmqOptions;
  zmqOptions.log = jsonLogSink(writer, false);
  Result<std::unique_ptr<Transport>> transport = factory.makeTransport(connect, zmqOptions);
  if (!transport) return report(writer, transport.status());
  Notifier::Options options;
  options.log = jsonLogSink(writer, true);
  Notifier notifier(**transport, publisherId, {topic}, options);
  notifier.notify(*priority, Value(), eventType, std::move(value).value());
  return notifier.stats().failed == 0 ? kExitOk : kExitConnection;
}

// switchboard-call listen: prints one JSON line per notification received.
int listenMain(int argc, char** argv) {
  CLI::App app(
      "switchboard-call listen: print each notification received as one JSON line.\n"
      "Ends after --count notifications (exit 0), or at --timeout (exit 3 when a --count was\n"
      "not reached, else 0).");
  std::string connect = "tcp://127.0.0.1:5556";
  std::vector<std::string> topics;
  std::vector<std::string> priorityNames;
  std::string pool;
  int64_t count = 0;
  int64_t timeoutMs = 0;
  app.add_option("--connect", connect, "transport URL (ZeroMQ: the notification broker)")
      ->capture_default_str();
  app.add_option("--topic", topics, "notification topic (repeatable)")->required();
  app.add_option("--priority", priorityNames, "priorities to receive (repeatable; default all)");
  app.add_option("--pool", pool, "share the notifications with the listeners of this pool");
  app.add_option("--count", count, "end after this many notifications (0: never)");
  app.add_option("--timeout", timeoutMs, "end after this many ms (0: never)");
  if (std::optional<int> code = parse(app, argc, argv)) return *code;
  LineWriter writer;
  std::vector<Priority> priorities;
  for (const std::string& name : priorityNames) {
    const std::optional<Priority> priority = parsePriority(name);
    if (!priority) return report(writer, Status(StatusCode::kInvalidTarget, "unknown priority " + name));
    priorities.push_back(*priority);
  }
  if (priorities.empty()) priorities.assign(kAllPriorities.begin(), kAllPriorities.end());

  std::mutex mutex;
  std::condition_variable done;  // the waker: the count reached
  int64_t printed = 0;           // guarded by mutex
  NotificationEndpoint printer;
  for (Priority priority : priorities) {
    printer.on(priority, [&](const Notification& n) {
      writer.out(Value(Map{{"message_id", n.messageId()},
                           {"publisher_id", n.publisherId},
                           {"event_type", n.eventType},
                           {"priority", std::string(priorityName(n.priority))},
                           {"payload", n.payload},
                           {"timestamp", n.timestamp()},
                           {"context", n.context}})
                     .toJson());
      std::lock_guard<std::mutex> lock(mutex);
      if (++printed == count) done.notify_all();
      return NotificationResult::kHandled;
    });
  }
  TransportFactory factory;
  ZmqTransport::Options zmqOptions;
  zmqOptions.log = jsonLogSink(writer, false);
  Result<std::unique_ptr<Transport>> transport = factory.makeTransport(connect, zmqOptions);
  if (!transport) return report(writer, transport.status());
  std::vector<Target> targets;
  for (const std::string& topic : topics) targets.push_back(Target{.topic = topic});
  NotificationListener::Options options;
  options.pool = pool;
  options.log = jsonLogSink(writer, true);
  NotificationListener listener(**transport, targets, {printer},
                                std::make_unique<EventLoopExecutor>(), options);
  if (Status s = listener.start(); !s) return report(writer, s);
  // Without --count and --timeout it listens until SIGINT/SIGTERM end the process.
  std::unique_lock<std::mutex> lock(mutex);
  const auto reached = [&] { return count > 0 && printed >= count; };
  if (timeoutMs > 0) {
    done.wait_for(lock, millis(timeoutMs), reached);
  } else {
    done.wait(lock, reached);
  }
  const bool complete = count == 0 || printed >= count;
  lock.unlock();
  listener.stop();
  (void)listener.wait(deadlineAfter(std::chrono::seconds(5)));
  return complete ? kExitOk : kExitTimeout;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string_view(argv[1]) == "notify") return notifyMain(argc - 1, argv + 1);
  if (argc > 1 && std::string_view(argv[1]) == "listen") return listenMain(argc - 1, argv + 1);
  CLI::App app(
      "switchboard-call: call a Switchboard server, or a network of several.\n"
      "Prints one line per call: the result as JSON on stdout, or the error as JSON on stderr.\n"
      "Exit codes (of the last failed call, 0 when all succeeded): 0 ok, 2 usage, 3 timeout,\n"
      "4 error returned by the server, 5 connection.");
  std::vector<std::string> connect;
  int64_t timeoutMs = 5000;
  bool cast = false;
  std::string topic = "switchboard";
  std::string server;
  std::string method;
  std::vector<std::string> args;
  int64_t repeat = 1;
  int64_t intervalMs = 0;
  bool idempotent = false;
  bool events = false;
  const Network::Options networkDefaults;
  std::string preferred;
  bool noAutoConnect = false;
  const std::map<std::string, SelectionPolicy> policies = {
      {"sticky", SelectionPolicy::kStickyPrimary},
      {"round-robin", SelectionPolicy::kRoundRobin},
      {"least-in-flight", SelectionPolicy::kLeastInFlight}};
  std::string policy = "sticky";
  auto msOf = [](Duration d) {
    return static_cast<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  int64_t pingIntervalMs = msOf(networkDefaults.pingInterval);
  int64_t pingTimeoutMs = msOf(networkDefaults.pingTimeout);
  int64_t connectTimeoutMs = msOf(networkDefaults.connectTimeout);
  const CLI::Range positiveMs(int64_t{1}, int64_t{86400000});

  auto* connectOption =
      app.add_option("--connect", connect,
                     "server URL (tcp://, ipc://, inproc://, msgpack+tcp://, memory://), "
                     "repeatable (default tcp://127.0.0.1:5555); several make a network with "
                     "failover")
          ->allow_extra_args(false);
  std::string registryUrl;
  app.add_option("--registry", registryUrl,
                 "find the servers of --topic (or --topic.--server) in this registry "
                 "(redis://host:port, file:PATH) and follow them as they come and go")
      ->excludes(connectOption);
  app.add_option("--timeout", timeoutMs, "deadline of each call in ms")
      ->check(positiveMs)
      ->capture_default_str();
  app.add_flag("--cast", cast,
               "send without waiting for a reply (several --connect: once a main server is "
               "chosen, waiting for one at most --timeout)");
  app.add_option("--topic", topic, "target topic")->capture_default_str();
  app.add_option("--server", server,
                 "target server name (memory:// transports; with --registry: only that server)");
  app.add_option("--repeat", repeat, "make the call N times, one output line each")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000000}))
      ->capture_default_str();
  app.add_option("--interval-ms", intervalMs, "pause between calls in ms")
      ->check(CLI::Range(int64_t{0}, int64_t{86400000}))
      ->capture_default_str();
  app.add_flag("--idempotent", idempotent,
               "the call is safe to run twice: re-sent to another server when one fails with it "
               "unanswered (several --connect)");
  app.add_option("--preferred", preferred,
                 "the wanted main server, one of the --connect URLs (default: the first)");
  app.add_flag("--no-auto-connect", noAutoConnect,
               "connect only the preferred server; no failover to the others");
  app.add_option("--policy", policy, "how calls are spread: sticky, round-robin, least-in-flight")
      ->check(CLI::IsMember({"sticky", "round-robin", "least-in-flight"}))
      ->capture_default_str();
  app.add_option("--ping-interval-ms", pingIntervalMs, "between pings of each server")
      ->check(positiveMs)
      ->capture_default_str();
  app.add_option("--ping-timeout-ms", pingTimeoutMs, "how long a ping may stay unanswered")
      ->check(positiveMs)
      ->capture_default_str();
  app.add_option("--connect-timeout-ms", connectTimeoutMs, "for each server's handshake")
      ->check(positiveMs)
      ->capture_default_str();
  app.add_flag("--events", events,
               "print the network's status events (several --connect) and the transports' "
               "warnings to stderr as JSON lines");
  std::string curveServerKeyFile;
  std::string curveSecretFile;
  auto* curveServerKey = app.add_option("--curve-server-key", curveServerKeyFile,
                                        "CURVE: the server's public key file (its .pub)");
  auto* curveSecret = app.add_option("--curve-secret", curveSecretFile,
                                     "CURVE: this client's secret key file (switchboard-keygen)");
  curveServerKey->needs(curveSecret);
  curveSecret->needs(curveServerKey);
  app.add_option("method", method, "method to call (or: notify, listen; see their --help)")
      ->required();
  app.add_option("args", args, "arguments, each a JSON value");
  if (std::optional<int> code = parse(app, argc, argv)) return *code;
  LineWriter writer;
  if (connect.empty() && registryUrl.empty()) connect.push_back("tcp://127.0.0.1:5555");

  Array params;
  for (const std::string& arg : args) {
    Result<Value> v = tools::parseJson(arg);
    if (!v) {
      return report(writer, Status(StatusCode::kInvalidTarget,
                                   "argument '" + arg + "': " + v.status().message()));
    }
    params.push_back(std::move(v).value());
  }

  Target target;
  target.topic = topic;
  target.server = server;
  RpcClient::Options options;
  options.timeout = millis(timeoutMs);
  options.idempotent = idempotent;

  // Declared in the order they must outlive each other: the factory its transports, the
  // connector the network, the event callback's subscription the writer it prints with.
  TransportFactory factory;
  std::unique_ptr<Transport> transport;           // one --connect: direct
  std::unique_ptr<TransportConnector> connector;  // several, or a registry: a network
  std::unique_ptr<Registry> registry;
  std::optional<RegistryNetwork> followed;  // the network of a registry, following it
  std::optional<Network> network;
  Network::Subscription subscription;
  std::optional<RpcClient> client;
  ZmqTransport::Options zmqOptions;
  zmqOptions.log = jsonLogSink(writer, events);
  if (!curveServerKeyFile.empty()) {  // the client's public key is derived from its secret
    Result<std::string> serverKey = readZ85KeyFile(curveServerKeyFile);
    Result<std::string> secret = readZ85KeyFile(curveSecretFile);
    for (const Status& s : {serverKey.status(), secret.status()}) {
      if (!s) return report(writer, Status(StatusCode::kInvalidTarget, s.message()));
    }
    zmqOptions.curveServerKey = std::move(serverKey).value();
    zmqOptions.curveSecretKey = std::move(secret).value();
  }
  if (connect.size() == 1) {  // (--registry leaves --connect empty)
    Result<std::unique_ptr<Transport>> made = factory.makeTransport(connect.front(), zmqOptions);
    if (!made) return report(writer, made.status());
    transport = std::move(made).value();
    Result<RpcClient> created = RpcClient::create(*transport, target, options);
    if (!created) return report(writer, created.status());
    client.emplace(std::move(created).value());
  } else {
    connector = std::make_unique<TransportConnector>(factory, zmqOptions);
    Network::Options networkOptions;
    networkOptions.servers = connect;
    networkOptions.preferred = preferred;
    networkOptions.autoConnect = !noAutoConnect;
    networkOptions.policy = policies.at(policy);
    networkOptions.topic = topic;
    networkOptions.connectTimeout = millis(connectTimeoutMs);
    networkOptions.pingInterval = millis(pingIntervalMs);
    networkOptions.pingTimeout = millis(pingTimeoutMs);
    networkOptions.log = jsonLogSink(writer, events);
    if (registryUrl.empty()) {
      Result<Network> made = Network::create(*connector, std::move(networkOptions));
      if (!made) return report(writer, made.status());
      network.emplace(std::move(made).value());
    } else {
      Result<std::unique_ptr<Registry>> madeRegistry =
          makeRegistry(registryUrl, jsonLogSink(writer, events));
      if (!madeRegistry) return report(writer, madeRegistry.status());
      registry = std::move(madeRegistry).value();
      Result<RegistryNetwork> made =
          RegistryNetwork::create(*connector, *registry, server.empty() ? topic : topic + "." + server,
                                  std::move(networkOptions));
      if (!made) return report(writer, made.status());
      followed.emplace(std::move(made).value());
      network.emplace(followed->network());
    }
    if (events) {
      subscription = network->subscribe([&writer](const NetworkEvent& event) {
        writer.err(
            Value(Map{{"event", Value(Map{{"kind", std::string(networkEventKindName(event.kind))},
                                          {"server", event.server},
                                          {"detail", event.detail}})}})
                .toJson());
      });
    }
    // Calls made before a main server exists wait for one, within their deadline.
    Result<RpcClient> created = RpcClient::create(*network, target, options);
    if (!created) return report(writer, created.status());
    client.emplace(std::move(created).value());
  }

  if (cast && network) {
    // A cast is not kept waiting for a main server as calls are: wait here, within the timeout.
    std::mutex mutex;
    std::condition_variable haveMain;  // the waker: a kMainChanged event naming a server
    bool found = false;                // guarded by mutex
    Network::Subscription mainWatch = network->subscribe([&](const NetworkEvent& event) {
      if (event.kind != NetworkEvent::Kind::kMainChanged || event.server.empty()) return;
      std::lock_guard<std::mutex> lock(mutex);
      found = true;
      haveMain.notify_all();
    });
    std::unique_lock<std::mutex> lock(mutex);
    if (network->status().main.empty()) {
      haveMain.wait_for(lock, millis(timeoutMs), [&] { return found; });
    }
  }

  int exitCode = kExitOk;
  for (int64_t i = 0; i < repeat; ++i) {
    if (i > 0 && intervalMs > 0) std::this_thread::sleep_for(millis(intervalMs));  // pacing
    if (cast) {
      if (Status sent = client->castValue(method, params); !sent) exitCode = report(writer, sent);
      continue;
    }
    Result<Value> result = client->callValue(method, params);
    if (result) {
      writer.out(result->toJson());
    } else {
      exitCode = report(writer, result.status());
    }
  }
  // The events of the shutdown are not the calls' business.
  subscription.release();
  return exitCode;
}
