// Value: map lookup, type names, the compact JSON rendering, and the BadArguments statuses of
// ValueTraits conversions.
#include "messaging/value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace switchboard {
namespace {

constexpr std::string_view kBase64Alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Appends `s` as a JSON string literal: quotes, backslashes and control characters escaped;
// other bytes (UTF-8 expected) copied as they are.
void appendJsonString(std::string_view s, std::string& out) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned char>(c));
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

// Appends the standard, padded base64 (RFC 4648) of `bytes`.
void appendBase64(std::string_view bytes, std::string& out) {
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t n = (static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16) |
                       (static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8) |
                       static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 2]));
    out += kBase64Alphabet[(n >> 18) & 63];
    out += kBase64Alphabet[(n >> 12) & 63];
    out += kBase64Alphabet[(n >> 6) & 63];
    out += kBase64Alphabet[n & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest == 0) return;
  uint32_t n = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
  if (rest == 2) n |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
  out += kBase64Alphabet[(n >> 18) & 63];
  out += kBase64Alphabet[(n >> 12) & 63];
  out += rest == 2 ? kBase64Alphabet[(n >> 6) & 63] : '=';
  out += '=';
}

// Appends a double: the shortest text that reads back as the same double, with ".0" added to
// integral values so they still read as doubles; NaN and infinities as NaN, Infinity,
// -Infinity (as JavaScript and Python's json module write them).
void appendDouble(double d, std::string& out) {
  if (std::isnan(d)) {
    out += "NaN";
    return;
  }
  if (std::isinf(d)) {
    out += d > 0 ? "Infinity" : "-Infinity";
    return;
  }
  char buffer[32];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), d);
  const std::string_view text(buffer, ec == std::errc() ? static_cast<size_t>(end - buffer) : 0);
  out += text;
  if (text.find_first_of(".e") == std::string_view::npos) out += ".0";
}

// The most bytes of a non-string map key's JSON text that toJson() shows.
constexpr size_t kMaxKeyText = 256;

void appendJson(const Value& value, std::string& out) {
  switch (value.type()) {
    case Value::Type::kNil:
      out += "null";
      return;
    case Value::Type::kBool:
      out += value.asBool() ? "true" : "false";
      return;
    case Value::Type::kInt:
      out += std::to_string(value.asInt());
      return;
    case Value::Type::kUInt:
      out += std::to_string(value.asUInt());
      return;
    case Value::Type::kDouble:
      appendDouble(value.asDouble(), out);
      return;
    case Value::Type::kString:
      appendJsonString(value.asString(), out);
      return;
    case Value::Type::kBinary:
      out += '"';
      appendBase64(value.asBinary().bytes, out);
      out += '"';
      return;
    case Value::Type::kArray: {
      out += '[';
      bool first = true;
      for (const Value& item : value.asArray()) {
        if (!first) out += ',';
        first = false;
        appendJson(item, out);
      }
      out += ']';
      return;
    }
    case Value::Type::kMap: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.asMap()) {
        if (!first) out += ',';
        first = false;
        if (key.isString()) {
          appendJsonString(key.asString(), out);
        } else {
          // Cut, so that keys nested in keys (each level escaping the one inside) cannot make
          // the text grow exponentially with the nesting.
          std::string text = key.toJson();
          if (text.size() > kMaxKeyText) {
            text.resize(kMaxKeyText);
            text += "...";
          }
          appendJsonString(text, out);
        }
        out += ':';
        appendJson(item, out);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace

// Linear in the map's size; with duplicate keys the first in wire order wins; null for a
// non-map.
const Value* Value::find(std::string_view key) const {
  if (!isMap()) return nullptr;
  for (const auto& [k, v] : asMap()) {
    if (k.isString() && k.asString() == key) return &v;
  }
  return nullptr;
}

std::string_view Value::typeName(Type type) {
  switch (type) {
    case Type::kNil:
      return "nil";
    case Type::kBool:
      return "bool";
    case Type::kInt:
    case Type::kUInt:
      return "integer";
    case Type::kDouble:
      return "double";
    case Type::kString:
      return "string";
    case Type::kBinary:
      return "binary";
    case Type::kArray:
      return "array";
    case Type::kMap:
      return "map";
  }
  return "unknown";
}

// Compact JSON without spaces: nil as null; doubles as in appendDouble (NaN and infinities
// are the only non-JSON output); strings escaped as in appendJsonString; binaries as a JSON
// string of their padded base64; map keys that are not strings as the JSON string of their
// own toJson() (cut at 256 bytes, with "..."), so {1: 2} renders as {"1":2}.
std::string Value::toJson() const {
  std::string out;
  appendJson(*this, out);
  return out;
}

namespace detail {

Status conversionError(std::string_view expected, const Value& got) {
  std::string message = "expected ";
  message += expected;
  message += ", got ";
  message += Value::typeName(got.type());
  return Status(StatusCode::kBadArguments, std::move(message));
}

Status conversionRangeError(std::string_view type, const Value& got) {
  std::string message(type);
  message += " out of range: ";
  message += got.toJson();
  return Status(StatusCode::kBadArguments, std::move(message));
}

}  // namespace detail
}  // namespace switchboard
