// Notification: what a Notifier sends and a NotificationListener receives (oslo.messaging's
// notifications): priorities, the message fields, and their wire encoding.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "messaging/serializer.h"
#include "messaging/value.h"

namespace switchboard {

enum class Priority { kAudit, kDebug, kInfo, kWarn, kError, kCritical, kSample };
inline constexpr std::array<Priority, 7> kAllPriorities = {
    Priority::kAudit, Priority::kDebug,    Priority::kInfo,  Priority::kWarn,
    Priority::kError, Priority::kCritical, Priority::kSample};
// "audit", "debug", "info", "warn", "error", "critical", "sample".
std::string_view priorityName(Priority priority);
// The inverse of priorityName; "warning" is read as kWarn (oslo's alias). Empty when unknown.
std::optional<Priority> parsePriority(std::string_view name);
// The transport topic a notification for `topic` at `priority` is published to: "<topic>.<priority>".
std::string notificationTopic(std::string_view topic, Priority priority);

// One notification, as a listener's endpoints see it (after the serializer).
struct Notification {
  Context context;  // a map, or nil
  std::string publisherId;
  std::string eventType;
  Priority priority = Priority::kInfo;
  Value payload;
  // {"message_id": unique string, "timestamp": ISO 8601 UTC with microseconds}
  Value metadata;

  const std::string& messageId() const;
  const std::string& timestamp() const;
};

namespace detail {
// The wire body: a MessagePack map {"message_id", "publisher_id", "event_type", "priority",
// "payload", "timestamp", "context"} (docs/PROTOCOL.md).
std::string encodeNotification(const Notification& notification);
// kProtocolError naming the first missing or mistyped field; bounded like every decode.
Result<Notification> decodeNotification(std::string_view bytes);
}  // namespace detail

}  // namespace switchboard
