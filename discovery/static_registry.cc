// StaticRegistry and the registry file format: a fixed list, answered from memory.
// Nothing here blocks or fails once the list is made.
#include "discovery/static_registry.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

namespace switchboard {
namespace {

// A watch that has nothing to stop: its one callback ran before watch() returned.
class StaticWatch final : public Registry::Watch {
 public:
  void release() override {}
};

}  // namespace

Result<std::vector<RegistryEntry>> parseRegistryFile(std::string_view text, std::string_view origin) {
  std::vector<RegistryEntry> entries;
  std::istringstream in{std::string(text)};
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const auto where = [&] { return std::string(origin) + ":" + std::to_string(number) + ": "; };
    line.erase(std::min(line.find('#'), line.size()));
    std::istringstream fields(line);
    std::vector<std::string> words;
    for (std::string word; fields >> word;) words.push_back(std::move(word));
    if (words.empty()) continue;
    if (words.size() < 2 || words.size() > 3) {
      return Status(StatusCode::kInvalidTarget,
                    where() + "expected 'topic url [server]', got " + std::to_string(words.size()) +
                        " field" + (words.size() == 1 ? "" : "s"));
    }
    RegistryEntry entry{.topic = words[0], .server = words.size() == 3 ? words[2] : "", .url = words[1]};
    if (Status s = checkRegistryEntry(entry); !s) {
      return Status(StatusCode::kInvalidTarget, where() + s.message());
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

Result<std::unique_ptr<StaticRegistry>> StaticRegistry::create(std::vector<RegistryEntry> entries) {
  for (const RegistryEntry& entry : entries) {
    if (Status s = checkRegistryEntry(entry); !s) return s;
  }
  return std::unique_ptr<StaticRegistry>(new StaticRegistry(std::move(entries)));
}

Result<std::unique_ptr<StaticRegistry>> StaticRegistry::fromFile(const std::string& path) {
  std::error_code error;
  std::ifstream in(path);
  if (!std::filesystem::is_regular_file(path, error) || !in.is_open()) {
    return Status(StatusCode::kInvalidTarget, "cannot read registry file " + path);
  }
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  Result<std::vector<RegistryEntry>> entries = parseRegistryFile(text, path);
  if (!entries) return entries.status();
  return create(std::move(*entries));
}

Result<std::unique_ptr<Registry::Registration>> StaticRegistry::registerServer(RegistryEntry entry,
                                                                             Duration) {
  return Status(StatusCode::kInvalidState, "a static registry is fixed: list " + entry.url +
                                               " in its file instead of registering it");
}

Result<std::vector<std::string>> StaticRegistry::lookup(std::string_view key) {
  if (Status s = checkRegistryKey(key); !s) return s;
  std::vector<std::string> urls;
  for (const RegistryEntry& e : entries_) {
    if (e.topic == key || (!e.server.empty() && serverKey(e) == key)) urls.push_back(e.url);
  }
  std::sort(urls.begin(), urls.end());
  urls.erase(std::unique(urls.begin(), urls.end()), urls.end());
  ++lookups_;
  return urls;
}

Result<std::unique_ptr<Registry::Watch>> StaticRegistry::watch(std::string key,
                                                               WatchCallback onChange) {
  if (!onChange) return Status(StatusCode::kBadArguments, "a watch needs a callback");
  Result<std::vector<std::string>> urls = lookup(key);
  if (!urls) return urls.status();
  onChange(*urls);
  ++watchCallbacks_;
  return std::unique_ptr<Watch>(std::make_unique<StaticWatch>());
}

RegistryStats StaticRegistry::stats() const {
  return RegistryStats{.lookups = lookups_.load(), .watchCallbacks = watchCallbacks_.load()};
}

}  // namespace switchboard
