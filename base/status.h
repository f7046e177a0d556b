// Status and Result<T>: expected failures as values, shared by every layer.
// This is the leaf vocabulary header: it includes nothing of the project.
#pragma once

#include <cstddef>
#include <exception>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace switchboard {

// The kinds of expected failure. Names travel on the wire (StatusCodeName), so never renumber
// or rename one; add new codes at the end.
enum class StatusCode {
  kOk = 0,
  kTimeout,             // a deadline passed
  kPeerLost,            // the peer went away with the call unanswered
  kOverloaded,          // the server refused the call: queue or in-flight limit reached
  kNoSuchMethod,        // a compatible endpoint lacks the method
  kUnsupportedVersion,  // no endpoint is compatible with the requested namespace/version
  kBadArguments,        // arity or type of an argument is wrong
  kRemoteError,         // the handler raised; remoteType() names the exception type
  kCancelled,           // the caller or the server cancelled the call
  kShuttingDown,        // the component is stopping and takes no new work
  kUnauthorized,        // the peer is not allowed
  kInvalidTarget,       // a Target lacks what its use needs
  kProtocolError,       // a message broke the wire protocol
  kInvalidState,        // a call not allowed in the object's current state
  kWouldDeadlock,       // a blocking call made from a thread it would wait for
  kTransportError,      // the transport failed (bind, connect, send)
};
// How many codes there are (one past the last).
inline constexpr size_t kStatusCodeCount = static_cast<size_t>(StatusCode::kTransportError) + 1;

// The stable name of a code, e.g. "Timeout"; "Unknown" for a value outside the enum.
std::string_view statusCodeName(StatusCode code);
// The code for a name produced by statusCodeName; kRemoteError for an unknown name.
StatusCode statusCodeFromName(std::string_view name);

// The outcome of an operation: ok, or a code with a message. Cheap to copy when ok.
// A RemoteError also carries the remote exception's type name and optional details, and, when
// the client registered that type, an exception_ptr that rebuilds it (see RpcClient).
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message);

  static Status ok() { return Status(); }
  static Status remote(std::string type, std::string message, std::string details = {});

  bool isOk() const { return rep_ == nullptr; }
  explicit operator bool() const { return isOk(); }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  const std::string& message() const;
  // For kRemoteError: the remote exception's type name; empty otherwise.
  const std::string& remoteType() const;
  const std::string& details() const;
  // A refusal: the server did not run the call (it was draining, or at its limits), so the
  // request had no effect and may go to another server. Travels on the wire ("refused").
  bool refused() const { return rep_ && rep_->refused; }
  Status asRefused() const;
  // The rebuilt remote exception, if the client registered its type; null otherwise.
  std::exception_ptr exception() const { return rep_ ? rep_->exception : nullptr; }
  Status withException(std::exception_ptr e) const;

  // "Timeout: call 'add' timed out after 100 ms"
  std::string toString() const;
  // Throws exception() if set, else StatusError. Precondition: !isOk().
  [[noreturn]] void raise() const;
  // Throws like raise() when not ok; returns otherwise (for code that prefers exceptions).
  void value() const {
    if (!isOk()) raise();
  }

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct Rep {
    StatusCode code;
    std::string message;
    std::string remoteType;
    std::string details;
    std::exception_ptr exception;
    bool refused = false;
  };
  std::shared_ptr<const Rep> rep_;  // null when ok
};

std::ostream& operator<<(std::ostream& os, const Status& status);

// Thrown by Status::raise() and Result<T>::value() on an error without a rebuilt exception.
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(Status status)
      : std::runtime_error(status.toString()), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

// A value or an error Status, shaped like std::expected<T, Status>.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::in_place_index<1>, std::move(status)) {  // NOLINT
    if (std::get<1>(v_).isOk()) {
      v_.template emplace<1>(StatusCode::kInvalidState, "Result built from an ok Status");
    }
  }

  bool isOk() const { return v_.index() == 0; }
  explicit operator bool() const { return isOk(); }
  // Ok when a value is held.
  Status status() const { return isOk() ? Status::ok() : std::get<1>(v_); }

  // The value; on an error, raises the status (rebuilt remote exception or StatusError).
  T& value() & {
    if (!isOk()) std::get<1>(v_).raise();
    return std::get<0>(v_);
  }
  const T& value() const& {
    if (!isOk()) std::get<1>(v_).raise();
    return std::get<0>(v_);
  }
  T&& value() && {
    if (!isOk()) std::get<1>(v_).raise();
    return std::move(std::get<0>(v_));
  }
  T valueOr(T fallback) const { return isOk() ? std::get<0>(v_) : std::move(fallback); }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

// Result<void> is a Status.
template <>
class [[nodiscard]] Result<void> : public Status {
 public:
  Result() = default;
  Result(Status status) : Status(std::move(status)) {}  // NOLINT
  Status status() const { return *this; }
};

}  // namespace switchboard
