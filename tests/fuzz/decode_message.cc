// Fuzz target: the wire envelope decoder (detail::decodeMessage) on arbitrary bytes, and the
// encode/decode round trip of whatever it accepts.
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <variant>

#include "messaging/detail/codec.h"
#include "messaging/detail/wire.h"
#include "targets.h"

namespace switchboard::fuzz {
namespace {

using detail::DecodedMessage;
using detail::WireMessage;

// True when `v` holds a NaN anywhere (a NaN is not equal to itself, so such messages are only
// compared by their encodings).
bool hasNaN(const Value& v) {
  switch (v.type()) {
    case Value::Type::kDouble:
      return std::isnan(v.asDouble());
    case Value::Type::kArray:
      for (const Value& item : v.asArray()) {
        if (hasNaN(item)) return true;
      }
      return false;
    case Value::Type::kMap:
      for (const auto& [key, item] : v.asMap()) {
        if (hasNaN(key) || hasNaN(item)) return true;
      }
      return false;
    default:
      return false;
  }
}

bool hasNaN(const WireMessage& message) {
  if (const auto* r = std::get_if<detail::RequestMessage>(&message)) {
    return hasNaN(Value(r->params)) || hasNaN(r->ext.context);
  }
  if (const auto* n = std::get_if<detail::NotificationMessage>(&message)) {
    return hasNaN(Value(n->params)) || hasNaN(n->ext.context);
  }
  if (const auto* r = std::get_if<detail::ResponseMessage>(&message)) return hasNaN(r->result);
  return false;
}

// The msgid a request envelope carries in element 1, if the bytes are one and it is readable.
std::optional<uint32_t> readableRequestMsgid(std::string_view bytes) {
  Result<Value> value = detail::decodeValue(bytes);
  if (!value || !value->isArray()) return std::nullopt;
  const Array& a = value->asArray();
  if (a.size() < 2 || !a[0].isInteger() || a[0] != Value(0)) return std::nullopt;
  if (a[1].type() == Value::Type::kInt && a[1].asInt() >= 0 &&
      a[1].asInt() <= std::numeric_limits<uint32_t>::max()) {
    return static_cast<uint32_t>(a[1].asInt());
  }
  return std::nullopt;  // larger values decode as kUInt only above INT64_MAX: out of range too
}

// A decoded message equals its round trip; a response with an error is compared by msgid and
// error only, since its result is not sent beside an error.
bool sameMessage(const WireMessage& a, const WireMessage& b) {
  const auto* ra = std::get_if<detail::ResponseMessage>(&a);
  const auto* rb = std::get_if<detail::ResponseMessage>(&b);
  if (ra && rb && !ra->error.isOk()) {
    return ra->msgid == rb->msgid && ra->error == rb->error &&
           ra->error.remoteType() == rb->error.remoteType() &&
           ra->error.details() == rb->error.details() && rb->result.isNil();
  }
  return a == b;
}

}  // namespace

void fuzzDecodeMessage(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const DecodedMessage decoded = detail::decodeMessage(bytes);

  detail::DecodeLimits tight;
  tight.maxMessageBytes = 1024;
  tight.maxArray = 16;
  tight.maxMap = 16;
  tight.maxString = 64;
  tight.maxBinary = 64;
  tight.maxExt = 16;
  tight.maxDepth = 4;
  tight.maxMethodName = 16;
  const DecodedMessage tightly = detail::decodeMessage(bytes, tight);

  if (!decoded) {
    const detail::DecodeError& error = decoded.error();
    FUZZ_CHECK(error.status.code() == StatusCode::kProtocolError, error.status.toString());
    FUZZ_CHECK(!error.status.message().empty(), "a decode error names what was wrong");
    FUZZ_CHECK(error.msgid == readableRequestMsgid(bytes),
               "a msgid exactly for a request whose msgid is readable");
    FUZZ_CHECK(!tightly, "tighter limits accepted what the defaults rejected");
    return;
  }

  const WireMessage& message = decoded.message();
  const std::string once = detail::encodeMessage(message);
  const DecodedMessage again = detail::decodeMessage(once);
  FUZZ_CHECK(again.isOk(), "its own encoding does not decode: " + again.status().toString());
  FUZZ_CHECK(again.message().index() == message.index(), "the round trip changed the kind");
  FUZZ_CHECK(detail::encodeMessage(again.message()) == once, "encoding is not a fixed point");
  if (!hasNaN(message)) {
    FUZZ_CHECK(sameMessage(message, again.message()), "the round trip changed the message");
  }
  if (tightly) {
    FUZZ_CHECK(detail::encodeMessage(tightly.message()) == once,
               "tighter limits decoded another message");
  }
}

}  // namespace switchboard::fuzz
