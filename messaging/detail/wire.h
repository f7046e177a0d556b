// The wire envelope: MessagePack-RPC compatible request, response and notification arrays, plus
// heartbeat and cancel messages and an optional extension map; encoding and validating decoding.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "base/status.h"
#include "messaging/detail/codec.h"
#include "messaging/value.h"

namespace switchboard::detail {

// The version of this envelope, sent as "pv" in every extension map that is written.
inline constexpr uint64_t kProtocolVersion = 1;

// The first element of every envelope array. 0..2 are MessagePack-RPC's own kinds.
enum class MessageKind : uint8_t {
  kRequest = 0,
  kResponse = 1,
  kNotification = 2,
  kHeartbeat = 3,
  kCancel = 4,
};

// The optional trailing map of requests and notifications. A plain MessagePack-RPC peer never
// sends it, and gets none from us unless the caller set a field. Decoding ignores unknown keys
// (forward compatibility) but rejects a known key of the wrong type.
struct Extension {
  std::string ns;       // "ns": the endpoint namespace; empty for the default one
  std::string version;  // "v": "major.minor" or empty; its format is checked by the dispatcher
  Value context;        // "ctx": a map of caller context, or nil
  std::optional<uint64_t> budgetMs;       // "dl": the caller's remaining time in ms when sent
  std::optional<uint64_t> callMonitorMs;  // "cm": wants call-in-progress heartbeats every N ms
  uint64_t protocolVersion = kProtocolVersion;  // "pv": the sender's protocol version

  // True when every field has its default value; such an extension is not written at all.
  // Otherwise the map holds the non-default fields and always "pv".
  bool empty() const {
    return ns.empty() && version.empty() && context.isNil() && !budgetMs && !callMonitorMs &&
           protocolVersion == kProtocolVersion;
  }
  friend bool operator==(const Extension&, const Extension&) = default;
};

// [0, msgid, method, params] or [0, msgid, method, params, ext].
struct RequestMessage {
  uint32_t msgid = 0;
  std::string method;
  Array params;
  Extension ext;
  friend bool operator==(const RequestMessage&, const RequestMessage&) = default;
};

// [1, msgid, error, result]: error nil and result the value when `error` is ok; otherwise the
// error map {"code": statusCodeName, "message": ..., "type": ..., "details": ...} ("type" and
// "details" only when non-empty) and a nil result.
// Decoding a non-nil error that is not such a map (a plain MessagePack-RPC peer may send a
// string or anything) gives Status::remote("", the string, or else its toJson()). A map with a
// known "code" gives that code and "message"; "RemoteError" gives Status::remote(type,
// message, details); an unknown code name gives Status::remote(type, "<code>: <message>",
// details). The decoded `result` is whatever the peer sent, also beside an error.
// Note Status's operator== compares only code and message.
struct ResponseMessage {
  uint32_t msgid = 0;
  Status error;
  Value result;
  friend bool operator==(const ResponseMessage&, const ResponseMessage&) = default;
};

// [2, method, params] or [2, method, params, ext].
struct NotificationMessage {
  std::string method;
  Array params;
  Extension ext;
  friend bool operator==(const NotificationMessage&, const NotificationMessage&) = default;
};

// [3, msgid]: server to client, the call `msgid` is still in progress (see Extension's "cm").
struct HeartbeatMessage {
  uint32_t msgid = 0;
  friend bool operator==(const HeartbeatMessage&, const HeartbeatMessage&) = default;
};

// [4, msgid]: client to server, the caller of `msgid` gave up; the server may stop the call.
struct CancelMessage {
  uint32_t msgid = 0;
  friend bool operator==(const CancelMessage&, const CancelMessage&) = default;
};

// Variant index i holds the message of MessageKind i.
using WireMessage = std::variant<RequestMessage, ResponseMessage, NotificationMessage,
                                 HeartbeatMessage, CancelMessage>;

// Appends the MessagePack encoding of `message` to `out`. One overload per kind, so that a
// message is encoded where it is, without a copy into a WireMessage.
// Precondition: method names, strings and containers are shorter than 2^32 (see encodeValue).
void encodeMessage(const RequestMessage& message, std::string& out);
void encodeMessage(const ResponseMessage& message, std::string& out);
void encodeMessage(const NotificationMessage& message, std::string& out);
void encodeMessage(const HeartbeatMessage& message, std::string& out);
void encodeMessage(const CancelMessage& message, std::string& out);
void encodeMessage(const WireMessage& message, std::string& out);
// The MessagePack encoding of `message`.
std::string encodeMessage(const WireMessage& message);

// Why decodeMessage rejected some bytes.
struct DecodeError {
  Status status;  // always kProtocolError
  // Set when the envelope was a request whose msgid could be read, so that the server can
  // send a typed error reply; unset for every other kind and for unreadable data.
  std::optional<uint32_t> msgid;
};

// The outcome of decodeMessage: a valid message or a DecodeError. Accessing the side not held
// throws std::bad_variant_access (a programming error).
class [[nodiscard]] DecodedMessage {
 public:
  DecodedMessage(WireMessage message)  // NOLINT: implicit by design
      : v_(std::in_place_index<0>, std::move(message)) {}
  DecodedMessage(DecodeError error)  // NOLINT
      : v_(std::in_place_index<1>, std::move(error)) {}

  bool isOk() const { return v_.index() == 0; }
  explicit operator bool() const { return isOk(); }
  // Ok when a message is held, else the DecodeError's status.
  Status status() const { return isOk() ? Status::ok() : std::get<1>(v_).status; }

  // Precondition: isOk().
  const WireMessage& message() const { return std::get<0>(v_); }
  WireMessage& message() { return std::get<0>(v_); }
  // Precondition: !isOk().
  const DecodeError& error() const { return std::get<1>(v_); }

 private:
  std::variant<WireMessage, DecodeError> v_;
};

// Decodes one envelope (with decodeValue and `limits`) and validates its shape: a top-level
// array whose first element is an integer kind 0..4; exact arities (request 4 or 5, response
// 4, notification 3 or 4, heartbeat 2, cancel 2); msgid an unsigned integer <= UINT32_MAX;
// method a string of 1..limits.maxMethodName bytes; params an array; ext a map whose known
// keys have the right types ("ns" and "v" strings, "ctx" a map or nil, "dl", "cm" and "pv"
// unsigned integers; with duplicate keys the first counts). Every violation, like every
// decodeValue failure, is a kProtocolError naming what was wrong, e.g. "unknown message kind 7"
// or "request msgid must be an unsigned 32-bit integer".
DecodedMessage decodeMessage(std::string_view bytes, const DecodeLimits& limits = DecodeLimits{});

}  // namespace switchboard::detail
