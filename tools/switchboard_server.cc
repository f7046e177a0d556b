// switchboard-server: the sample RPC server. Serves the sample service on one URL with the
// chosen executor; SIGINT/SIGTERM stop it, drain in-flight calls and exit 0.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "executors/blocking_executor.h"
#include "executors/event_loop_executor.h"
#include "executors/thread_pool_executor.h"
#include "messaging/server.h"
#include "tools/sample_service.h"
#include "transports/transport_factory.h"

using namespace switchboard;

namespace {

// `pool` is used by the thread-pool executor only.
std::unique_ptr<Executor> makeExecutor(const std::string& kind,
                                       const ThreadPoolExecutor::Options& pool) {
  if (kind == "blocking") return std::make_unique<BlockingExecutor>();
  if (kind == "eventloop") return std::make_unique<EventLoopExecutor>();
  return std::make_unique<ThreadPoolExecutor>(pool);
}

std::string hostName() {
  char name[256] = {};
  return ::gethostname(name, sizeof name - 1) == 0 ? std::string(name) : std::string("server");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("switchboard-server: the sample Switchboard RPC server");
  std::string listen = "tcp://127.0.0.1:5555";
  std::string executorKind = "threadpool";
  ThreadPoolExecutor::Options pool;
  std::string name = hostName();
  std::string topic = "switchboard";
  int drainSeconds = 30;
  std::string curveSecretFile;
  std::string allowClientsFile;
  app.add_option("--listen", listen, "URL to serve on (tcp://, ipc://, inproc://, memory://)")
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
  app.add_option("--name", name, "server name in the target")->capture_default_str();
  app.add_option("--topic", topic, "topic served")->capture_default_str();
  app.add_option("--drain-seconds", drainSeconds, "how long a stop waits for in-flight calls")
      ->capture_default_str();
  auto* curveSecret = app.add_option(
      "--curve-secret", curveSecretFile,
      "CURVE: this server's secret key file (switchboard-keygen); tcp://, ipc://, inproc://");
  auto* allowClients =
      app.add_option("--allow-clients", allowClientsFile,
                     "CURVE: the clients admitted, one Z85 public key per line ('#' comments)");
  curveSecret->needs(allowClients);
  allowClients->needs(curveSecret);
  CLI11_PARSE(app, argc, argv);

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

  TransportFactory factory;
  Result<std::unique_ptr<Transport>> transport = factory.makeTransport(listen, zmqOptions);
  if (!transport) {
    std::cerr << "switchboard-server: " << transport.status() << "\n";
    return 2;
  }
  Target target;
  target.topic = topic;
  target.server = name;
  MessageHandlingServer server(**transport, target, RpcDispatcher({tools::sampleEndpoint()}),
                               makeExecutor(executorKind, pool));
  if (Status started = server.start(); !started) {
    std::cerr << "switchboard-server: " << started << "\n";
    return 1;
  }
  auto* zmq = dynamic_cast<ZmqTransport*>(transport->get());
  std::cout << "listening on " << (zmq ? zmq->boundEndpoint() : listen) << std::endl;

  std::thread signalWaiter([&] {
    int received = 0;
    sigwait(&signals, &received);
    server.stop();
  });
  if (executorKind == "blocking") {
    if (Status s = server.execute(); !s) {
      std::cerr << "switchboard-server: " << s << "\n";
      pthread_kill(signalWaiter.native_handle(), SIGTERM);  // release the waiter
    }
  }
  signalWaiter.join();  // returns once a signal stopped the server
  if (Status s = server.wait(deadlineAfter(std::chrono::seconds(drainSeconds))); !s) {
    std::cerr << "switchboard-server: " << s << "\n";
    return 1;
  }
  return 0;
}
