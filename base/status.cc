// Status: names of codes, formatting and raising.
// The name table is the wire vocabulary of error codes (docs/PROTOCOL.md).
#include "base/status.h"

#include <array>

namespace switchboard {
namespace {

constexpr std::array<std::string_view, 16> kCodeNames = {
    "Ok",           "Timeout",       "PeerLost",       "Overloaded",        "NoSuchMethod",
    "UnsupportedVersion", "BadArguments", "RemoteError", "Cancelled",   "ShuttingDown",
    "Unauthorized", "InvalidTarget", "ProtocolError",  "InvalidState",      "WouldDeadlock",
    "TransportError",
};

const std::string& emptyString() {
  static const std::string kEmpty;
  return kEmpty;
}

}  // namespace

std::string_view statusCodeName(StatusCode code) {
  const auto index = static_cast<size_t>(code);
  return index < kCodeNames.size() ? kCodeNames[index] : std::string_view("Unknown");
}

StatusCode statusCodeFromName(std::string_view name) {
  for (size_t i = 1; i < kCodeNames.size(); ++i) {
    if (kCodeNames[i] == name) return static_cast<StatusCode>(i);
  }
  return StatusCode::kRemoteError;
}

Status::Status(StatusCode code, std::string message) {
  if (code != StatusCode::kOk) {
    rep_ = std::make_shared<const Rep>(Rep{code, std::move(message), {}, {}, nullptr});
  }
}

Status Status::remote(std::string type, std::string message, std::string details) {
  Status s;
  s.rep_ = std::make_shared<const Rep>(
      Rep{StatusCode::kRemoteError, std::move(message), std::move(type), std::move(details),
          nullptr});
  return s;
}

const std::string& Status::message() const { return rep_ ? rep_->message : emptyString(); }
const std::string& Status::remoteType() const { return rep_ ? rep_->remoteType : emptyString(); }
const std::string& Status::details() const { return rep_ ? rep_->details : emptyString(); }

Status Status::asRefused() const {
  if (!rep_) return *this;
  Status s;
  Rep rep = *rep_;
  rep.refused = true;
  s.rep_ = std::make_shared<const Rep>(std::move(rep));
  return s;
}

Status Status::withException(std::exception_ptr e) const {
  if (!rep_) return *this;
  Status s;
  Rep rep = *rep_;
  rep.exception = std::move(e);
  s.rep_ = std::make_shared<const Rep>(std::move(rep));
  return s;
}

std::string Status::toString() const {
  if (isOk()) return "Ok";
  std::string out(statusCodeName(code()));
  if (!remoteType().empty()) out += " (" + remoteType() + ")";
  if (!message().empty()) out += ": " + message();
  return out;
}

void Status::raise() const {
  if (exception()) std::rethrow_exception(exception());
  throw StatusError(*this);
}

std::ostream& operator<<(std::ostream& os, const Status& status) {
  return os << status.toString();
}

}  // namespace switchboard
