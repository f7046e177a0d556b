// parseJson: JSON text to a Value, for the CLI's arguments (the inverse of Value::toJson for
// JSON's types). Strict RFC 8259 with a nesting limit.
#pragma once

#include <string_view>

#include "base/status.h"
#include "messaging/value.h"

namespace switchboard::tools {

// Integers without fraction or exponent become integers (signed or, above INT64_MAX, unsigned);
// other numbers doubles. kBadArguments naming the offset on malformed input or nesting over 64.
Result<Value> parseJson(std::string_view text);

}  // namespace switchboard::tools
