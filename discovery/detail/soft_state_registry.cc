// SoftStateRegistry: its state under one mutex; backend calls serialized under another, taken
// first and never while the state's is held; callbacks and log lines outside both.
#include "discovery/detail/soft_state_registry.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>

namespace switchboard::detail {
namespace {

using Urls = std::vector<std::string>;
constexpr Duration kMinTtl = std::chrono::milliseconds(3);
constexpr std::string_view kComponent = "registry";

// One watch: its callback and the list it was last given. The callback runs under the slot's
// mutex, so its calls never overlap and release() can wait for one to end.
struct WatchSlot {
  WatchSlot(std::string k, Registry::WatchCallback f) : key(std::move(k)), onChange(std::move(f)) {}

  // Calls back with `urls` (from read number `read`) unless released, or `read` is older than
  // the read it last got, or `urls` is what it last got; counts the call in `calls` first.
  void deliver(uint64_t read, const Urls& urls, const LogSink& log, std::atomic<uint64_t>& calls) {
    std::lock_guard<std::mutex> lock(mutex);
    if (released || read < lastRead) return;
    lastRead = read;
    if (last == urls) return;
    last = urls;
    ++calls;
    runningOn = std::this_thread::get_id();
    try {
      onChange(urls);
    } catch (const std::exception& e) {
      log(LogLevel::kError, kComponent, "watch callback threw", {{"key", key}, {"what", e.what()}});
    } catch (...) {
      log(LogLevel::kError, kComponent, "watch callback threw", {{"key", key}});
    }
    runningOn = std::thread::id();
  }

  void release() {
    if (runningOn.load() == std::this_thread::get_id()) {
      released = true;  // from the callback: this thread holds `mutex` in deliver()
      return;
    }
    std::lock_guard<std::mutex> lock(mutex);
    released = true;
  }

  const std::string key;
  const Registry::WatchCallback onChange;
  std::mutex mutex;
  std::atomic<std::thread::id> runningOn{};
  uint64_t lastRead = 0;     // guarded by mutex
  std::optional<Urls> last;  // guarded by mutex
  bool released = false;     // guarded by mutex
};

}  // namespace

struct SoftStateRegistry::State : std::enable_shared_from_this<State> {
  struct Registered {
    RegistryEntry entry;
    Duration ttl;
    TimerId timer = 0;  // the next refresh
  };
  struct Read {
    uint64_t number = 0;  // reads are numbered in the order the backend answered them
    Urls urls;
  };

  State(std::unique_ptr<RegistryBackend> b, SoftStateOptions o)
      : options(std::move(o)),
        ownTimers(options.timers ? nullptr : std::make_unique<ThreadTimerQueue>()),
        timers(options.timers ? *options.timers : *ownTimers),
        backend(std::move(b)) {}

  void start() {
    backend->start([weak = weak_from_this()](const std::string& key) {
      if (auto self = weak.lock()) self->notify(key);
    });
    std::lock_guard<std::mutex> lock(mutex);
    schedulePollLocked();
  }

  void shutdown() {
    std::vector<TimerId> cancelled;
    std::vector<std::shared_ptr<WatchSlot>> released;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (stopped) return;
      stopped = true;
      cancelled = {pollTimer, changeTimer};
      for (const auto& [id, r] : registered) cancelled.push_back(r.timer);
      registered.clear();
      released.swap(watches);
    }
    for (TimerId id : cancelled) timers.cancel(id);
    for (const auto& slot : released) slot->release();
    backend->stop();
    if (ownTimers) ownTimers->shutdown();
  }

  // Writes registration `id` (first: from registerServer) and schedules its next refresh.
  void refresh(uint64_t id, bool first) {
    RegistryEntry entry;
    Duration ttl;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = registered.find(id);
      if (it == registered.end()) return;
      entry = it->second.entry;
      ttl = it->second.ttl;
    }
    Status written;
    {
      std::lock_guard<std::mutex> lock(backendMutex);
      written = backend->put(entry, ttl);
    }
    record(written);
    std::lock_guard<std::mutex> lock(mutex);
    if (written && !first) ++stats.refreshes;
    auto it = registered.find(id);
    if (it == registered.end()) return;  // closed meanwhile, or the registry stopped
    it->second.timer = timers.schedule(timers.now() + ttl / 3, [weak = weak_from_this(), id] {
      if (auto self = weak.lock()) self->refresh(id, false);
    });
  }

  Status unregister(uint64_t id) {
    RegistryEntry entry;
    TimerId timer;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = registered.find(id);
      if (it == registered.end()) {
        return Status(StatusCode::kShuttingDown, "the registry is destroyed: the entry expires");
      }
      entry = std::move(it->second.entry);
      timer = it->second.timer;
      registered.erase(it);
    }
    timers.cancel(timer);  // a refresh running now ends first: none writes after the removal
    Status removed;
    {
      std::lock_guard<std::mutex> lock(backendMutex);
      removed = backend->remove(entry);
    }
    record(removed);
    if (!removed) {
      return Status(removed.code(), "removing " + entry.url + " failed (it expires by its TTL): " +
                                        removed.message());
    }
    std::lock_guard<std::mutex> lock(mutex);
    ++stats.unregistrations;
    return Status::ok();
  }

  // The live list of `key`, or the last one read if the backend fails.
  Result<Read> read(const std::string& key) {
    Result<Urls> urls = Status(StatusCode::kInvalidState, "not read");
    uint64_t number;
    {
      std::lock_guard<std::mutex> lock(backendMutex);
      number = ++reads;
      urls = backend->read(key);
    }
    record(urls.status());
    std::lock_guard<std::mutex> lock(mutex);
    auto cached = cache.find(key);
    if (urls) {
      std::sort(urls->begin(), urls->end());
      urls->erase(std::unique(urls->begin(), urls->end()), urls->end());
      ++stats.lookups;
      Read fresh{number, std::move(*urls)};
      if (cached == cache.end()) {
        cache.emplace(key, fresh);
      } else if (cached->second.number < number) {
        cached->second = fresh;
      }
      return fresh;
    }
    if (cached == cache.end()) {
      return Status(urls.status().code(),
                    "no list of '" + key + "' read yet, and the registry fails: " +
                        urls.status().message());
    }
    ++stats.lookups;
    ++stats.lookupsFromCache;
    return cached->second;
  }

  // Counts a backend outcome; logs the start of an outage (then with back-off) and its end.
  void record(const Status& outcome) {
    std::optional<LogLevel> level;
    uint64_t failures = 0;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (outcome) {
        if (reachable) return;
        reachable = true;
        level = LogLevel::kInfo;
        failures = outageFailures;
      } else {
        ++stats.failures;
        if (reachable) {
          reachable = false;
          ++stats.outages;
          outageFailures = 0;
        }
        failures = ++outageFailures;
        if (isLoggedOccurrence(failures)) level = LogLevel::kWarning;
      }
    }
    if (!level) return;
    if (outcome) {
      options.log(*level, kComponent, "registry reachable again",
                  {{"failures", std::to_string(failures)}});
    } else {
      options.log(*level, kComponent, "registry failing: lookups and watches keep their last lists",
                  {{"failures", std::to_string(failures)}, {"error", outcome.message()}});
    }
  }

  void deliverTo(WatchSlot& slot, const Read& read) {
    slot.deliver(read.number, read.urls, options.log, watchCallbacks);
  }

  // Reads each key and calls back its watches with the list.
  void reread(const std::set<std::string>& keys) {
    for (const std::string& key : keys) {
      Result<Read> r = read(key);
      if (!r) continue;  // counted and logged by read()
      std::vector<std::shared_ptr<WatchSlot>> slots;
      {
        std::lock_guard<std::mutex> lock(mutex);
        for (const auto& slot : watches) {
          if (slot->key == key) slots.push_back(slot);
        }
      }
      for (const auto& slot : slots) deliverTo(*slot, *r);
    }
  }

  void schedulePollLocked() {
    pollTimer = timers.schedule(timers.now() + options.refreshInterval,
                                [weak = weak_from_this()] {
                                  if (auto self = weak.lock()) self->poll();
                                });
  }

  // The periodic re-read of every watched key (which also notices expiries).
  void poll() {
    std::set<std::string> keys;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (stopped) return;
      for (const auto& slot : watches) keys.insert(slot->key);
    }
    reread(keys);
    std::lock_guard<std::mutex> lock(mutex);
    if (!stopped) schedulePollLocked();
  }

  void notify(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex);
    if (stopped) return;
    ++stats.notifications;
    if (key.empty()) {
      allChanged = true;
    } else {
      changed.insert(key);
    }
    if (changeTimer == 0) scheduleChangedLocked();
  }

  void scheduleChangedLocked() {
    changeTimer = timers.schedule(timers.now(), [weak = weak_from_this()] {
      if (auto self = weak.lock()) self->rereadChanged();
    });
  }

  // Re-reads the watched keys notified as changed, until no notification is left.
  void rereadChanged() {
    std::set<std::string> keys;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (stopped) return;
      for (const auto& slot : watches) {
        if (allChanged || changed.count(slot->key) != 0) keys.insert(slot->key);
      }
      changed.clear();
      allChanged = false;
    }
    reread(keys);
    std::lock_guard<std::mutex> lock(mutex);
    if (!stopped && (allChanged || !changed.empty())) {
      scheduleChangedLocked();
    } else {
      changeTimer = 0;
    }
  }

  const SoftStateOptions options;
  const std::unique_ptr<ThreadTimerQueue> ownTimers;  // when options.timers is null
  TimerQueue& timers;
  const std::unique_ptr<RegistryBackend> backend;

  std::mutex backendMutex;  // serializes backend calls; never taken while `mutex` is held
  uint64_t reads = 0;       // guarded by backendMutex

  mutable std::mutex mutex;
  bool stopped = false;                                    // guarded by mutex
  uint64_t nextRegistration = 1;                           // guarded by mutex
  std::map<uint64_t, Registered> registered;               // guarded by mutex
  std::vector<std::shared_ptr<WatchSlot>> watches;         // guarded by mutex
  std::map<std::string, Read, std::less<>> cache;          // guarded by mutex: last good reads
  std::set<std::string> changed;                           // guarded by mutex: notified keys
  bool allChanged = false;                                 // guarded by mutex
  TimerId pollTimer = 0;                                   // guarded by mutex
  TimerId changeTimer = 0;                                 // guarded by mutex: 0 when none due
  bool reachable = true;                                   // guarded by mutex
  uint64_t outageFailures = 0;                             // guarded by mutex
  RegistryStats stats;                                     // guarded by mutex
  std::atomic<uint64_t> watchCallbacks{0};                 // stats.watchCallbacks
};

class SoftStateRegistry::RegistrationHandle final : public Registration {
 public:
  RegistrationHandle(std::weak_ptr<State> state, uint64_t id, RegistryEntry entry)
      : state_(std::move(state)), id_(id), entry_(std::move(entry)) {}
  ~RegistrationHandle() override { (void)close(); }

  const RegistryEntry& entry() const override { return entry_; }

  Status close() override {
    if (std::exchange(closed_, true)) return Status::ok();
    if (auto state = state_.lock()) return state->unregister(id_);
    return Status(StatusCode::kShuttingDown, "the registry is destroyed: the entry expires");
  }

 private:
  const std::weak_ptr<State> state_;
  const uint64_t id_;
  const RegistryEntry entry_;
  bool closed_ = false;
};

class SoftStateRegistry::WatchHandle final : public Watch {
 public:
  WatchHandle(std::weak_ptr<State> state, std::shared_ptr<WatchSlot> slot)
      : state_(std::move(state)), slot_(std::move(slot)) {}
  ~WatchHandle() override { release(); }

  void release() override {
    if (!slot_) return;
    if (auto state = state_.lock()) {
      std::lock_guard<std::mutex> lock(state->mutex);
      std::erase(state->watches, slot_);
    }
    slot_->release();
    slot_.reset();
  }

 private:
  const std::weak_ptr<State> state_;
  std::shared_ptr<WatchSlot> slot_;
};

SoftStateRegistry::SoftStateRegistry(std::unique_ptr<RegistryBackend> backend,
                                     SoftStateOptions options)
    : state_(std::make_shared<State>(std::move(backend), std::move(options))) {
  state_->start();
}

SoftStateRegistry::~SoftStateRegistry() { state_->shutdown(); }

Result<std::unique_ptr<Registry::Registration>> SoftStateRegistry::registerServer(
    RegistryEntry entry, Duration ttl) {
  if (Status s = checkRegistryEntry(entry); !s) return s;
  if (entry.server.empty()) {
    return Status(StatusCode::kInvalidTarget, "registering " + entry.url + " needs a server name");
  }
  if (ttl < kMinTtl) {
    return Status(StatusCode::kBadArguments, "a registration's ttl must be at least 3 ms");
  }
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->stopped) return Status(StatusCode::kShuttingDown, "the registry is stopped");
    id = state_->nextRegistration++;
    state_->registered.emplace(id, State::Registered{entry, ttl});
    ++state_->stats.registrations;
  }
  state_->refresh(id, true);
  return std::unique_ptr<Registration>(new RegistrationHandle(state_, id, std::move(entry)));
}

Result<std::vector<std::string>> SoftStateRegistry::lookup(std::string_view key) {
  if (Status s = checkRegistryKey(key); !s) return s;
  Result<State::Read> r = state_->read(std::string(key));
  if (!r) return r.status();
  return std::move(r->urls);
}

Result<std::unique_ptr<Registry::Watch>> SoftStateRegistry::watch(std::string key,
                                                                  WatchCallback onChange) {
  if (Status s = checkRegistryKey(key); !s) return s;
  if (!onChange) return Status(StatusCode::kBadArguments, "a watch needs a callback");
  auto slot = std::make_shared<WatchSlot>(std::move(key), std::move(onChange));
  auto handle = std::make_unique<WatchHandle>(state_, slot);
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->stopped) return Status(StatusCode::kShuttingDown, "the registry is stopped");
    state_->watches.push_back(slot);  // first, so that no notification after the read is lost
  }
  Result<State::Read> initial = state_->read(slot->key);
  if (!initial) return initial.status();  // `handle` unregisters the slot
  state_->deliverTo(*slot, *initial);
  return std::unique_ptr<Watch>(std::move(handle));
}

RegistryStats SoftStateRegistry::stats() const {
  RegistryStats s;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    s = state_->stats;
  }
  s.watchCallbacks = state_->watchCallbacks.load();
  s.reconnects = state_->backend->reconnects();
  return s;
}

}  // namespace switchboard::detail
