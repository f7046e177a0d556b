// RedisRegistry: a Registry kept in a Redis server (7 or later) that servers and clients on
// many hosts share. Key layout, clock and outage behaviour: docs/DEPLOYMENT.md, "Registry".
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "base/timer_queue.h"
#include "discovery/detail/soft_state_registry.h"

namespace switchboard {

// A soft-state Registry in Redis: per key a sorted set "switchboard:<key>" of URLs scored by
// their expiry on the Redis server's clock, pruned on read; changes published on the channel
// "switchboard:changes". One connection for commands (serialized; reconnected on demand, with
// back-off), one for the subscription (its own thread, reconnected with back-off, pinged every
// refreshInterval). Every connect and command is bounded by the timeouts below.
class RedisRegistry final : public detail::SoftStateRegistry {
 public:
  struct Options {
    std::string url{};  // redis://host[:port][/db]; port 6379 and db 0 by default
    Duration connectTimeout = std::chrono::seconds(1);
    Duration commandTimeout = std::chrono::seconds(1);
    Duration refreshInterval = std::chrono::seconds(1);  // re-reads of watched keys; pings
    Duration backoffInitial = std::chrono::milliseconds(100);  // between connection attempts,
    Duration backoffMax = std::chrono::seconds(5);             // doubling up to this
    // Where refreshes, re-reads and watch callbacks run; borrowed, must outlive the registry.
    // Null: a thread of its own.
    TimerQueue* timers = nullptr;
    LogSink log = stderrLogSink();
  };

  // kInvalidTarget for a bad URL, kBadArguments for a timeout or interval that is not
  // positive. An unreachable server is not an error: the registry connects when it can.
  static Result<std::unique_ptr<RedisRegistry>> create(Options options);

 private:
  RedisRegistry(std::unique_ptr<detail::RegistryBackend> backend,
                detail::SoftStateOptions options);
};

}  // namespace switchboard
