// Registry: servers announce their endpoint under their topic; clients find the live servers of
// a topic and follow them as they come and go (docs/DEPLOYMENT.md, "Registry").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/deadline.h"
#include "base/status.h"

namespace switchboard {

// One server's endpoint. `server` is its Target's server name.
struct RegistryEntry {
  std::string topic{};
  std::string server{};
  std::string url{};

  friend bool operator==(const RegistryEntry&, const RegistryEntry&) = default;
};

// The key of one server, "topic.server"; a lookup by it finds that server alone, a lookup by
// "topic" every server of the topic.
std::string serverKey(const RegistryEntry& entry);

// kInvalidTarget unless `key` is non-empty and holds no whitespace or control character.
Status checkRegistryKey(std::string_view key);
// kInvalidTarget unless topic and url pass checkRegistryKey and server is empty or passes it.
Status checkRegistryEntry(const RegistryEntry& entry);

// Counters since construction.
struct RegistryStats {
  uint64_t registrations = 0;     // registerServer calls accepted
  uint64_t refreshes = 0;         // refresh writes that succeeded (first writes not counted)
  uint64_t unregistrations = 0;   // entries removed by Registration::close()
  uint64_t lookups = 0;           // lookups and watch re-reads answered
  uint64_t lookupsFromCache = 0;  // ...of which from the last good list, the backend failing
  uint64_t failures = 0;          // backend operations that failed
  uint64_t outages = 0;           // times the backend turned unreachable (logged once each)
  uint64_t notifications = 0;     // change notifications received
  uint64_t watchCallbacks = 0;    // calls of watch callbacks
  uint64_t reconnects = 0;        // backend connections re-established after a loss
};

// Thread-safe. Lookups and watches list URLs sorted and without duplicates. When the backend is
// unreachable, a lookup answers the last list it read for the key, and a watch keeps its list
// (no callback); the outage is logged once (then with back-off) and counted.
class Registry {
 public:
  // Keeps one entry in the registry: written at once, then refreshed every ttl/3 on a thread of
  // the registry (which also writes it again once an unreachable backend is back). Thread-
  // compatible. The destructor close()s.
  class Registration {
   public:
    virtual ~Registration() = default;
    Registration() = default;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

    virtual const RegistryEntry& entry() const = 0;
    // Stops the refreshes and removes the entry, bounded by the backend's command timeout; on a
    // failure (kTransportError, ...) the entry expires by its TTL. kShuttingDown, removing
    // nothing, once the registry is destroyed: the entry then expires, as a dead server's does.
    // Idempotent: later calls return ok and do nothing.
    virtual Status close() = 0;
  };

  // Keeps a watch callback registered. release() (or the destructor) unregisters it and waits
  // until it is not running, unless called from the callback itself, so that whatever it holds
  // can be freed right after. Idempotent.
  class Watch {
   public:
    virtual ~Watch() = default;
    Watch() = default;
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

    virtual void release() = 0;
  };

  // Called with the full list of live URLs of the watched key; never concurrently with itself.
  // Must not throw (an exception is caught and logged), nor destroy the registry.
  using WatchCallback = std::function<void(const std::vector<std::string>& urls)>;

  virtual ~Registry() = default;
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registers `entry` (topic, server and url required) under "topic" and "topic.server", to
  // expire `ttl` after each refresh unless refreshed again. kInvalidTarget for a bad entry,
  // kBadArguments for a ttl under 3 ms, kShuttingDown after the registry stopped; a backend
  // that fails the first write is not an error (logged; the refreshes keep trying).
  virtual Result<std::unique_ptr<Registration>> registerServer(RegistryEntry entry,
                                                               Duration ttl) = 0;
  // The live URLs under `key` ("topic" or "topic.server"); empty if there is none. kInvalidTarget
  // for a bad key; kTransportError when the backend fails and no list of the key was read before.
  virtual Result<std::vector<std::string>> lookup(std::string_view key) = 0;
  // Calls `onChange` with the live list of `key` before returning, then whenever the list
  // changes (from a registry thread): on a change notification, and on periodic re-reads, which
  // also catch expiries. Errors as lookup(); kBadArguments for an empty callback.
  virtual Result<std::unique_ptr<Watch>> watch(std::string key, WatchCallback onChange) = 0;

  virtual RegistryStats stats() const = 0;
};

}  // namespace switchboard
