// Address: where a transport delivers a message (exchange, topic, server, fanout).
// messaging::Target adds namespace and version on top; transports see only this.
#pragma once

#include <string>

namespace switchboard {

struct Address {
  std::string exchange{};  // isolates groups of topics; empty means the transport's default
  std::string topic{};     // the service; required
  std::string server{};    // one server of the topic; empty means any one of them
  bool fanout = false;   // every server listening on the topic

  friend bool operator==(const Address&, const Address&) = default;
};

}  // namespace switchboard
