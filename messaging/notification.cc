// Notification: priority names and the wire encoding of a notification (a MessagePack map).
// Decoding is bounded by the codec's limits and checks every field's type.
#include "messaging/notification.h"

#include "messaging/detail/codec.h"

namespace switchboard {

namespace {
constexpr std::array<std::string_view, 7> kPriorityNames = {"audit", "debug",    "info",  "warn",
                                                            "error", "critical", "sample"};
const std::string kEmpty;

const std::string& stringField(const Value& map, std::string_view key) {
  const Value* v = map.find(key);
  return v != nullptr && v->isString() ? v->asString() : kEmpty;
}
}  // namespace

std::string_view priorityName(Priority priority) {
  return kPriorityNames[static_cast<size_t>(priority)];
}

std::optional<Priority> parsePriority(std::string_view name) {
  if (name == "warning") return Priority::kWarn;
  for (size_t i = 0; i < kPriorityNames.size(); ++i) {
    if (kPriorityNames[i] == name) return static_cast<Priority>(i);
  }
  return std::nullopt;
}

std::string notificationTopic(std::string_view topic, Priority priority) {
  std::string out(topic);
  out += '.';
  out += priorityName(priority);
  return out;
}

const std::string& Notification::messageId() const { return stringField(metadata, "message_id"); }
const std::string& Notification::timestamp() const { return stringField(metadata, "timestamp"); }

namespace detail {

std::string encodeNotification(const Notification& n) {
  Map body;
  body.reserve(7);
  body.emplace_back(Value("message_id"), Value(n.messageId()));
  body.emplace_back(Value("publisher_id"), Value(n.publisherId));
  body.emplace_back(Value("event_type"), Value(n.eventType));
  body.emplace_back(Value("priority"), Value(priorityName(n.priority)));
  body.emplace_back(Value("payload"), n.payload);
  body.emplace_back(Value("timestamp"), Value(n.timestamp()));
  body.emplace_back(Value("context"), n.context);
  return encodeValue(Value(std::move(body)));
}

Result<Notification> decodeNotification(std::string_view bytes) {
  Result<Value> decoded = decodeValue(bytes);
  if (!decoded) return decoded.status();
  const Value& body = *decoded;
  if (!body.isMap()) return Status(StatusCode::kProtocolError, "a notification must be a map");
  const auto text = [&](std::string_view key) -> Result<std::string> {
    const Value* v = body.find(key);
    if (v == nullptr || !v->isString()) {
      return Status(StatusCode::kProtocolError,
                    "notification field '" + std::string(key) + "' missing or not a string");
    }
    return v->asString();
  };
  Notification n;
  Result<std::string> messageId = text("message_id");
  if (!messageId) return messageId.status();
  Result<std::string> publisherId = text("publisher_id");
  if (!publisherId) return publisherId.status();
  Result<std::string> eventType = text("event_type");
  if (!eventType) return eventType.status();
  Result<std::string> priority = text("priority");
  if (!priority) return priority.status();
  Result<std::string> timestamp = text("timestamp");
  if (!timestamp) return timestamp.status();
  std::optional<Priority> parsed = parsePriority(*priority);
  if (!parsed) {
    return Status(StatusCode::kProtocolError, "unknown notification priority '" + *priority + "'");
  }
  const Value* context = body.find("context");
  if (context != nullptr && !context->isMap() && !context->isNil()) {
    return Status(StatusCode::kProtocolError, "notification field 'context' must be a map or nil");
  }
  if (const Value* payload = body.find("payload")) n.payload = *payload;
  if (context != nullptr) n.context = *context;
  n.publisherId = std::move(publisherId).value();
  n.eventType = std::move(eventType).value();
  n.priority = *parsed;
  n.metadata = Value(Map{{Value("message_id"), Value(std::move(messageId).value())},
                         {Value("timestamp"), Value(std::move(timestamp).value())}});
  return n;
}

}  // namespace detail
}  // namespace switchboard
