// RegistryNetwork: a Network whose servers are the live servers of a registry key (a topic, or
// "topic.server"), followed as they come and go (discovery/registry.h, docs/DEPLOYMENT.md).
#pragma once

#include <memory>
#include <string>

#include "base/status.h"
#include "discovery/registry.h"
#include "messaging/network.h"

namespace switchboard {

// Movable. The registry and the connector must outlive it.
class RegistryNetwork {
 public:
  // Creates a Network over the live servers of `key` (`options.servers` is replaced by them),
  // then follows the key: every change of its list goes to Network::setServers. When the
  // registry is unreachable the network keeps the servers it has. kTransportError when the key
  // has no live server (or the registry cannot be read and no list of it was read before);
  // otherwise Network::create's errors.
  static Result<RegistryNetwork> create(Connector& connector, Registry& registry, std::string key,
                                        Network::Options options);

  // The network to make RpcClients on; it outlives this object while a handle is held.
  const Network& network() const { return network_; }

 private:
  RegistryNetwork(Network network, std::unique_ptr<Registry::Watch> watch)
      : network_(std::move(network)), watch_(std::move(watch)) {}

  Network network_;
  // Declared after network_: released first, so no change arrives while the network goes.
  std::unique_ptr<Registry::Watch> watch_;
};

}  // namespace switchboard
