// InMemoryRegistry's store and backend: sorted-set-like keys with expiries, under one mutex,
// and the notifications of changes to the registries of the store, outside it.
#include "discovery/in_memory_registry.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace switchboard {
namespace detail {

struct InMemoryStoreState {
  explicit InMemoryStoreState(std::function<Deadline()> clock) : now(std::move(clock)) {}

  // Calls every subscriber for each of `changed`, on this thread, outside the mutex.
  void notify(const std::vector<std::string>& changed) {
    if (changed.empty()) return;
    std::vector<RegistryBackend::ChangeCallback> callbacks;
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (const auto& [id, callback] : subscribers) callbacks.push_back(callback);
    }
    for (const auto& callback : callbacks) {
      for (const std::string& key : changed) callback(key);
    }
  }

  const std::function<Deadline()> now;
  std::mutex mutex;
  std::map<std::string, std::map<std::string, Deadline>, std::less<>> keys;  // by mutex: url -> expiry
  std::map<uint64_t, RegistryBackend::ChangeCallback> subscribers;             // by mutex
  uint64_t nextSubscriber = 1;                                                 // by mutex
};

namespace {

class InMemoryBackend final : public RegistryBackend {
 public:
  explicit InMemoryBackend(std::shared_ptr<InMemoryStoreState> store) : store_(std::move(store)) {}
  ~InMemoryBackend() override { stop(); }

  void start(ChangeCallback onChange) override {
    std::lock_guard<std::mutex> lock(store_->mutex);
    subscriber_ = store_->nextSubscriber++;
    store_->subscribers.emplace(subscriber_, std::move(onChange));
  }

  Status put(const RegistryEntry& entry, Duration ttl) override {
    std::vector<std::string> changed;
    {
      std::lock_guard<std::mutex> lock(store_->mutex);
      const Deadline expiry = store_->now() + ttl;
      for (std::string key : {entry.topic, serverKey(entry)}) {
        auto& members = store_->keys[key];
        if (members.insert_or_assign(entry.url, expiry).second) changed.push_back(std::move(key));
      }
    }
    store_->notify(changed);
    return Status::ok();
  }

  Status remove(const RegistryEntry& entry) override {
    std::vector<std::string> changed;
    {
      std::lock_guard<std::mutex> lock(store_->mutex);
      for (std::string key : {entry.topic, serverKey(entry)}) {
        auto members = store_->keys.find(key);
        if (members == store_->keys.end() || members->second.erase(entry.url) == 0) continue;
        if (members->second.empty()) store_->keys.erase(members);
        changed.push_back(std::move(key));
      }
    }
    store_->notify(changed);
    return Status::ok();
  }

  Result<std::vector<std::string>> read(const std::string& key) override {
    std::vector<std::string> urls;
    bool pruned = false;
    {
      std::lock_guard<std::mutex> lock(store_->mutex);
      auto members = store_->keys.find(key);
      if (members == store_->keys.end()) return urls;
      const Deadline now = store_->now();
      pruned = std::erase_if(members->second, [&](const auto& m) { return m.second <= now; }) > 0;
      for (const auto& [url, expiry] : members->second) urls.push_back(url);
      if (members->second.empty()) store_->keys.erase(members);
    }
    if (pruned) store_->notify({key});
    return urls;
  }

  uint64_t reconnects() const override { return 0; }

  void stop() override {
    RegistryBackend::ChangeCallback dropped;  // destroyed outside the lock
    std::lock_guard<std::mutex> lock(store_->mutex);
    auto it = store_->subscribers.find(subscriber_);
    if (it == store_->subscribers.end()) return;
    dropped = std::move(it->second);
    store_->subscribers.erase(it);
  }

 private:
  const std::shared_ptr<InMemoryStoreState> store_;
  uint64_t subscriber_ = 0;  // set by start()
};

}  // namespace
}  // namespace detail

InMemoryRegistryStore::InMemoryRegistryStore() : InMemoryRegistryStore([] { return Clock::now(); }) {}

InMemoryRegistryStore::InMemoryRegistryStore(std::function<Deadline()> now)
    : state_(std::make_shared<detail::InMemoryStoreState>(std::move(now))) {}

InMemoryRegistry::InMemoryRegistry(InMemoryRegistryStore& store)
    : InMemoryRegistry(store, Options()) {}

InMemoryRegistry::InMemoryRegistry(InMemoryRegistryStore& store, Options options)
    : SoftStateRegistry(std::make_unique<detail::InMemoryBackend>(store.state_),
                        {.refreshInterval = options.refreshInterval,
                         .timers = options.timers,
                         .log = std::move(options.log)}) {}

}  // namespace switchboard
