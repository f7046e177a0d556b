// The sample service that switchboard-server serves: echo, add, sleep (honours cancellation
// and never blocks an executor thread) and fail (raises a remote error).
#pragma once

#include "messaging/endpoint.h"

namespace switchboard::tools {

// Errors raised by fail(message); the client may register it to get it rebuilt.
struct SampleFailure : std::runtime_error {
  explicit SampleFailure(const std::string& message) : std::runtime_error(message) {}
};

Endpoint sampleEndpoint();

}  // namespace switchboard::tools
