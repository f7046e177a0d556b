// InMemoryRegistry: a Registry kept in this process, in an InMemoryRegistryStore that several
// registries share (a server's and a client's, as they would share a Redis server).
#pragma once

#include <functional>
#include <memory>

#include "base/deadline.h"
#include "base/log.h"
#include "base/timer_queue.h"
#include "discovery/detail/soft_state_registry.h"

namespace switchboard {

namespace detail {
struct InMemoryStoreState;
}

// The entries of in-memory registries: per key, URLs with their expiry on the store's clock.
// Thread-safe. Registries made on it keep what they need of it: either may be destroyed first.
class InMemoryRegistryStore final {
 public:
  // On the steady clock.
  InMemoryRegistryStore();
  // On `now` (thread-safe), e.g. a ManualTimerQueue's, so that expiries happen when a test says.
  explicit InMemoryRegistryStore(std::function<Deadline()> now);
  InMemoryRegistryStore(const InMemoryRegistryStore&) = delete;
  InMemoryRegistryStore& operator=(const InMemoryRegistryStore&) = delete;

 private:
  friend class InMemoryRegistry;
  std::shared_ptr<detail::InMemoryStoreState> state_;
};

// A soft-state Registry over a store: entries expire on the store's clock unless refreshed;
// each change notifies every registry of the store at once (on the changer's thread, which
// schedules the re-read on each registry's timer queue). Destroying a registry leaves its
// entries in the store until they expire, as a dead server's would.
class InMemoryRegistry final : public detail::SoftStateRegistry {
 public:
  struct Options {
    Duration refreshInterval = std::chrono::seconds(1);  // between re-reads of watched keys
    // Where refreshes, re-reads and watch callbacks run; borrowed, must outlive the registry.
    // Null: a thread of its own. Give the store the same clock.
    TimerQueue* timers = nullptr;
    LogSink log = stderrLogSink();
  };

  explicit InMemoryRegistry(InMemoryRegistryStore& store);
  InMemoryRegistry(InMemoryRegistryStore& store, Options options);
};

}  // namespace switchboard
