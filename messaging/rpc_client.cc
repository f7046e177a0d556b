// RpcClient: message ids, the table of calls in flight, reply matching, deadlines (one timer
// thread per channel) and exception rebuilding.
#include "messaging/rpc_client.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "messaging/detail/wire.h"

namespace switchboard {

namespace detail {

// State shared by an RpcClient and its prepared copies. Thread-safe.
class ClientCore {
 public:
  ClientCore(const Serializer* serializer, LogSink log)
      : serializer_(serializer ? serializer : &noOpSerializer_), log_(std::move(log)) {}

  ~ClientCore() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      timerWake_.notify_all();
    }
    if (timer_.joinable()) timer_.join();
    channel_.reset();  // no reply callback runs after this
    std::unordered_map<uint32_t, Pending> orphans;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      orphans.swap(pending_);
      deadlines_.clear();
    }
    for (auto& [id, call] : orphans) {
      call.done(Status(StatusCode::kShuttingDown, "client destroyed with the call in flight"));
    }
  }

  Status open(Transport& transport) {
    Result<std::unique_ptr<ClientChannel>> channel =
        transport.openChannel([this](std::string bytes) { onReply(std::move(bytes)); });
    if (!channel) return channel.status();
    channel_ = std::move(channel).value();
    timer_ = std::thread([this] { expireLoop(); });
    return Status::ok();
  }

  void call(const Target& target, std::string_view method, Array params, const Context& context,
            Deadline deadline, std::optional<Duration> monitor, RpcClient::Callback done);
  Status cast(const Target& target, std::string_view method, Array params,
              const Context& context);
  Value serializeContext(const Context& context) const;

  std::shared_mutex exceptionsMutex_;
  // guarded by exceptionsMutex_
  std::map<std::string, std::function<std::exception_ptr(const std::string&)>, std::less<>>
      exceptions_;
  std::atomic<uint64_t> calls_{0}, timeouts_{0}, peerLost_{0}, heartbeats_{0}, lateReplies_{0},
      badReplies_{0};

 private:
  struct Pending {
    RpcClient::Callback done;
    std::multimap<Deadline, uint32_t>::iterator expiry;  // min(deadline, liveness)
    Address to;
    Deadline deadline;                 // the caller's
    std::optional<Duration> monitor;   // call monitor: liveness = last sign of life + monitor
  };

  // When `call` expires: its deadline, or earlier when its monitor sees no sign of life.
  static Deadline expiryOf(const Pending& call) {
    return call.monitor ? std::min(call.deadline, deadlineAfter(*call.monitor)) : call.deadline;
  }
  void onHeartbeat(uint32_t msgid);

  void onReply(std::string bytes);
  void expireLoop();
  Extension extensionFor(const Target& target, const Context& context) const;
  Status rebuildException(Status error);

  const NoOpSerializer noOpSerializer_;
  const Serializer* const serializer_;
  const LogSink log_;
  const DecodeLimits limits_;
  std::unique_ptr<ClientChannel> channel_;  // set by open(); reset first by the destructor
  std::thread timer_;                       // expires calls; joined by the destructor

  std::mutex mutex_;
  std::condition_variable timerWake_;
  bool stopping_ = false;                        // guarded by mutex_
  uint32_t nextId_ = 0;                          // guarded by mutex_: the message-id authority
  std::unordered_map<uint32_t, Pending> pending_;  // guarded by mutex_
  std::multimap<Deadline, uint32_t> deadlines_;    // guarded by mutex_
};

Value ClientCore::serializeContext(const Context& context) const {
  return serializer_->serializeContext(context);
}

Extension ClientCore::extensionFor(const Target& target, const Context& context) const {
  Extension ext;
  ext.ns = target.ns;
  if (target.version) ext.version = target.version->toString();
  if (!context.isNil()) ext.context = serializeContext(context);
  return ext;
}

void ClientCore::call(const Target& target, std::string_view method, Array params,
                      const Context& context, Deadline deadline,
                      std::optional<Duration> monitor, RpcClient::Callback done) {
  RequestMessage request;
  request.method = std::string(method);
  for (Value& p : params) request.params.push_back(serializer_->serializeEntity(context, std::move(p)));
  request.ext = extensionFor(target, context);
  const auto budget = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  request.ext.budgetMs = budget.count() > 0 ? static_cast<uint64_t>(budget.count()) : 0;
  if (monitor) {
    const auto interval = std::chrono::duration_cast<std::chrono::milliseconds>(*monitor / 2);
    request.ext.callMonitorMs = std::max<int64_t>(interval.count(), 1);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      done(Status(StatusCode::kShuttingDown, "client is closing"));
      return;
    }
    do {
      request.msgid = nextId_++;
    } while (pending_.count(request.msgid) != 0);
    Pending call{std::move(done), {}, target.address(), deadline, monitor};
    call.expiry = deadlines_.emplace(expiryOf(call), request.msgid);
    if (call.expiry == deadlines_.begin()) timerWake_.notify_all();
    pending_.emplace(request.msgid, std::move(call));
  }
  calls_.fetch_add(1, std::memory_order_relaxed);
  std::string bytes;
  encodeMessage(request, bytes);
  if (Status sent = channel_->send(target.address(), std::move(bytes), deadline); !sent) {
    RpcClient::Callback failed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = pending_.find(request.msgid);
      if (it == pending_.end()) return;  // already answered or expired
      failed = std::move(it->second.done);
      deadlines_.erase(it->second.expiry);
      pending_.erase(it);
    }
    failed(sent);
  }
}

Status ClientCore::cast(const Target& target, std::string_view method, Array params,
                        const Context& context) {
  NotificationMessage cast;
  cast.method = std::string(method);
  for (Value& p : params) cast.params.push_back(serializer_->serializeEntity(context, std::move(p)));
  cast.ext = extensionFor(target, context);
  std::string bytes;
  encodeMessage(cast, bytes);
  return channel_->send(target.address(), std::move(bytes), deadlineAfter(std::chrono::seconds(5)));
}

Status ClientCore::rebuildException(Status error) {
  if (error.code() != StatusCode::kRemoteError || error.remoteType().empty()) return error;
  std::shared_lock<std::shared_mutex> lock(exceptionsMutex_);
  auto it = exceptions_.find(error.remoteType());
  if (it == exceptions_.end()) return error;
  return error.withException(it->second(error.message()));
}

void ClientCore::onHeartbeat(uint32_t msgid) {
  heartbeats_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = pending_.find(msgid);
  if (it == pending_.end() || !it->second.monitor) return;  // late, or not monitored: ignore
  Pending& call = it->second;
  deadlines_.erase(call.expiry);
  call.expiry = deadlines_.emplace(expiryOf(call), msgid);
}

void ClientCore::onReply(std::string bytes) {
  DecodedMessage decoded = decodeMessage(bytes, limits_);
  if (decoded && std::holds_alternative<HeartbeatMessage>(decoded.message())) {
    onHeartbeat(std::get<HeartbeatMessage>(decoded.message()).msgid);
    return;
  }
  if (!decoded || !std::holds_alternative<ResponseMessage>(decoded.message())) {
    badReplies_.fetch_add(1, std::memory_order_relaxed);
    log_(LogLevel::kWarning, "client",
         "ignored a reply: " + (decoded ? std::string("not a response") : decoded.status().message()));
    return;
  }
  auto& response = std::get<ResponseMessage>(decoded.message());
  RpcClient::Callback done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pending_.find(response.msgid);
    if (it == pending_.end()) {
      lateReplies_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    done = std::move(it->second.done);
    deadlines_.erase(it->second.expiry);
    pending_.erase(it);
  }
  if (!response.error.isOk()) {
    done(rebuildException(std::move(response.error)));
    return;
  }
  Result<Value> result = Status(StatusCode::kInvalidState, "unset");
  try {
    result = serializer_->deserializeEntity(Value(), std::move(response.result));
  } catch (const std::exception& e) {
    result = Status(StatusCode::kBadArguments, std::string("serializer: ") + e.what());
  }
  done(std::move(result));
}

void ClientCore::expireLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    const Deadline next = deadlines_.empty() ? kNoDeadline : deadlines_.begin()->first;
    if (Clock::now() < next) {
      timerWake_.wait_until(lock, next);
      continue;
    }
    const uint32_t id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = pending_.find(id);
    Pending expired = std::move(it->second);
    pending_.erase(it);
    lock.unlock();
    const bool timedOut = Clock::now() >= expired.deadline;
    (timedOut ? timeouts_ : peerLost_).fetch_add(1, std::memory_order_relaxed);
    // Tell the server the caller gave up (best effort: a handler may watch isCancelled()).
    std::string cancel;
    encodeMessage(CancelMessage{id}, cancel);
    (void)channel_->send(expired.to, std::move(cancel),
                         deadlineAfter(std::chrono::milliseconds(100)));
    expired.done(timedOut ? Status(StatusCode::kTimeout, "no reply before the deadline")
                          : Status(StatusCode::kPeerLost,
                                   "the server stopped sending call-in-progress heartbeats"));
    lock.lock();
  }
}

}  // namespace detail

Result<RpcClient> RpcClient::create(Transport& transport, Target target) {
  return create(transport, std::move(target), Options{});
}

Result<RpcClient> RpcClient::create(Transport& transport, Target target, Options options) {
  if (Status s = target.validateForClient(false); !s) return s;
  auto core = std::make_shared<detail::ClientCore>(options.serializer, options.log);
  if (Status s = core->open(transport); !s) return s;
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
  core_->call(target_, method, std::move(params), options_.context,
              deadlineAfter(options_.timeout), options_.callMonitorTimeout, std::move(done));
}

boost::future<Result<Value>> RpcClient::callAsync(std::string_view method, Array params) const {
  auto promise = std::make_shared<boost::promise<Result<Value>>>();
  boost::future<Result<Value>> future = promise->get_future();
  callAsync(method, std::move(params),
            [promise](Result<Value> outcome) { promise->set_value(std::move(outcome)); });
  return future;
}

Result<Value> RpcClient::callValue(std::string_view method, Array params) const {
  struct Waiter {
    std::mutex mutex;
    std::condition_variable done;
    std::optional<Result<Value>> outcome;
  };
  auto waiter = std::make_shared<Waiter>();
  const Deadline deadline = deadlineAfter(options_.timeout);
  if (Status s = checkCall(true); !s) return s;
  core_->call(target_, method, std::move(params), options_.context, deadline,
              options_.callMonitorTimeout, [waiter](Result<Value> outcome) {
                std::lock_guard<std::mutex> lock(waiter->mutex);
                waiter->outcome.emplace(std::move(outcome));
                waiter->done.notify_all();
              });
  std::unique_lock<std::mutex> lock(waiter->mutex);
  // The timer thread answers at the deadline; the grace only guards against a stalled timer.
  if (!waiter->done.wait_until(lock, deadline + std::chrono::seconds(1),
                               [&] { return waiter->outcome.has_value(); })) {
    return Status(StatusCode::kTimeout, "no outcome before the deadline");
  }
  return std::move(*waiter->outcome);
}

Status RpcClient::castValue(std::string_view method, Array params) const {
  if (Status s = checkCall(false); !s) return s;
  return core_->cast(target_, method, std::move(params), options_.context);
}

void RpcClient::registerExceptionFactory(
    std::string typeName, std::function<std::exception_ptr(const std::string&)> factory) {
  std::unique_lock<std::shared_mutex> lock(core_->exceptionsMutex_);
  core_->exceptions_.insert_or_assign(std::move(typeName), std::move(factory));
}

RpcClient::Stats RpcClient::stats() const {
  Stats s;
  s.calls = core_->calls_.load();
  s.timeouts = core_->timeouts_.load();
  s.peerLost = core_->peerLost_.load();
  s.heartbeats = core_->heartbeats_.load();
  s.lateReplies = core_->lateReplies_.load();
  s.badReplies = core_->badReplies_.load();
  return s;
}

}  // namespace switchboard
