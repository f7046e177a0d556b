// MessageHandlingServer: the TaskSource that turns a Listener's messages into dispatch tasks,
// the one-reply-per-call rule, cancellation, and the lifecycle hooks.
#include "messaging/server.h"

#include <array>
#include <boost/intrusive/unordered_set.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "messaging/detail/serving.h"
#include "messaging/detail/wire.h"

namespace switchboard {
namespace detail {

class CallReply;

// A call in flight: its caller (the transport's peer name) and the caller's msgid.
struct CallKey {
  std::string peer;
  uint32_t msgid = 0;
  bool operator==(const CallKey&) const = default;
};
struct CallKeyHash {
  size_t operator()(const CallKey& key) const {
    return std::hash<std::string_view>()(key.peer) ^ (size_t{key.msgid} * 0x9e3779b97f4a7c15ULL);
  }
};

// A call in flight as the registry holds it, inside its CallReply: the hook makes registering
// allocate nothing.
struct RegisteredCall : boost::intrusive::unordered_set_base_hook<
                            boost::intrusive::link_mode<boost::intrusive::safe_link>> {
  explicit RegisteredCall(CallKey callKey) : key(std::move(callKey)) {}
  const CallKey key;
  std::atomic<bool> cancelled{false};  // set by a CancelMessage for the call
};

// The calls in flight, found by CallKey. In shards, so that pool threads registering and
// answering calls seldom wait for one another (under load they slept on a single mutex for
// every call).
class CallRegistry {
 public:
  // `call` stays registered until remove(call), and must not go before. A later call with the
  // same key takes the entry over; remove() then leaves it.
  void add(RegisteredCall& call) {
    Shard& shard = shardOf(call.key);
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (auto it = shard.calls.find(call.key); it != shard.calls.end()) shard.calls.erase(it);
    if (shard.calls.size() >= shard.buckets.size()) shard.growLocked();
    shard.calls.insert(call);
  }
  void remove(RegisteredCall& call) {
    Shard& shard = shardOf(call.key);
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (call.is_linked()) shard.calls.erase(shard.calls.iterator_to(call));
  }
  // Sets the cancel flag of the call under `key`; false when no such call is in flight.
  bool cancel(const CallKey& key) {
    Shard& shard = shardOf(key);
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.calls.find(key);
    if (it == shard.calls.end()) return false;
    it->cancelled.store(true);
    return true;
  }

 private:
  struct KeyOf {
    using type = CallKey;
    const CallKey& operator()(const RegisteredCall& call) const { return call.key; }
  };
  using CallSet =
      boost::intrusive::unordered_set<RegisteredCall, boost::intrusive::key_of_value<KeyOf>,
                                      boost::intrusive::hash<CallKeyHash>,
                                      boost::intrusive::power_2_buckets<true>>;
  static constexpr size_t kShardBits = 4;
  static constexpr size_t kInitialBuckets = 8;  // per shard; doubled when as many calls
  struct alignas(64) Shard {  // a cache line each: shards do not share their mutex's line
    std::mutex mutex;
    // guarded by mutex
    std::vector<CallSet::bucket_type> buckets = std::vector<CallSet::bucket_type>(kInitialBuckets);
    CallSet calls{CallSet::bucket_traits(buckets.data(), buckets.size())};
    void growLocked() {
      std::vector<CallSet::bucket_type> twice(buckets.size() * 2);
      calls.rehash(CallSet::bucket_traits(twice.data(), twice.size()));
      buckets.swap(twice);
    }
  };
  // By the hash's top bits; the maps' buckets use its low ones.
  Shard& shardOf(const CallKey& key) {
    return shards_[CallKeyHash()(key) >> (std::numeric_limits<size_t>::digits - kShardBits)];
  }
  std::array<Shard, size_t{1} << kShardBits> shards_;
};

// One method's counters: outcomes by status code, and answer latency.
struct MethodCounters {
  std::array<std::atomic<uint64_t>, kStatusCodeCount> outcomes{};
  LatencyHistogram latency;
};

// The counters of every method the dispatcher knows (and the built-ins), made once: looked up
// without a lock, and a caller cannot grow it with made-up names (they share "(unknown)").
class MethodTable {
 public:
  explicit MethodTable(const RpcDispatcher& dispatcher) {
    add("_health");
    add("_introspect");
    add(kUnknown);
    const Value groups = dispatcher.introspect();
    for (const Value& group : groups.asArray()) {
      const Value* methods = group.find("methods");
      if (!methods || !methods->isArray()) continue;
      for (const Value& method : methods->asArray()) {
        if (const Value* name = method.find("name"); name && name->isString()) add(name->asString());
      }
    }
  }
  MethodCounters& of(std::string_view method) {
    auto it = table_.find(method);
    return it != table_.end() ? *it->second : *table_.find(kUnknown)->second;
  }
  void snapshot(std::map<std::string, MessageHandlingServer::MethodStats>& out) const {
    for (const auto& [name, counters] : table_) {
      MessageHandlingServer::MethodStats stats;
      for (size_t code = 0; code < kStatusCodeCount; ++code) {
        if (uint64_t n = counters->outcomes[code].load(std::memory_order_relaxed); n != 0) {
          stats.outcomes.emplace(statusCodeName(static_cast<StatusCode>(code)), n);
        }
      }
      stats.latency = counters->latency.snapshot();
      if (stats.latency.count != 0 || !stats.outcomes.empty()) out.emplace(name, std::move(stats));
    }
  }

 private:
  static constexpr std::string_view kUnknown = "(unknown)";
  void add(std::string_view name) {
    table_.try_emplace(std::string(name), std::make_unique<MethodCounters>());
  }
  std::map<std::string, std::unique_ptr<MethodCounters>, std::less<>> table_;
};

// Everything the server shares with its tasks; a TaskSource over the transport listener.
class ServerCore final : public TaskSource {
 public:
  ServerCore(Transport& transport, Target target, RpcDispatcher dispatcher,
             std::unique_ptr<Executor> executor, MessageHandlingServer::Options options)
      : transport_(transport),
        target_(std::move(target)),
        dispatcher_(std::move(dispatcher)),
        executor_(std::move(executor)),
        options_(std::move(options)),
        serializer_(options_.serializer ? options_.serializer : &noOpSerializer_),
        methods_(dispatcher_) {}

  Status listen();
  void releaseListener();
  Status poll(Deadline deadline, std::vector<TaskPtr>& out) override;
  void interrupt() override { listener_->interrupt(); }

  // Applies the serializer to a request's context and arguments (skipped for the pass-through
  // one). Throws what the serializer throws.
  void deserializeArguments(const Value& wireContext, Context& context, Array& params) const {
    if (serializer_ == &noOpSerializer_) {
      context = wireContext;
      return;
    }
    context = serializer_->deserializeContext(wireContext);
    for (Value& p : params) p = serializer_->deserializeEntity(context, std::move(p));
  }

  // Sends the one answer of a call.
  void finishCall(CallReply& call, Result<Value> outcome);
  void dropped(DropReason reason, std::string_view why);
  // Heartbeats for `call` every `every` until it is answered (timers of the executor).
  void scheduleHeartbeat(std::weak_ptr<CallReply> call, Duration every);
  void failedCast(const std::string& method, const Status& why);
  // At stop(): _health answers "draining", and the epoch stays open (its polling refusing new
  // calls) for options_.refuseAfterStop.
  void beginDrain();

  Transport& transport_;
  const Target target_;
  const RpcDispatcher dispatcher_;
  const std::unique_ptr<Executor> executor_;
  const MessageHandlingServer::Options options_;
  const NoOpSerializer noOpSerializer_;
  const Serializer* const serializer_;
  const DecodeLimits limits_;
  MethodTable methods_;

  // Set by listen() before the executor starts; released after it finished. Used by the
  // executor's receiving thread in between.
  std::unique_ptr<Listener> listener_;
  std::vector<IncomingPtr> incoming_;  // poll()'s scratch, receiving thread only

  // Each flag is owned by its CallReply, which removes it before it goes.
  CallRegistry calls_;

  std::atomic<bool> draining_{false};  // set by stop(), cleared by start()
  std::atomic<uint64_t> received_{0}, replied_{0}, failed_{0}, rejected_{0}, dropped_{0},
      cancelled_{0}, inFlight_{0};
  std::array<std::atomic<uint64_t>, kDropReasonCount> dropsByReason_{};
};

// The one answer of one request, and its cancel flag, cancellable from construction until
// answered. The first send() wins; later ones are ignored.
class CallReply final : public ReplySink {
 public:
  CallReply(ServerCore& core, IncomingPtr message, uint32_t msgid, MethodCounters& counters,
            Deadline received, WorkGuard work)
      : core_(core),
        message_(std::move(message)),
        msgid_(msgid),
        counters_(counters),
        received_(received),
        registered_(CallKey{std::string(message_->peer()), msgid}),
        work_(std::move(work)) {
    core_.calls_.add(registered_);
  }
  ~CallReply() override {
    if (!sent_.load()) core_.calls_.remove(registered_);  // destroyed without running
  }

  // The cancel flag, sharing this reply's lifetime.
  static std::shared_ptr<const std::atomic<bool>> cancellationOf(
      const std::shared_ptr<CallReply>& reply) {
    return {reply, &reply->registered_.cancelled};
  }

  void send(Result<Value> outcome) override {
    if (sent_.exchange(true)) return;
    core_.calls_.remove(registered_);
    core_.finishCall(*this, std::move(outcome));
    work_.reset();
  }

  // Sends a call-in-progress heartbeat; false once the call is answered.
  bool heartbeat() {
    if (sent_.load()) return false;
    std::string bytes;
    encodeMessage(HeartbeatMessage{msgid_}, bytes);
    return message_->reply(std::move(bytes)).isOk();
  }

  ServerCore& core_;
  const IncomingPtr message_;
  const uint32_t msgid_;
  MethodCounters& counters_;
  const Deadline received_;  // when the request was taken off the transport
  Context context_;  // for serializeEntity of the result

 private:
  RegisteredCall registered_;  // in core_.calls_ until answered
  std::atomic<bool> sent_{false};
  WorkGuard work_;  // keeps the executor's epoch open until answered
};

// Runs one request through the dispatcher.
class RequestTask final : public Task {
 public:
  RequestTask(std::shared_ptr<CallReply> reply, RequestMessage request, Deadline deadline)
      : reply_(std::move(reply)), request_(std::move(request)), deadline_(deadline) {}

  void run() noexcept override {
    ServerCore& core = reply_->core_;
    if (deadline_ != kNoDeadline && Clock::now() >= deadline_) {
      answer(Status(StatusCode::kTimeout, "the caller's deadline passed before dispatch"));
      return;
    }
    std::optional<Version> version;
    if (!request_.ext.version.empty()) {
      Result<Version> parsed = Version::parse(request_.ext.version);
      if (!parsed) {
        answer(parsed.status());
        return;
      }
      version = *parsed;
    }
    try {
      core.deserializeArguments(request_.ext.context, reply_->context_, request_.params);
    } catch (const std::exception& e) {
      answer(Status(StatusCode::kBadArguments, std::string("serializer: ") + e.what()));
      return;
    }
    if (request_.method == "_health") {
      answer(Value(core.draining_.load() ? "draining" : "serving"));
      return;
    }
    if (request_.method == "_introspect") {
      answer(core.dispatcher_.introspect());
      return;
    }
    CallContext ctx(reply_->context_, request_.method, reply_->message_->peer(), deadline_,
                    CallReply::cancellationOf(reply_), core.executor_.get(), reply_,
                    reply_->message_->identity());
    Result<Value> outcome =
        core.dispatcher_.dispatch(ctx, request_.ext.ns, version, request_.method,
                                  std::move(request_.params));
    if (!ctx.deferred()) answer(std::move(outcome));
  }

  // The executor did not run it (Overloaded, ShuttingDown): the caller may send it elsewhere.
  void reject(Status why) noexcept override {
    if (why.code() == StatusCode::kOverloaded) reply_->core_.rejected_.fetch_add(1);
    reply_->send(why.asRefused());
  }

 private:
  // Answers inside run(), freeing the executor's slot first (a deferred answer frees it when
  // run() returns).
  void answer(Result<Value> outcome) {
    releaseSlot();
    reply_->send(std::move(outcome));
  }

  std::shared_ptr<CallReply> reply_;
  RequestMessage request_;
  Deadline deadline_;
};

// The outcome of a cast: nothing goes back; a failure is logged and counted. Holds the
// executor's epoch open until the handler (or its deferred completion) is done.
class CastOutcome final : public ReplySink {
 public:
  CastOutcome(ServerCore& core, std::string method, WorkGuard work)
      : core_(core), method_(std::move(method)), work_(std::move(work)) {}
  void send(Result<Value> outcome) override {
    if (sent_.exchange(true)) return;
    if (!outcome) core_.failedCast(method_, outcome.status());
    work_.reset();
  }

 private:
  ServerCore& core_;
  const std::string method_;
  std::atomic<bool> sent_{false};
  WorkGuard work_;
};

// Runs one notification (a cast) through the dispatcher.
class CastTask final : public Task {
 public:
  CastTask(ServerCore& core, IncomingPtr message, NotificationMessage cast, WorkGuard work)
      : core_(core),
        message_(std::move(message)),
        cast_(std::move(cast)),
        outcome_(std::make_shared<CastOutcome>(core, cast_.method, std::move(work))) {}

  void run() noexcept override {
    message_->acknowledge();
    std::optional<Version> version;
    if (!cast_.ext.version.empty()) {
      Result<Version> parsed = Version::parse(cast_.ext.version);
      if (!parsed) return outcome_->send(parsed.status());
      version = *parsed;
    }
    try {
      Context context;
      core_.deserializeArguments(cast_.ext.context, context, cast_.params);
      CallContext ctx(std::move(context), cast_.method, message_->peer(), kNoDeadline, nullptr,
                      core_.executor_.get(), outcome_, message_->identity());
      Result<Value> outcome =
          core_.dispatcher_.dispatch(ctx, cast_.ext.ns, version, cast_.method,
                                    std::move(cast_.params));
      if (!ctx.deferred()) outcome_->send(std::move(outcome));
    } catch (const std::exception& e) {
      outcome_->send(Status(StatusCode::kBadArguments, std::string("serializer: ") + e.what()));
    }
  }

  void reject(Status why) noexcept override {
    message_->acknowledge();
    outcome_->send(std::move(why));
  }

 private:
  ServerCore& core_;
  IncomingPtr message_;
  NotificationMessage cast_;
  std::shared_ptr<CastOutcome> outcome_;
};

Status ServerCore::listen() {
  if (Status s = target_.validateForServer(); !s) return s;
  Result<std::unique_ptr<Listener>> listener = transport_.listen(target_.address());
  if (!listener) return listener.status();
  listener_ = std::move(listener).value();
  return Status::ok();
}

void ServerCore::releaseListener() {
  if (listener_) listener_->close();
  listener_.reset();
}

Status ServerCore::poll(Deadline deadline, std::vector<TaskPtr>& out) {
  incoming_.clear();
  Status polled = listener_->poll(deadline, options_.pollBatch, incoming_);
  const Deadline now = Clock::now();
  for (IncomingPtr& message : incoming_) {
    received_.fetch_add(1, std::memory_order_relaxed);
    DecodedMessage decoded = decodeMessage(message->body(), limits_);
    message->releaseBody();
    if (!decoded) {
      const DecodeError& error = decoded.error();
      if (error.msgid) {
        std::string bytes;
        encodeMessage(ResponseMessage{*error.msgid, error.status, Value()}, bytes);
        failed_.fetch_add(1, std::memory_order_relaxed);
        if (message->reply(std::move(bytes))) replied_.fetch_add(1, std::memory_order_relaxed);
      } else {
        dropped(DropReason::kMalformed, error.status.message());
      }
      message->acknowledge();
      continue;
    }
    switch (static_cast<MessageKind>(decoded.message().index())) {
      case MessageKind::kRequest: {
        auto& request = std::get<RequestMessage>(decoded.message());
        const Deadline callerDeadline =
            request.ext.budgetMs ? now + std::chrono::milliseconds(*request.ext.budgetMs)
                                 : kNoDeadline;
        const uint32_t msgid = request.msgid;
        const uint64_t unanswered = inFlight_.fetch_add(1, std::memory_order_relaxed);
        auto reply = std::make_shared<CallReply>(*this, std::move(message), msgid,
                                                 methods_.of(request.method), now,
                                                 executor_->acquireWork());
        const bool overLimit = unanswered >= options_.maxUnansweredCalls;
        if (request.ext.callMonitorMs && !overLimit) {
          scheduleHeartbeat(reply, std::chrono::milliseconds(*request.ext.callMonitorMs));
        }
        auto task =
            std::make_unique<RequestTask>(std::move(reply), std::move(request), callerDeadline);
        if (overLimit) {
          task->reject(
              Status(StatusCode::kOverloaded, "server busy: " + std::to_string(unanswered) +
                                                  " calls unanswered (maxUnansweredCalls)"));
          break;
        }
        out.push_back(std::move(task));
        break;
      }
      case MessageKind::kNotification:
        out.push_back(std::make_unique<CastTask>(
            *this, std::move(message), std::move(std::get<NotificationMessage>(decoded.message())),
            executor_->acquireWork()));
        break;
      case MessageKind::kCancel: {
        const CallKey key{std::string(message->peer()),
                          std::get<CancelMessage>(decoded.message()).msgid};
        if (calls_.cancel(key)) cancelled_.fetch_add(1, std::memory_order_relaxed);
        message->acknowledge();
        break;
      }
      case MessageKind::kResponse:
      case MessageKind::kHeartbeat:
        dropped(DropReason::kNotForAServer, "a server does not take responses or heartbeats");
        message->acknowledge();
        break;
    }
  }
  return polled;
}

void ServerCore::finishCall(CallReply& call, Result<Value> outcome) {
  ResponseMessage response{call.msgid_, outcome.status(), Value()};
  if (outcome) {
    try {
      response.result = serializer_->serializeEntity(call.context_, std::move(outcome).value());
    } catch (const std::exception& e) {
      response.error = Status::remote(currentExceptionTypeName(), e.what());
    }
  }
  if (!response.error.isOk()) failed_.fetch_add(1, std::memory_order_relaxed);
  call.counters_.outcomes[static_cast<size_t>(response.error.code())].fetch_add(
      1, std::memory_order_relaxed);
  call.counters_.latency.record(Clock::now() - call.received_);
  inFlight_.fetch_sub(1, std::memory_order_relaxed);
  std::string bytes;
  encodeMessage(response, bytes);
  if (Status sent = call.message_->reply(std::move(bytes)); sent) {
    replied_.fetch_add(1, std::memory_order_relaxed);
  } else {
    dropped(DropReason::kReplyNotSent, "reply not sent: " + sent.toString());
  }
  call.message_->acknowledge();
}

void ServerCore::scheduleHeartbeat(std::weak_ptr<CallReply> call, Duration every) {
  (void)executor_->runAt(deadlineAfter(every), [this, call = std::move(call), every] {
    auto live = call.lock();
    if (live && live->heartbeat()) scheduleHeartbeat(live, every);
  });
}

void ServerCore::dropped(DropReason reason, std::string_view why) {
  dropped_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t n =
      dropsByReason_[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed) + 1;
  if (isLoggedOccurrence(n)) {
    options_.log(LogLevel::kWarning, "server", "dropped a message: " + std::string(why),
                 {{"reason", std::string(dropReasonName(reason))},
                  {"dropped", std::to_string(n)},
                  {"server", target_.server}});
  }
}

void ServerCore::failedCast(const std::string& method, const Status& why) {
  dropped(DropReason::kCastFailed, "cast '" + method + "' failed: " + why.toString());
}

void ServerCore::beginDrain() {
  draining_.store(true);
  if (options_.refuseAfterStop <= Duration::zero()) return;
  // The guard keeps the executor's loop, which refuses what it polls once stopped, from ending;
  // the timer lets it go. The executor is still armed: stop() runs this before stopping it.
  auto held = std::make_shared<WorkGuard>(executor_->acquireWork());
  (void)executor_->runAt(Clock::now() + options_.refuseAfterStop, [held] { held->reset(); });
}

}  // namespace detail

std::string_view dropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kMalformed:
      return "malformed";
    case DropReason::kNotForAServer:
      return "not_for_a_server";
    case DropReason::kReplyNotSent:
      return "reply_not_sent";
    case DropReason::kCastFailed:
      return "cast_failed";
  }
  return "unknown";
}

MessageHandlingServer::MessageHandlingServer(Transport& transport, Target target,
                                             RpcDispatcher dispatcher,
                                             std::unique_ptr<Executor> executor)
    : MessageHandlingServer(transport, std::move(target), std::move(dispatcher),
                            std::move(executor), Options{}) {}

MessageHandlingServer::MessageHandlingServer(Transport& transport, Target target,
                                             RpcDispatcher dispatcher,
                                             std::unique_ptr<Executor> executor, Options options)
    : core_(std::make_unique<detail::ServerCore>(
          transport, std::move(target), std::move(dispatcher), std::move(executor), options)),
      serving_(std::make_unique<detail::Serving>(
          "server", *core_->executor_, *core_,
          detail::Serving::Hooks{.open =
                                     [this] {
                                       if (Status s = core_->listen(); !s) return s;
                                       core_->draining_.store(false);
                                       return Status::ok();
                                     },
                                 .close = [this] { core_->releaseListener(); },
                                 .onStop = [this] { core_->beginDrain(); }},
          options.hangWarningAfter + options.refuseAfterStop, options.log)) {}

MessageHandlingServer::~MessageHandlingServer() = default;

Status MessageHandlingServer::start() { return serving_->start(); }

bool MessageHandlingServer::isRunning() const { return serving_->isRunning(); }

Status MessageHandlingServer::execute() { return serving_->execute(); }

void MessageHandlingServer::stop() { serving_->stop(); }

Status MessageHandlingServer::wait(Deadline deadline) { return serving_->wait(deadline); }

const Target& MessageHandlingServer::target() const { return core_->target_; }

Executor& MessageHandlingServer::executor() { return *core_->executor_; }

MessageHandlingServer::Stats MessageHandlingServer::stats() const {
  Stats s;
  s.received = core_->received_.load();
  s.replied = core_->replied_.load();
  s.failed = core_->failed_.load();
  s.rejected = core_->rejected_.load();
  s.dropped = core_->dropped_.load();
  s.cancelled = core_->cancelled_.load();
  for (size_t i = 0; i < kDropReasonCount; ++i) {
    if (uint64_t n = core_->dropsByReason_[i].load(); n != 0) {
      s.drops[std::string(dropReasonName(static_cast<DropReason>(i)))] = n;
    }
  }
  s.inFlight = core_->inFlight_.load();
  core_->methods_.snapshot(s.methods);
  return s;
}

}  // namespace switchboard
