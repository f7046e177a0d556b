// Target: where a message goes and which endpoints may answer it (oslo.messaging's Target):
// exchange, topic, server, fanout for routing; namespace and version for dispatch.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "transports/address.h"

namespace switchboard {

// A "major.minor" API version. Compatible when the majors match and the requested minor is not
// above the provided one.
struct Version {
  int major = 1;
  int minor = 0;

  // Parses "1", "1.3"; kBadArguments otherwise.
  static Result<Version> parse(std::string_view text);
  std::string toString() const;
  // True when an endpoint at `this` can serve a call that asks for `requested`.
  bool canServe(const Version& requested) const {
    return major == requested.major && requested.minor <= minor;
  }
  friend bool operator==(const Version&, const Version&) = default;
};

struct Target {
  std::string exchange{};
  std::string topic{};
  std::string server{};
  bool fanout = false;
  std::string ns{};                  // endpoint namespace; empty is the default namespace
  std::optional<Version> version{};  // requested (client) or provided (endpoint)

  Address address() const { return Address{exchange, topic, server, fanout}; }
  // A server listens on a topic and has a name: both required, fanout not allowed.
  Status validateForServer() const;
  // A client needs a topic; `forCall` rejects fanout (a call wants one answer).
  Status validateForClient(bool forCall) const;
};

}  // namespace switchboard
