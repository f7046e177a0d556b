// Test support: a ReplyCallback made from a function of one reply. Header-only.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <utility>

#include "transports/transport.h"

namespace switchboard::testing {

// Calls `each` with every reply of a batch, in order.
inline ReplyCallback eachReply(std::function<void(std::string bytes)> each) {
  return [each = std::move(each)](std::span<const std::string_view> replies) {
    for (std::string_view bytes : replies) each(std::string(bytes));
  };
}

}  // namespace switchboard::testing
