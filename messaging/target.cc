// Target validation and Version parsing.
// Errors are kInvalidTarget naming the missing field.
#include "messaging/target.h"

#include <charconv>

namespace switchboard {

Result<Version> Version::parse(std::string_view text) {
  auto bad = [&] {
    return Status(StatusCode::kBadArguments,
                  "version '" + std::string(text) + "' is not of the form major.minor");
  };
  Version v{0, 0};
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v.major);
  if (ec != std::errc() || v.major < 0) return bad();
  if (p != end) {
    if (*p != '.') return bad();
    auto [q, ec2] = std::from_chars(p + 1, end, v.minor);
    if (ec2 != std::errc() || q != end || q == p + 1 || v.minor < 0) return bad();
  }
  return v;
}

std::string Version::toString() const {
  return std::to_string(major) + "." + std::to_string(minor);
}

Status Target::validateForServer() const {
  if (topic.empty()) return Status(StatusCode::kInvalidTarget, "a server target needs a topic");
  if (server.empty()) return Status(StatusCode::kInvalidTarget, "a server target needs a server");
  if (fanout) return Status(StatusCode::kInvalidTarget, "a server target cannot be fanout");
  return Status::ok();
}

Status Target::validateForClient(bool forCall) const {
  if (topic.empty()) return Status(StatusCode::kInvalidTarget, "a client target needs a topic");
  if (forCall && fanout) {
    return Status(StatusCode::kInvalidTarget, "call() cannot use a fanout target; use cast()");
  }
  return Status::ok();
}

}  // namespace switchboard
