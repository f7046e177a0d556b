// The registry vocabulary shared by every backend: keys and the checks of entries.
// Kept small: whatever a backend does with them lives with the backend.
#include "discovery/registry.h"

#include <algorithm>

namespace switchboard {

std::string serverKey(const RegistryEntry& entry) { return entry.topic + "." + entry.server; }

Status checkRegistryKey(std::string_view key) {
  if (key.empty()) return Status(StatusCode::kInvalidTarget, "empty registry key");
  const bool bad = std::any_of(key.begin(), key.end(), [](char c) {
    return static_cast<unsigned char>(c) <= ' ' || c == '\x7f';
  });
  if (bad) {
    return Status(StatusCode::kInvalidTarget,
                  "registry key '" + std::string(key) + "' holds whitespace or a control character");
  }
  return Status::ok();
}

Status checkRegistryEntry(const RegistryEntry& entry) {
  for (const auto& [name, value] : {std::pair<const char*, const std::string&>{"topic", entry.topic},
                                    {"url", entry.url}}) {
    if (Status s = checkRegistryKey(value); !s) {
      return Status(StatusCode::kInvalidTarget, std::string("registry entry ") + name + ": " + s.message());
    }
  }
  if (!entry.server.empty()) {
    if (Status s = checkRegistryKey(entry.server); !s) {
      return Status(StatusCode::kInvalidTarget, "registry entry server: " + s.message());
    }
  }
  return Status::ok();
}

}  // namespace switchboard
