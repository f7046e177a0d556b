// RpcClient: requests from typed calls, outcomes back through the serializer, and remote
// exceptions rebuilt. Message ids, the calls in flight, deadlines and the servers are the
// NetworkCore's (messaging/network.cc), in direct mode for a single transport.
#include "messaging/rpc_client.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <utility>

#include "messaging/detail/network_core.h"
#include "messaging/detail/wire.h"

namespace switchboard {

namespace detail {

// The exception types a client rebuilds.
class ExceptionRegistry {
 public:
  void add(std::string typeName, std::function<std::exception_ptr(const std::string&)> factory) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    factories_.insert_or_assign(std::move(typeName), std::move(factory));
  }
  Status rebuild(Status error) const {
    if (error.code() != StatusCode::kRemoteError || error.remoteType().empty()) return error;
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = factories_.find(error.remoteType());
    if (it == factories_.end()) return error;
    return error.withException(it->second(error.message()));
  }

 private:
  mutable std::shared_mutex mutex_;
  // guarded by mutex_
  std::map<std::string, std::function<std::exception_ptr(const std::string&)>, std::less<>>
      factories_;
};

const Serializer& passThroughSerializer() {
  static const NoOpSerializer serializer;
  return serializer;
}

// A client's outcomes: results deserialized, remote exceptions rebuilt. Thread-safe.
class ClientOutcomes final : public OutcomeFilter {
 public:
  explicit ClientOutcomes(const Serializer& serializer) : serializer_(serializer) {}
  Result<Value> apply(Result<Value> outcome) const override {
    if (!outcome) return exceptions_.rebuild(outcome.status());
    try {
      return serializer_.deserializeEntity(Value(), std::move(outcome).value());
    } catch (const std::exception& e) {
      return Status(StatusCode::kBadArguments, std::string("serializer: ") + e.what());
    }
  }
  ExceptionRegistry& exceptions() { return exceptions_; }

 private:
  const Serializer& serializer_;
  ExceptionRegistry exceptions_;
};

// State shared by an RpcClient and its prepared copies. Thread-safe.
class ClientCore {
 public:
  ClientCore(std::shared_ptr<NetworkCore> network, const Serializer* serializer)
      : network_(std::move(network)),
        serializer_(serializer ? serializer : &passThroughSerializer()),
        outcomes_(std::make_shared<ClientOutcomes>(*serializer_)) {}

  // Ends `timeout` after the network took it.
  void call(const Target& target, std::string_view method, Array params,
            const RpcClient::Options& options, Duration timeout, RpcClient::Callback done);
  // call(), then receives on the calling thread where it can: NetworkCore::callAndReceive().
  void callAndReceive(const Target& target, std::string_view method, Array params,
                      const RpcClient::Options& options, RpcClient::Callback done,
                      ReceiveWaker& waker, Deadline giveUp);
  Status cast(const Target& target, std::string_view method, Array params, const Context& context,
              Duration timeout);
  Network::Stats stats() const { return network_->stats(); }
  ExceptionRegistry& exceptions() { return outcomes_->exceptions(); }

 private:
  Extension extensionFor(const Target& target, const Context& context) const;
  OutgoingCall outgoing(const Target& target, std::string_view method, Array params,
                        const RpcClient::Options& options, Duration timeout) const;

  const std::shared_ptr<NetworkCore> network_;
  const Serializer* const serializer_;
  // Shared with the outcomes of its calls, which may come after this client is gone.
  const std::shared_ptr<ClientOutcomes> outcomes_;
};

Extension ClientCore::extensionFor(const Target& target, const Context& context) const {
  Extension ext;
  ext.ns = target.ns;
  if (target.version) ext.version = target.version->toString();
  if (!context.isNil()) ext.context = serializer_->serializeContext(context);
  return ext;
}

OutgoingCall ClientCore::outgoing(const Target& target, std::string_view method, Array params,
                                  const RpcClient::Options& options, Duration timeout) const {
  OutgoingCall call;
  call.to = target.address();
  call.request.method = std::string(method);
  for (Value& p : params) p = serializer_->serializeEntity(options.context, std::move(p));
  call.request.params = std::move(params);
  call.request.ext = extensionFor(target, options.context);
  if (options.callMonitorTimeout) {
    const auto interval =
        std::chrono::duration_cast<std::chrono::milliseconds>(*options.callMonitorTimeout / 2);
    call.request.ext.callMonitorMs = std::max<int64_t>(interval.count(), 1);
  }
  call.timeout = timeout;
  call.monitor = options.callMonitorTimeout;
  call.idempotent = options.idempotent;
  return call;
}

void ClientCore::call(const Target& target, std::string_view method, Array params,
                      const RpcClient::Options& options, Duration timeout,
                      RpcClient::Callback done) {
  network_->call(outgoing(target, method, std::move(params), options, timeout),
                 RawOutcome{outcomes_, std::move(done)});
}

void ClientCore::callAndReceive(const Target& target, std::string_view method, Array params,
                                const RpcClient::Options& options, RpcClient::Callback done,
                                ReceiveWaker& waker, Deadline giveUp) {
  network_->callAndReceive(outgoing(target, method, std::move(params), options, options.timeout),
                           RawOutcome{outcomes_, std::move(done)}, waker, giveUp);
}

Status ClientCore::cast(const Target& target, std::string_view method, Array params,
                        const Context& context, Duration timeout) {
  NotificationMessage cast;
  cast.method = std::string(method);
  for (Value& p : params) p = serializer_->serializeEntity(context, std::move(p));
  cast.params = std::move(params);
  cast.ext = extensionFor(target, context);
  return network_->cast(target.address(), cast, timeout);
}

}  // namespace detail

Result<RpcClient> RpcClient::create(Transport& transport, Target target) {
  return create(transport, std::move(target), Options{});
}

Result<RpcClient> RpcClient::create(Transport& transport, Target target, Options options) {
  if (Status s = target.validateForClient(false); !s) return s;
  auto network = std::make_shared<detail::NetworkCore>(transport, options.log);
  if (Status s = network->start(); !s) return s;
  auto core = std::make_shared<detail::ClientCore>(std::move(network), options.serializer);
  return RpcClient(std::move(core), std::move(target), std::move(options));
}

Result<RpcClient> RpcClient::create(const Network& network, Target target) {
  return create(network, std::move(target), Options{});
}

Result<RpcClient> RpcClient::create(const Network& network, Target target, Options options) {
  if (Status s = target.validateForClient(false); !s) return s;
  auto core = std::make_shared<detail::ClientCore>(network.core_, options.serializer);
  return RpcClient(std::move(core), std::move(target), std::move(options));
}

RpcClient::RpcClient(std::shared_ptr<detail::ClientCore> core, Target target, Options options)
    : core_(std::move(core)), target_(std::move(target)), options_(std::move(options)) {}

RpcClient RpcClient::prepare(const Overrides& o) const {
  RpcClient copy(*this);
  if (o.exchange) copy.target_.exchange = *o.exchange;
  if (o.topic) copy.target_.topic = *o.topic;
  if (o.server) copy.target_.server = *o.server;
  if (o.ns) copy.target_.ns = *o.ns;
  if (o.fanout) copy.target_.fanout = *o.fanout;
  if (o.version) copy.target_.version = *o.version;
  if (o.timeout) copy.options_.timeout = *o.timeout;
  if (o.versionCap) copy.options_.versionCap = *o.versionCap;
  if (o.callMonitorTimeout) copy.options_.callMonitorTimeout = *o.callMonitorTimeout;
  if (o.idempotent) copy.options_.idempotent = *o.idempotent;
  if (o.context) copy.options_.context = *o.context;
  return copy;
}

bool RpcClient::canSendVersion(const Version& version) const {
  return !options_.versionCap || options_.versionCap->canServe(version);
}

Status RpcClient::checkCall(bool forCall) const {
  if (Status s = target_.validateForClient(forCall); !s) return s;
  if (target_.version && !canSendVersion(*target_.version)) {
    return Status(StatusCode::kUnsupportedVersion,
                  "version " + target_.version->toString() + " is above the cap " +
                      options_.versionCap->toString());
  }
  return Status::ok();
}

void RpcClient::callAsync(std::string_view method, Array params, Callback done) const {
  if (Status s = checkCall(true); !s) return done(s);
  core_->call(target_, method, std::move(params), options_, options_.timeout,
              std::move(done));
}

boost::future<Result<Value>> RpcClient::callAsync(std::string_view method, Array params) const {
  auto promise = std::make_shared<boost::promise<Result<Value>>>();
  boost::future<Result<Value>> future = promise->get_future();
  callAsync(method, std::move(params),
            [promise](Result<Value> outcome) { promise->set_value(std::move(outcome)); });
  return future;
}

namespace {

// The waker of this thread's callValue() that receives on its channel; null while one is in use
// (a callValue() made from an outcome callback that runs inside it waits without receiving).
class CallerWaker {
 public:
  static CallerWaker* acquire() {
    thread_local CallerWaker mine;
    if (mine.inUse_ || !mine.waker_.valid()) return nullptr;
    mine.inUse_ = true;
    mine.waker_.rearm();
    return &mine;
  }
  ReceiveWaker& waker() { return waker_; }
  void release() { inUse_ = false; }

 private:
  ReceiveWaker waker_;
  bool inUse_ = false;
};

}  // namespace

Result<Value> RpcClient::callValue(std::string_view method, Array params) const {
  struct Waiter {
    std::mutex mutex;
    std::condition_variable done;
    std::optional<Result<Value>> outcome;
    ReceiveWaker* receiving = nullptr;  // guarded by mutex: woken with the outcome
  };
  auto waiter = std::make_shared<Waiter>();
  if (Status s = checkCall(true); !s) return s;
  // The network's clock gives the call's deadline; this thread waits on the steady clock.
  const Deadline giveUp = deadlineAfter(options_.timeout + std::chrono::seconds(1));
  auto done = [waiter](Result<Value> outcome) {
    std::lock_guard<std::mutex> lock(waiter->mutex);
    waiter->outcome.emplace(std::move(outcome));
    waiter->done.notify_all();
    if (waiter->receiving) waiter->receiving->wake();
  };
  if (CallerWaker* caller = CallerWaker::acquire()) {
    waiter->receiving = &caller->waker();
    core_->callAndReceive(target_, method, std::move(params), options_, std::move(done),
                          caller->waker(), giveUp);
    std::lock_guard<std::mutex> lock(waiter->mutex);
    waiter->receiving = nullptr;  // no outcome wakes it once another call may use it
    caller->release();
  } else {
    core_->call(target_, method, std::move(params), options_, options_.timeout, std::move(done));
  }
  std::unique_lock<std::mutex> lock(waiter->mutex);
  // The timer thread answers at the deadline; the grace only guards against a stalled timer.
  if (!waiter->done.wait_until(lock, giveUp,
                               [&] { return waiter->outcome.has_value(); })) {
    return Status(StatusCode::kTimeout, "no outcome before the deadline");
  }
  return std::move(*waiter->outcome);
}

Status RpcClient::castValue(std::string_view method, Array params) const {
  if (Status s = checkCall(false); !s) return s;
  return core_->cast(target_, method, std::move(params), options_.context, options_.timeout);
}

void RpcClient::registerExceptionFactory(
    std::string typeName, std::function<std::exception_ptr(const std::string&)> factory) {
  core_->exceptions().add(std::move(typeName), std::move(factory));
}

RpcClient::Stats RpcClient::stats() const {
  const Network::Stats n = core_->stats();
  Stats s;
  s.calls = n.calls;
  s.timeouts = n.timeouts;
  s.peerLost = n.peerLost;
  s.replayed = n.replayed;
  s.failovers = n.failovers;
  s.heartbeats = n.heartbeats;
  s.lateReplies = n.lateReplies;
  s.badReplies = n.badReplies;
  s.callbackErrors = n.callbackErrors;
  s.outcomes = n.outcomes;
  s.latency = n.latency;
  return s;
}

}  // namespace switchboard
