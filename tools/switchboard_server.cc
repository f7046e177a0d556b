// switchboard-server: the sample RPC server. Serves the sample service on one URL with the
// chosen executor; SIGINT/SIGTERM stop it, drain in-flight calls and exit 0.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>
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

std::unique_ptr<Executor> makeExecutor(const std::string& kind, size_t threads) {
  if (kind == "blocking") return std::make_unique<BlockingExecutor>();
  if (kind == "eventloop") return std::make_unique<EventLoopExecutor>();
  ThreadPoolExecutor::Options options;
  options.threads = threads;
  return std::make_unique<ThreadPoolExecutor>(options);
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
  size_t threads = 4;
  std::string name = hostName();
  std::string topic = "switchboard";
  int drainSeconds = 30;
  app.add_option("--listen", listen, "URL to serve on (tcp://, ipc://, inproc://, memory://)")
      ->capture_default_str();
  app.add_option("--executor", executorKind, "threadpool, blocking or eventloop")
      ->check(CLI::IsMember({"threadpool", "blocking", "eventloop"}))
      ->capture_default_str();
  app.add_option("--threads", threads, "thread-pool workers")->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--name", name, "server name in the target")->capture_default_str();
  app.add_option("--topic", topic, "topic served")->capture_default_str();
  app.add_option("--drain-seconds", drainSeconds, "how long a stop waits for in-flight calls")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // Signals are taken by one thread with sigwait; every other thread has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  TransportFactory factory;
  Result<std::unique_ptr<Transport>> transport = factory.makeTransport(listen);
  if (!transport) {
    std::cerr << "switchboard-server: " << transport.status() << "\n";
    return 2;
  }
  Target target;
  target.topic = topic;
  target.server = name;
  MessageHandlingServer server(**transport, target, RpcDispatcher({tools::sampleEndpoint()}),
                               makeExecutor(executorKind, threads));
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
