#include "discovery/registry_factory.h"

#include <string>
#include <utility>

#include "discovery/redis_registry.h"
#include "discovery/static_registry.h"

namespace switchboard {

Result<std::unique_ptr<Registry>> makeRegistry(std::string_view url, LogSink log) {
  if (url.starts_with("redis://")) {
    RedisRegistry::Options options;
    options.url = std::string(url);
    options.log = std::move(log);
    Result<std::unique_ptr<RedisRegistry>> made = RedisRegistry::create(std::move(options));
    if (!made) return made.status();
    return std::unique_ptr<Registry>(std::move(made).value());
  }
  if (constexpr std::string_view kFile = "file:"; url.starts_with(kFile)) {
    Result<std::unique_ptr<StaticRegistry>> made =
        StaticRegistry::fromFile(std::string(url.substr(kFile.size())));
    if (!made) return made.status();
    return std::unique_ptr<Registry>(std::move(made).value());
  }
  return Status(StatusCode::kInvalidTarget,
                "registry URL " + std::string(url) + ": expected redis://host:port or file:PATH");
}

}  // namespace switchboard
