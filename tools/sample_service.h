// The sample service that switchboard-server serves: echo, add, sleep (honours cancellation
// and never blocks an executor thread), fail (raises a remote error), whoami (the server's name:
// which server of several answered) and, given a journal, record (appends its token to the
// journal: tests count executions across kills with it).
#pragma once

#include <string>

#include "messaging/endpoint.h"

namespace switchboard::tools {

// Errors raised by fail(message); the client may register it to get it rebuilt.
struct SampleFailure : std::runtime_error {
  explicit SampleFailure(const std::string& message) : std::runtime_error(message) {}
};

// `journalFd`: a descriptor opened O_APPEND, borrowed; -1 leaves `record` out. record(token)
// writes "token\n" with one write(2) before it answers, so the line survives a SIGKILL after it.
Endpoint sampleEndpoint(std::string name, int journalFd = -1);

}  // namespace switchboard::tools
