// MessageHandlingServer: takes messages for a Target from a Transport and runs them on an
// Executor through an RpcDispatcher, with the lifecycle contract of docs/ARCHITECTURE.md.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <memory>

#include "base/deadline.h"
#include "base/histogram.h"
#include "base/log.h"
#include "base/status.h"
#include "executors/executor.h"
#include "messaging/dispatcher.h"
#include "messaging/serializer.h"
#include "messaging/target.h"
#include "transports/transport.h"

namespace switchboard {

namespace detail {
class ServerCore;
class Serving;
}

// Why a message was taken from the transport and not answered.
enum class DropReason {
  kMalformed,      // undecodable, with no message id to answer
  kNotForAServer,  // a response or heartbeat sent to a server
  kReplyNotSent,   // the transport refused the answer (peer gone, high-water mark)
  kCastFailed,     // a cast's handler failed or was refused (casts have no answer)
};
inline constexpr size_t kDropReasonCount = 4;
std::string_view dropReasonName(DropReason reason);  // "malformed", "not_for_a_server", ...

// Every server also answers two built-ins, whatever the access policy: "_health" -> "serving"
// or "draining" (after stop()), and "_introspect" -> RpcDispatcher::introspect().
// Thread-safe. Lifecycle (the same as Executor's):
//   start()    non-blocking: listens and arms the executor; concurrent callers wait for the one
//              run; no-op when running; after a stop() it first finishes the old epoch's wait();
//              a failed start() (bad target, listen error) returns the error and may be retried.
//   execute()  blocking executor only: serves on the calling thread until stop().
//   stop()     non-blocking, idempotent, any thread including a handler; after it returns no new
//              message is dispatched.
//   wait(d)    until every accepted message is handled and replied, threads joined and the
//              listener released; kTimeout at `d`; kWouldDeadlock from a handler thread.
//   ~          stop() + wait().
class MessageHandlingServer final {
 public:
  struct Options {
    size_t pollBatch = 64;  // messages taken from the transport per poll
    // Calls taken and not answered yet, deferred ones included; a request past it is refused
    // kOverloaded at once, without running (the executor's own limits count tasks only).
    size_t maxUnansweredCalls = 65536;
    const Serializer* serializer = nullptr;  // borrowed; null means pass-through
    LogSink log = stderrLogSink();
    Duration hangWarningAfter = std::chrono::seconds(10);
    // After stop(), calls that still arrive are refused kShuttingDown (a Network sends them to
    // another server) for at least this long before the listener closes, so that a call sent
    // before its client learnt of the drain is not lost in a closed socket. wait() includes it
    // (and its "possible hang" warning comes that much later).
    Duration refuseAfterStop = Duration::zero();
  };

  // One method's calls since construction, answered ones only.
  struct MethodStats {
    std::map<std::string, uint64_t> outcomes;  // by statusCodeName ("Ok", "Timeout", ...)
    HistogramSnapshot latency;  // from taking the request off the transport to sending the answer
  };

  // Counters since construction.
  struct Stats {
    uint64_t received = 0;       // messages taken from the transport
    uint64_t replied = 0;        // replies sent (results and errors)
    uint64_t failed = 0;         // calls answered with an error
    uint64_t rejected = 0;       // calls refused kOverloaded (by the executor's limits or
                                 // maxUnansweredCalls)
    uint64_t dropped = 0;        // messages that could not be answered: the sum of `drops`
    std::map<std::string, uint64_t> drops;  // by dropReasonName; reasons never seen are absent
    uint64_t cancelled = 0;      // cancel messages that found their call
    uint64_t inFlight = 0;       // calls taken and not answered yet
    // By method name; names the dispatcher does not know share one entry, "(unknown)".
    std::map<std::string, MethodStats> methods;
  };

  // `transport` must outlive the server. The executor is owned.
  MessageHandlingServer(Transport& transport, Target target, RpcDispatcher dispatcher,
                        std::unique_ptr<Executor> executor, Options options);
  MessageHandlingServer(Transport& transport, Target target, RpcDispatcher dispatcher,
                        std::unique_ptr<Executor> executor);
  ~MessageHandlingServer();
  MessageHandlingServer(const MessageHandlingServer&) = delete;
  MessageHandlingServer& operator=(const MessageHandlingServer&) = delete;

  Status start();
  Status execute();
  void stop();
  Status wait(Deadline deadline = kNoDeadline);

  bool isRunning() const;
  const Target& target() const;
  Executor& executor();
  Stats stats() const;

 private:
  std::unique_ptr<detail::ServerCore> core_;
  std::unique_ptr<detail::Serving> serving_;  // after core_: stopped and waited for first
};

}  // namespace switchboard
