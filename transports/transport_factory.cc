// TransportFactory: URL schemes to transports; memory:// names map to shared brokers.
// A memory:// transport is a thin forwarder to the broker the factory keeps for its name.
#include "transports/transport_factory.h"

namespace switchboard {
namespace {

// Forwards to an in-memory transport shared by every transport made for one memory:// name.
class SharedInMemoryTransport final : public Transport {
 public:
  explicit SharedInMemoryTransport(std::shared_ptr<InMemoryTransport> shared)
      : shared_(std::move(shared)) {}
  Result<std::unique_ptr<Listener>> listen(const Address& address) override {
    return shared_->listen(address);
  }
  Result<std::unique_ptr<ClientChannel>> openChannel(ReplyCallback onReply,
                                                     LinkCallback onLink) override {
    return shared_->openChannel(std::move(onReply), std::move(onLink));
  }
  Status publish(std::string_view topic, std::string bytes) override {
    return shared_->publish(topic, std::move(bytes));
  }
  Result<std::unique_ptr<Listener>> subscribe(const Subscription& subscription) override {
    return shared_->subscribe(subscription);
  }

 private:
  std::shared_ptr<InMemoryTransport> shared_;
};

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

Result<std::unique_ptr<Transport>> TransportFactory::makeTransport(std::string_view url) {
  return makeTransport(url, ZmqTransport::Options{});
}

Result<std::unique_ptr<Transport>> TransportFactory::makeTransport(
    std::string_view url, const ZmqTransport::Options& zmqOptions) {
  if (startsWith(url, "memory://")) {
    const std::string_view name = url.substr(9);
    if (name.empty()) return Status(StatusCode::kInvalidTarget, "memory:// needs a name");
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = memory_.find(name);
    if (it == memory_.end()) {
      it = memory_.emplace(std::string(name), std::make_shared<InMemoryTransport>()).first;
    }
    return std::unique_ptr<Transport>(std::make_unique<SharedInMemoryTransport>(it->second));
  }
  if (startsWith(url, MsgpackRpcTcpTransport::kScheme)) {
    if (Status s = MsgpackRpcTcpTransport::checkUrl(url); !s) return s;
    if (!zmqOptions.curveSecretKey.empty() || !zmqOptions.curveServerKey.empty()) {
      return Status(StatusCode::kInvalidTarget, "msgpack+tcp:// has no CURVE: use tcp://");
    }
    MsgpackRpcTcpTransport::Options options;
    options.log = zmqOptions.log;
    options.lingerMs = zmqOptions.lingerMs;
    options.maxMessageBytes = zmqOptions.maxMessageBytes;
    return std::unique_ptr<Transport>(
        std::make_unique<MsgpackRpcTcpTransport>(std::string(url), std::move(options)));
  }
  for (std::string_view scheme : {"tcp://", "ipc://", "inproc://"}) {
    if (startsWith(url, scheme) && url.size() > scheme.size()) {
      return std::unique_ptr<Transport>(
          std::make_unique<ZmqTransport>(zmq_, std::string(url), zmqOptions));
    }
  }
  return Status(StatusCode::kInvalidTarget,
                "unsupported transport URL '" + std::string(url) +
                    "' (use tcp://, ipc://, inproc://, msgpack+tcp:// or memory://)");
}

}  // namespace switchboard
