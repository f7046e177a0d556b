// RpcClient: calls (with a deadline, sync or async), casts and fanout casts to a Target over a
// Transport; remote errors come back typed, registered exception types rebuilt as themselves.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>

#include <boost/thread/future.hpp>

#include "base/deadline.h"
#include "base/histogram.h"
#include "base/log.h"
#include "base/status.h"
#include "messaging/dispatcher.h"
#include "messaging/network.h"
#include "messaging/serializer.h"
#include "messaging/target.h"
#include "messaging/value.h"
#include "transports/transport.h"

namespace switchboard {

namespace detail {
class ClientCore;
}

// A cheap handle: copies and prepare()d variants share one channel (or network), one message-id
// space and one table of calls in flight. Thread-safe. The transport (or the network's
// connector) must outlive every handle. Outcome callbacks may drop the last handle.
class RpcClient {
 public:
  struct Options {
    // The deadline of a call that names none, and how long a cast may wait to be sent (then
    // it is dropped, counted by the transport). Never infinite.
    Duration timeout = std::chrono::seconds(60);
    // The highest version this client may request; calls above it fail kUnsupportedVersion.
    std::optional<Version> versionCap{};
    // The call monitor (oslo's call_monitor_timeout): when set, the server sends
    // call-in-progress heartbeats every half of it, and a call fails kPeerLost once no
    // heartbeat or reply came for this long, however far its timeout is. Unset: no monitor.
    std::optional<Duration> callMonitorTimeout{};
    // Safe to run twice: after a server fails with the call unanswered, the network re-sends it
    // to another server instead of failing it kPeerLost. (Only with several servers.)
    bool idempotent = false;
    Context context{};                       // sent with every call and cast
    const Serializer* serializer = nullptr;  // borrowed; null means pass-through
    LogSink log = stderrLogSink();
  };

  // prepare()'s overrides; unset fields keep the current value.
  struct Overrides {
    std::optional<std::string> exchange{}, topic{}, server{}, ns{};
    std::optional<bool> fanout{};
    std::optional<Version> version{};
    std::optional<Duration> timeout{};
    std::optional<Version> versionCap{};
    std::optional<Duration> callMonitorTimeout{};
    std::optional<bool> idempotent{};
    std::optional<Context> context{};
  };

  struct Stats {
    uint64_t calls = 0;         // calls sent
    uint64_t timeouts = 0;      // calls that ended kTimeout
    uint64_t peerLost = 0;      // calls failed kPeerLost: heartbeats stopped, server failed
    uint64_t replayed = 0;      // calls re-sent to another server after one failed
    uint64_t failovers = 0;     // times the main server failed and another took over
    uint64_t heartbeats = 0;    // call-in-progress heartbeats received
    uint64_t lateReplies = 0;   // replies for no call in flight (after its timeout)
    uint64_t badReplies = 0;    // replies that broke the protocol
    uint64_t callbackErrors = 0;  // outcome callbacks that threw (logged, then ignored)
    std::map<std::string, uint64_t> outcomes;  // calls ended, by statusCodeName ("Ok", ...)
    HistogramSnapshot latency;  // from the call to its outcome
  };

  // Receives a call's one outcome, on a transport thread, the client's timer thread, the
  // caller's thread (when sending failed) or a thread blocked in callValue() on the same
  // channel. Must be quick and must not block on other calls. An
  // exception it throws is logged and counted (Stats::callbackErrors), and goes no further.
  using Callback = std::function<void(Result<Value>)>;

  // Opens a channel on `transport` for `target` (which needs a topic).
  static Result<RpcClient> create(Transport& transport, Target target, Options options);
  static Result<RpcClient> create(Transport& transport, Target target);
  // Calls over `network`'s servers (which it keeps alive): failover, replay of idempotent calls.
  static Result<RpcClient> create(const Network& network, Target target, Options options);
  static Result<RpcClient> create(const Network& network, Target target);

  // A copy with overrides, sharing this client's channel.
  RpcClient prepare(const Overrides& overrides) const;
  const Target& target() const { return target_; }

  // True when `version` is within the version cap (or there is none).
  bool canSendVersion(const Version& version) const;

  // Calls `method` and waits for its outcome until the timeout. On expiry the call fails
  // kTimeout and a cancel is sent to the server. Over ZeroMQ the waiting thread receives its
  // channel's replies itself (one such thread per channel at a time), so the outcome callbacks
  // of other calls on that channel may run on it meanwhile.
  Result<Value> callValue(std::string_view method, Array params) const;
  // Typed: arguments through ValueTraits, the result converted to R (kBadArguments when the
  // reply has another type; R = void ignores it).
  template <typename R = Value, typename... A>
  Result<R> call(std::string_view method, A&&... args) const {
    Result<Value> v = callValue(method, Array{toValue(std::forward<A>(args))...});
    if constexpr (std::is_void_v<R>) {
      return v.status();
    } else {
      if (!v) return v.status();
      Result<R> converted = fromValue<R>(*v);
      if (!converted) {
        return Status(StatusCode::kBadArguments, "result: " + converted.status().message());
      }
      return converted;
    }
  }

  // Starts a call; `done` gets exactly one outcome. Never blocks on the reply.
  void callAsync(std::string_view method, Array params, Callback done) const;
  // Starts a call; the future holds its one outcome (use .then() to chain).
  boost::future<Result<Value>> callAsync(std::string_view method, Array params) const;

  // Sends without waiting for an answer; to every server of the topic when the target is
  // fanout. Ok means handed to the transport, not handled.
  Status castValue(std::string_view method, Array params) const;
  template <typename... A>
  Status cast(std::string_view method, A&&... args) const {
    return castValue(method, Array{toValue(std::forward<A>(args))...});
  }

  // Remote errors of type E (E's demangled name, as the server reports it) come back with an
  // E built from the message: Result::value() and Status::raise() throw it.
  template <typename E>
  void registerException() {
    static_assert(std::is_constructible_v<E, std::string>, "E must be constructible from string");
    registerExceptionFactory(demangledTypeName(typeid(E)), [](const std::string& message) {
      return std::make_exception_ptr(E(message));
    });
  }
  void registerExceptionFactory(std::string typeName,
                                std::function<std::exception_ptr(const std::string&)> factory);

  Stats stats() const;

 private:
  RpcClient(std::shared_ptr<detail::ClientCore> core, Target target, Options options);
  Status checkCall(bool forCall) const;

  std::shared_ptr<detail::ClientCore> core_;
  Target target_;
  Options options_;
};

}  // namespace switchboard
