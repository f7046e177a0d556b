// The README's embedding example, built so that it stays true: a server and a client in one
// process over tcp loopback. Prints the results and exits 0.
#include <iostream>

#include "executors/thread_pool_executor.h"
#include "messaging/rpc_client.h"
#include "messaging/server.h"
#include "transports/transport_factory.h"

using namespace switchboard;

int main() {
  TransportFactory factory;                       // owns the ZeroMQ context; no globals
  auto transport = factory.makeTransport("tcp://127.0.0.1:5555").value();

  Endpoint calculator;                            // namespace "", version 1.0
  calculator.method("add", [](int64_t a, int64_t b) { return a + b; }, {"a", "b"});

  MessageHandlingServer server(*transport, Target{.topic = "calc", .server = "one"},
                               RpcDispatcher({calculator}),
                               std::make_unique<ThreadPoolExecutor>());
  server.start().value();                         // returns at once; throws on failure

  RpcClient client = RpcClient::create(*transport, Target{.topic = "calc"}).value();
  Result<int64_t> sum = client.call<int64_t>("add", 2, 3);      // 5, or a typed error
  Result<int64_t> bad = client.call<int64_t>("add", 2, "x");    // BadArguments: argument 2 ('b')
  boost::future<Result<Value>> later = client.callAsync("add", {1, 1});

  std::cout << "add(2, 3) = " << sum.value() << "\n"
            << "add(2, \"x\") -> " << bad.status() << "\n"
            << "add(1, 1) = " << later.get()->toJson() << "\n";

  server.stop();                                  // non-blocking, any thread
  server.wait(deadlineAfter(std::chrono::seconds(5))).value();
}
