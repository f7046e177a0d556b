// TransportFactory: makes a Transport from a URL (tcp://, ipc://, inproc://, msgpack+tcp://,
// memory://). It owns
// what transports made from it share: the ZeroMQ context and the named in-memory brokers.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "base/status.h"
#include "transports/in_memory_transport.h"
#include "transports/msgpack_rpc_tcp_transport.h"
#include "transports/transport.h"
#include "transports/zmq_transport.h"

namespace switchboard {

// No globals: main() (or a test) owns the factory, and the factory must outlive every transport
// it made. Thread-safe.
class TransportFactory final {
 public:
  TransportFactory() = default;
  TransportFactory(const TransportFactory&) = delete;
  TransportFactory& operator=(const TransportFactory&) = delete;

  // tcp://host:port, ipc://path, inproc://name: a ZmqTransport on this factory's context.
  // memory://name: the in-memory broker `name` of this factory (every transport made for the
  // same name shares it). msgpack+tcp://host:port: a MsgpackRpcTcpTransport taking `log`,
  // `lingerMs` and `maxMessageBytes` from `zmqOptions` (kInvalidTarget for a malformed URL, or
  // when `zmqOptions` ask for CURVE, which it does not have). kInvalidTarget for another scheme.
  Result<std::unique_ptr<Transport>> makeTransport(std::string_view url);
  Result<std::unique_ptr<Transport>> makeTransport(std::string_view url,
                                                   const ZmqTransport::Options& zmqOptions);

  ZmqContext& zmqContext() { return zmq_; }

 private:
  ZmqContext zmq_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<InMemoryTransport>, std::less<>> memory_;  // by mutex_
};

}  // namespace switchboard
