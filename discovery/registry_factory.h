// makeRegistry: a Registry from a URL, as the tools' --registry takes it.
#pragma once

#include <memory>
#include <string_view>

#include "base/log.h"
#include "base/status.h"
#include "discovery/registry.h"

namespace switchboard {

// redis://host[:port][/db]: a RedisRegistry with its default timeouts, logging to `log`.
// file:PATH: a StaticRegistry of the file at PATH (parseRegistryFile's format).
// kInvalidTarget for another scheme and for what those refuse.
Result<std::unique_ptr<Registry>> makeRegistry(std::string_view url, LogSink log);

}  // namespace switchboard
