#include "messaging/registry_network.h"

#include <utility>
#include <vector>

namespace switchboard {

Result<RegistryNetwork> RegistryNetwork::create(Connector& connector, Registry& registry,
                                                std::string key, Network::Options options) {
  Result<std::vector<std::string>> live = registry.lookup(key);
  if (!live) return live.status();
  if (live->empty()) {
    return Status(StatusCode::kTransportError, "no live server is registered under " + key);
  }
  options.servers = std::move(live).value();
  Result<Network> network = Network::create(connector, std::move(options));
  if (!network) return network.status();
  // The watch's first call (before watch() returns) brings in what changed since the lookup.
  // A list that setServers refuses cannot come from a registry (URLs unique and checked).
  Result<std::unique_ptr<Registry::Watch>> watch =
      registry.watch(key, [followed = *network](const std::vector<std::string>& urls) {
        (void)followed.setServers(urls);
      });
  if (!watch) {
    network->stop();
    return watch.status();
  }
  return RegistryNetwork(std::move(network).value(), std::move(watch).value());
}

}  // namespace switchboard
