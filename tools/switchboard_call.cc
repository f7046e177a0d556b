// switchboard-call: the CLI client. Calls (or casts) METHOD with JSON arguments and prints the
// result as JSON; errors go to stderr as JSON with an exit code per kind (see --help).
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

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

int report(const Status& s) {
  Map error{{"code", std::string(statusCodeName(s.code()))}, {"message", s.message()}};
  if (!s.remoteType().empty()) error.emplace_back("type", s.remoteType());
  std::cerr << Value(Map{{"error", Value(std::move(error))}}).toJson() << std::endl;
  return exitCodeFor(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(
      "switchboard-call: call a Switchboard server.\n"
      "Exit codes: 0 ok, 2 usage, 3 timeout, 4 error returned by the server, 5 connection.");
  std::vector<std::string> connect;
  int64_t timeoutMs = 5000;
  bool cast = false;
  std::string topic = "switchboard";
  std::string server;
  std::string method;
  std::vector<std::string> args;
  app.add_option("--connect", connect, "server URL, repeatable (default tcp://127.0.0.1:5555)")
      ->allow_extra_args(false);
  app.add_option("--timeout", timeoutMs, "call deadline in ms")->check(CLI::Range(int64_t{1}, int64_t{86400000}))
      ->capture_default_str();
  app.add_flag("--cast", cast, "send without waiting for a reply");
  app.add_option("--topic", topic, "target topic")->capture_default_str();
  app.add_option("--server", server, "target server name (memory:// transports)");
  app.add_option("method", method, "method to call")->required();
  app.add_option("args", args, "arguments, each a JSON value");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  if (connect.empty()) connect.push_back("tcp://127.0.0.1:5555");
  if (connect.size() > 1) {
    return report(Status(StatusCode::kInvalidTarget,
                         "several --connect URLs need the multi-server client network, which this "
                         "build does not have yet"));
  }

  Array params;
  for (const std::string& arg : args) {
    Result<Value> v = tools::parseJson(arg);
    if (!v) return report(Status(StatusCode::kInvalidTarget, "argument '" + arg + "': " + v.status().message()));
    params.push_back(std::move(v).value());
  }

  TransportFactory factory;
  Result<std::unique_ptr<Transport>> transport = factory.makeTransport(connect.front());
  if (!transport) return report(transport.status());
  Target target;
  target.topic = topic;
  target.server = server;
  RpcClient::Options options;
  options.timeout = std::chrono::milliseconds(timeoutMs);
  Result<RpcClient> client = RpcClient::create(**transport, target, options);
  if (!client) return report(client.status());
  if (cast) {
    Status sent = client->castValue(method, std::move(params));
    return sent ? kExitOk : report(sent);
  }
  Result<Value> result = client->callValue(method, std::move(params));
  if (!result) return report(result.status());
  std::cout << result->toJson() << std::endl;
  return kExitOk;
}
