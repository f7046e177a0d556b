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
  return [each = std::move(each)](std::span<std::string> replies) {
    for (std::string& bytes : replies) each(std::move(bytes));
  };
}

}  // namespace switchboard::testing
