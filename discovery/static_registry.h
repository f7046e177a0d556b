// StaticRegistry: a fixed list of servers, given in code or read from a file; the registry of a
// deployment without a registry server (the embedded default).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "discovery/registry.h"

namespace switchboard {

// Parses a registry file: one entry a line, `topic url [server]` separated by blanks; blank
// lines and `#` comments (to the end of the line) ignored. kInvalidTarget naming
// "<origin>:<line>" for a line with too few or too many fields or a field checkRegistryEntry
// refuses.
Result<std::vector<RegistryEntry>> parseRegistryFile(std::string_view text, std::string_view origin);

// Thread-safe; the list never changes. A lookup by "topic" lists the entries of the topic, by
// "topic.server" those of that server (entries without a server are found by topic only).
class StaticRegistry final : public Registry {
 public:
  // kInvalidTarget for an entry checkRegistryEntry refuses.
  static Result<std::unique_ptr<StaticRegistry>> create(std::vector<RegistryEntry> entries);
  // The entries of the file at `path` (parseRegistryFile); kInvalidTarget if it cannot be read.
  static Result<std::unique_ptr<StaticRegistry>> fromFile(const std::string& path);

  // Always kInvalidState: the list is fixed; a server is listed by adding it to the file.
  Result<std::unique_ptr<Registration>> registerServer(RegistryEntry entry, Duration ttl) override;
  Result<std::vector<std::string>> lookup(std::string_view key) override;
  // Calls back once, on the caller's thread before returning (an exception it throws reaches
  // the caller); never again.
  Result<std::unique_ptr<Watch>> watch(std::string key, WatchCallback onChange) override;
  // Counts lookups and watch callbacks; the rest stays 0.
  RegistryStats stats() const override;

 private:
  explicit StaticRegistry(std::vector<RegistryEntry> entries) : entries_(std::move(entries)) {}

  const std::vector<RegistryEntry> entries_;
  std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> watchCallbacks_{0};
};

}  // namespace switchboard
