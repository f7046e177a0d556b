// SoftStateRegistry: the Registry behaviour the in-memory and Redis registries share (refreshed
// entries, lookups falling back to the last good list, watches), over a RegistryBackend.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/deadline.h"
#include "base/log.h"
#include "base/status.h"
#include "base/timer_queue.h"
#include "discovery/registry.h"

namespace switchboard::detail {

// Where a soft-state registry keeps its entries: per key ("topic", "topic.server") a set of
// URLs, each with an expiry. Calls come one at a time (the registry serializes them), each
// bounded; start() comes first, stop() last.
class RegistryBackend {
 public:
  // Called from any thread when the members of `key` may have changed (by anyone); an empty key
  // when any key may have (notifications were missed). Calls may still come while stop() runs.
  using ChangeCallback = std::function<void(const std::string& key)>;

  virtual ~RegistryBackend() = default;
  RegistryBackend() = default;
  RegistryBackend(const RegistryBackend&) = delete;
  RegistryBackend& operator=(const RegistryBackend&) = delete;

  virtual void start(ChangeCallback onChange) = 0;
  // Adds `entry.url` under the topic key and the server key, or renews it there, to expire
  // `ttl` from now.
  virtual Status put(const RegistryEntry& entry, Duration ttl) = 0;
  // Removes `entry.url` from both keys.
  virtual Status remove(const RegistryEntry& entry) = 0;
  // The members of `key` that have not expired, in any order; expired ones are dropped.
  virtual Result<std::vector<std::string>> read(const std::string& key) = 0;
  // Connections re-established after a loss, so far. Thread-safe, unlike the calls above.
  virtual uint64_t reconnects() const = 0;
  // Ends the notifications and joins the backend's threads. Idempotent.
  virtual void stop() = 0;
};

struct SoftStateOptions {
  Duration refreshInterval{};  // between re-reads of every watched key
  TimerQueue* timers = nullptr;  // borrowed, outlives the registry; null: a thread of its own
  LogSink log{};
};

// The base of InMemoryRegistry and RedisRegistry. Refreshes, re-reads, notified re-reads and
// their watch callbacks run on the timer queue; the first write of a registration and the first
// callback of a watch run on the caller's thread. Destruction stops every refresh (entries are
// left to expire), releases every watch and stops the backend; it must not run in a callback.
class SoftStateRegistry : public Registry {
 public:
  ~SoftStateRegistry() override;

  Result<std::unique_ptr<Registration>> registerServer(RegistryEntry entry,
                                                       Duration ttl) final;
  Result<std::vector<std::string>> lookup(std::string_view key) final;
  Result<std::unique_ptr<Watch>> watch(std::string key, WatchCallback onChange) final;
  RegistryStats stats() const final;

 protected:
  SoftStateRegistry(std::unique_ptr<RegistryBackend> backend, SoftStateOptions options);

 private:
  struct State;
  class RegistrationHandle;
  class WatchHandle;
  std::shared_ptr<State> state_;
};

}  // namespace switchboard::detail
