// The wire envelope: writing each message kind straight into bytes, and checking the shape of
// a decoded Value before it becomes a WireMessage.
#include "messaging/detail/wire.h"

#include <array>
#include <iterator>
#include <limits>
#include <span>

namespace switchboard::detail {
namespace {

constexpr std::string_view kKindNames[] = {"request", "response", "notification", "heartbeat",
                                           "cancel"};

// ---- Encoding --------------------------------------------------------------------------------

void encodeExtension(const Extension& ext, std::string& out) {
  const size_t fields = (ext.ns.empty() ? 0 : 1) + (ext.version.empty() ? 0 : 1) +
                        (ext.context.isNil() ? 0 : 1) + (ext.budgetMs ? 1 : 0) +
                        (ext.callMonitorMs ? 1 : 0) + 1;
  encodeMapHeader(fields, out);
  if (!ext.ns.empty()) {
    encodeString("ns", out);
    encodeString(ext.ns, out);
  }
  if (!ext.version.empty()) {
    encodeString("v", out);
    encodeString(ext.version, out);
  }
  if (!ext.context.isNil()) {
    encodeString("ctx", out);
    encodeValue(ext.context, out);
  }
  if (ext.budgetMs) {
    encodeString("dl", out);
    encodeUInt(*ext.budgetMs, out);
  }
  if (ext.callMonitorMs) {
    encodeString("cm", out);
    encodeUInt(*ext.callMonitorMs, out);
  }
  encodeString("pv", out);
  encodeUInt(ext.protocolVersion, out);
}

void encodeError(const Status& error, std::string& out) {
  const bool hasType = !error.remoteType().empty();
  const bool hasDetails = !error.details().empty();
  encodeMapHeader(2 + (hasType ? 1 : 0) + (hasDetails ? 1 : 0) + (error.refused() ? 1 : 0), out);
  encodeString("code", out);
  encodeString(statusCodeName(error.code()), out);
  encodeString("message", out);
  encodeString(error.message(), out);
  if (hasType) {
    encodeString("type", out);
    encodeString(error.remoteType(), out);
  }
  if (hasDetails) {
    encodeString("details", out);
    encodeString(error.details(), out);
  }
  if (error.refused()) {
    encodeString("refused", out);
    encodeValue(Value(true), out);
  }
}

void encodeOne(const RequestMessage& m, std::string& out) {
  const bool withExt = !m.ext.empty();
  encodeArrayHeader(withExt ? 5 : 4, out);
  encodeUInt(static_cast<uint64_t>(MessageKind::kRequest), out);
  encodeUInt(m.msgid, out);
  encodeString(m.method, out);
  encodeArray(m.params, out);
  if (withExt) encodeExtension(m.ext, out);
}

void encodeOne(const ResponseMessage& m, std::string& out) {
  encodeArrayHeader(4, out);
  encodeUInt(static_cast<uint64_t>(MessageKind::kResponse), out);
  encodeUInt(m.msgid, out);
  if (m.error.isOk()) {
    encodeNil(out);
    encodeValue(m.result, out);
  } else {
    encodeError(m.error, out);
    encodeNil(out);
  }
}

void encodeOne(const NotificationMessage& m, std::string& out) {
  const bool withExt = !m.ext.empty();
  encodeArrayHeader(withExt ? 4 : 3, out);
  encodeUInt(static_cast<uint64_t>(MessageKind::kNotification), out);
  encodeString(m.method, out);
  encodeArray(m.params, out);
  if (withExt) encodeExtension(m.ext, out);
}

void encodeOne(const HeartbeatMessage& m, std::string& out) {
  encodeArrayHeader(2, out);
  encodeUInt(static_cast<uint64_t>(MessageKind::kHeartbeat), out);
  encodeUInt(m.msgid, out);
}

void encodeOne(const CancelMessage& m, std::string& out) {
  encodeArrayHeader(2, out);
  encodeUInt(static_cast<uint64_t>(MessageKind::kCancel), out);
  encodeUInt(m.msgid, out);
}

// ---- Decoding --------------------------------------------------------------------------------

Status protocolError(std::string message) {
  return Status(StatusCode::kProtocolError, std::move(message));
}

// The value of a non-negative integer Value; nullopt for anything else.
std::optional<uint64_t> asUnsigned(const Value& v) {
  if (v.type() == Value::Type::kUInt) return v.asUInt();
  if (v.type() == Value::Type::kInt && v.asInt() >= 0) return static_cast<uint64_t>(v.asInt());
  return std::nullopt;
}

Result<uint32_t> decodeMsgid(std::string_view kind, const Value& v) {
  const auto id = asUnsigned(v);
  if (!id || *id > std::numeric_limits<uint32_t>::max()) {
    return protocolError(std::string(kind) + " msgid must be an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(*id);
}

Status checkArity(std::string_view kind, std::span<const Value> a, size_t min, size_t max) {
  if (a.size() >= min && a.size() <= max) return Status::ok();
  std::string expected = std::to_string(min);
  if (max != min) expected += " or " + std::to_string(max);
  return protocolError(std::string(kind) + " must have " + expected + " elements, got " +
                       std::to_string(a.size()));
}

Result<std::string> decodeMethod(std::string_view kind, const Value& v,
                                 const DecodeLimits& limits) {
  if (!v.isString()) {
    return protocolError(std::string(kind) + " method must be a string, got " +
                         std::string(Value::typeName(v.type())));
  }
  const size_t size = v.asString().size();
  if (size == 0) return protocolError(std::string(kind) + " method must not be empty");
  if (size > limits.maxMethodName) {
    return protocolError(std::string(kind) + " method name of " + std::to_string(size) +
                         " bytes exceeds the limit of " + std::to_string(limits.maxMethodName) +
                         " bytes");
  }
  return v.asString();
}

Result<Array> decodeParams(std::string_view kind, Value& v) {
  if (!v.isArray()) {
    return protocolError(std::string(kind) + " params must be an array, got " +
                         std::string(Value::typeName(v.type())));
  }
  return std::move(v.asArray());
}

Status extTypeError(std::string_view kind, std::string_view key, std::string_view expected,
                    const Value& got) {
  return protocolError(std::string(kind) + " ext \"" + std::string(key) + "\" must be " +
                       std::string(expected) + ", got " + std::string(Value::typeName(got.type())));
}

// The extension's known keys, in the order decodeExtension checks their values, and their names
// on the wire (extKeyOf() tells them apart by these bytes).
enum class ExtKey { kNs, kVersion, kContext, kBudget, kMonitor, kProtocol, kCount };
constexpr std::string_view kExtKeyNames[] = {"ns", "v", "ctx", "dl", "cm", "pv"};
static_assert(std::size(kExtKeyNames) == static_cast<size_t>(ExtKey::kCount));

// extTypeError for a known key.
Status extTypeError(std::string_view kind, ExtKey key, std::string_view expected,
                    const Value& got) {
  return extTypeError(kind, kExtKeyNames[static_cast<size_t>(key)], expected, got);
}

constexpr int twoChars(char first, char second) {
  return (static_cast<unsigned char>(first) << 8) | static_cast<unsigned char>(second);
}

// Which known key `key` is; kCount for none. One look per map key, on the hot path of every
// request: its bytes, not a string comparison per known key.
ExtKey extKeyOf(std::string_view key) {
  switch (key.size()) {
    case 1:
      return key[0] == 'v' ? ExtKey::kVersion : ExtKey::kCount;
    case 2:
      switch (twoChars(key[0], key[1])) {
        case twoChars('n', 's'):
          return ExtKey::kNs;
        case twoChars('d', 'l'):
          return ExtKey::kBudget;
        case twoChars('c', 'm'):
          return ExtKey::kMonitor;
        case twoChars('p', 'v'):
          return ExtKey::kProtocol;
        default:
          return ExtKey::kCount;
      }
    case 3:
      return key == "ctx" ? ExtKey::kContext : ExtKey::kCount;
    default:
      return ExtKey::kCount;
  }
}

// Reads the known keys of an extension map (the first value under each), moving the context out
// of it; unknown keys are ignored.
Result<Extension> decodeExtension(std::string_view kind, Value& v) {
  if (!v.isMap()) {
    return protocolError(std::string(kind) + " ext must be a map, got " +
                         std::string(Value::typeName(v.type())));
  }
  std::array<Value*, static_cast<size_t>(ExtKey::kCount)> found{};
  for (auto& [key, value] : v.asMap()) {
    if (!key.isString()) continue;
    const ExtKey known = extKeyOf(key.asString());
    if (known == ExtKey::kCount) continue;
    Value*& slot = found[static_cast<size_t>(known)];
    if (slot == nullptr) slot = &value;
  }
  const auto at = [&found](ExtKey key) { return found[static_cast<size_t>(key)]; };
  Extension ext;
  if (const Value* ns = at(ExtKey::kNs)) {
    if (!ns->isString()) return extTypeError(kind, ExtKey::kNs, "a string", *ns);
    ext.ns = ns->asString();
  }
  if (const Value* version = at(ExtKey::kVersion)) {
    if (!version->isString()) return extTypeError(kind, ExtKey::kVersion, "a string", *version);
    ext.version = version->asString();
  }
  if (Value* context = at(ExtKey::kContext)) {
    if (!context->isMap() && !context->isNil()) {
      return extTypeError(kind, ExtKey::kContext, "a map or nil", *context);
    }
    ext.context = std::move(*context);
  }
  const struct {
    ExtKey key;
    std::optional<uint64_t>* field;
  } optionalFields[] = {{ExtKey::kBudget, &ext.budgetMs}, {ExtKey::kMonitor, &ext.callMonitorMs}};
  for (const auto& [key, field] : optionalFields) {
    if (const Value* value = at(key)) {
      const auto n = asUnsigned(*value);
      if (!n) return extTypeError(kind, key, "an unsigned integer", *value);
      *field = *n;
    }
  }
  if (const Value* pv = at(ExtKey::kProtocol)) {
    const auto n = asUnsigned(*pv);
    if (!n) return extTypeError(kind, ExtKey::kProtocol, "an unsigned integer", *pv);
    ext.protocolVersion = *n;
  }
  return ext;
}

// A response's error element: nil is ok; see ResponseMessage for the rest.
Status decodeError(const Value& v) {
  if (v.isNil()) return Status::ok();
  if (v.isString()) return Status::remote("", v.asString());
  if (!v.isMap()) return Status::remote("", v.toJson());
  const Value* code = v.find("code");
  const Value* message = v.find("message");
  const Value* type = v.find("type");
  const Value* details = v.find("details");
  const auto isStringOrAbsent = [](const Value* field) { return !field || field->isString(); };
  if (!code || !code->isString() || !isStringOrAbsent(message) || !isStringOrAbsent(type) ||
      !isStringOrAbsent(details)) {
    return Status::remote("", v.toJson());
  }
  const auto text = [](const Value* field) { return field ? field->asString() : std::string(); };
  const std::string& name = code->asString();
  const StatusCode statusCode = statusCodeFromName(name);
  if (statusCode != StatusCode::kRemoteError) {
    const Value* refused = v.find("refused");
    Status status(statusCode, text(message));
    return refused && refused->isBool() && refused->asBool() ? status.asRefused() : status;
  }
  if (name == statusCodeName(StatusCode::kRemoteError)) {
    return Status::remote(text(type), text(message), text(details));
  }
  std::string described = name;
  if (message && !message->asString().empty()) described += ": " + message->asString();
  return Status::remote(text(type), std::move(described), text(details));
}

// Each decodeX below gets the envelope array, its arity not yet checked beyond the kind.

DecodedMessage decodeRequest(std::span<Value> a, const DecodeLimits& limits) {
  constexpr std::string_view kKind = "request";
  std::optional<uint32_t> msgid;
  if (a.size() >= 2) {
    auto id = decodeMsgid(kKind, a[1]);
    if (!id) return DecodeError{id.status(), std::nullopt};
    msgid = *id;
  }
  const auto fail = [&msgid](Status status) { return DecodeError{std::move(status), msgid}; };
  if (Status s = checkArity(kKind, a, 4, 5); !s) return fail(std::move(s));
  RequestMessage m;
  m.msgid = *msgid;
  auto method = decodeMethod(kKind, a[2], limits);
  if (!method) return fail(method.status());
  m.method = std::move(method).value();
  auto params = decodeParams(kKind, a[3]);
  if (!params) return fail(params.status());
  m.params = std::move(params).value();
  if (a.size() == 5) {
    auto ext = decodeExtension(kKind, a[4]);
    if (!ext) return fail(ext.status());
    m.ext = std::move(ext).value();
  }
  return WireMessage(std::move(m));
}

DecodedMessage decodeResponse(std::span<Value> a) {
  constexpr std::string_view kKind = "response";
  if (Status s = checkArity(kKind, a, 4, 4); !s) return DecodeError{std::move(s), std::nullopt};
  auto msgid = decodeMsgid(kKind, a[1]);
  if (!msgid) return DecodeError{msgid.status(), std::nullopt};
  ResponseMessage m;
  m.msgid = *msgid;
  m.error = decodeError(a[2]);
  m.result = std::move(a[3]);
  return WireMessage(std::move(m));
}

DecodedMessage decodeNotification(std::span<Value> a, const DecodeLimits& limits) {
  constexpr std::string_view kKind = "notification";
  if (Status s = checkArity(kKind, a, 3, 4); !s) return DecodeError{std::move(s), std::nullopt};
  NotificationMessage m;
  auto method = decodeMethod(kKind, a[1], limits);
  if (!method) return DecodeError{method.status(), std::nullopt};
  m.method = std::move(method).value();
  auto params = decodeParams(kKind, a[2]);
  if (!params) return DecodeError{params.status(), std::nullopt};
  m.params = std::move(params).value();
  if (a.size() == 4) {
    auto ext = decodeExtension(kKind, a[3]);
    if (!ext) return DecodeError{ext.status(), std::nullopt};
    m.ext = std::move(ext).value();
  }
  return WireMessage(std::move(m));
}

// Heartbeat and cancel: [kind, msgid].
template <typename M>
DecodedMessage decodeMsgidOnly(std::string_view kind, std::span<const Value> a) {
  if (Status s = checkArity(kind, a, 2, 2); !s) return DecodeError{std::move(s), std::nullopt};
  auto msgid = decodeMsgid(kind, a[1]);
  if (!msgid) return DecodeError{msgid.status(), std::nullopt};
  return WireMessage(M{*msgid});
}

// Encodes into a buffer this thread keeps, then appends that in one piece: `out` grows once
// instead of doubling its way up item by item.
template <typename Message>
void appendEncoded(const Message& message, std::string& out) {
  constexpr size_t kKeptCapacity = size_t{64} << 10;
  thread_local std::string scratch;
  scratch.clear();
  encodeOne(message, scratch);
  out.append(scratch);
  if (scratch.capacity() > kKeptCapacity) std::string().swap(scratch);
}

}  // namespace

void encodeMessage(const RequestMessage& message, std::string& out) {
  appendEncoded(message, out);
}
void encodeMessage(const ResponseMessage& message, std::string& out) {
  appendEncoded(message, out);
}
void encodeMessage(const NotificationMessage& message, std::string& out) {
  appendEncoded(message, out);
}
void encodeMessage(const HeartbeatMessage& message, std::string& out) {
  appendEncoded(message, out);
}
void encodeMessage(const CancelMessage& message, std::string& out) { appendEncoded(message, out); }

void encodeMessage(const WireMessage& message, std::string& out) {
  std::visit([&out](const auto& m) { appendEncoded(m, out); }, message);
}

std::string encodeMessage(const WireMessage& message) {
  std::string out;
  encodeMessage(message, out);
  return out;
}

DecodedMessage decodeMessage(std::string_view bytes, const DecodeLimits& limits) {
  Envelope envelope;
  if (Status s = decodeEnvelope(bytes, limits, envelope); !s) return DecodeError{s, std::nullopt};
  if (!envelope.isArray()) {
    return DecodeError{protocolError("message must be an array, got " +
                                     std::string(Value::typeName(envelope.whole().type()))),
                       std::nullopt};
  }
  const std::span<Value> a = envelope.items();
  if (a.empty()) {
    return DecodeError{protocolError("message must not be an empty array"), std::nullopt};
  }
  const Value& kindValue = a[0];
  if (!kindValue.isInteger()) {
    return DecodeError{protocolError("message kind must be an integer, got " +
                                     std::string(Value::typeName(kindValue.type()))),
                       std::nullopt};
  }
  const auto kind = asUnsigned(kindValue);
  if (!kind || *kind >= std::size(kKindNames)) {
    return DecodeError{protocolError("unknown message kind " + kindValue.toJson()), std::nullopt};
  }
  switch (static_cast<MessageKind>(*kind)) {
    case MessageKind::kRequest:
      return decodeRequest(a, limits);
    case MessageKind::kResponse:
      return decodeResponse(a);
    case MessageKind::kNotification:
      return decodeNotification(a, limits);
    case MessageKind::kHeartbeat:
      return decodeMsgidOnly<HeartbeatMessage>(kKindNames[*kind], a);
    case MessageKind::kCancel:
      return decodeMsgidOnly<CancelMessage>(kKindNames[*kind], a);
  }
  return DecodeError{protocolError("unknown message kind " + kindValue.toJson()), std::nullopt};
}

}  // namespace switchboard::detail
