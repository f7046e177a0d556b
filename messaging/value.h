// Value: a dynamically typed MessagePack value (nil, bool, integers, double, string, binary,
// array, map), and ValueTraits<T>, the checked conversions between Values and C++ types.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "base/status.h"

namespace switchboard {

class Value;
using Array = std::vector<Value>;
// Maps keep wire order; keys may be any Value (MessagePack allows it), usually strings.
using Map = std::vector<std::pair<Value, Value>>;
struct Binary {
  std::string bytes;
  friend bool operator==(const Binary&, const Binary&) = default;
};

class Value {
 public:
  enum class Type { kNil, kBool, kInt, kUInt, kDouble, kString, kBinary, kArray, kMap };

  Value() = default;
  Value(std::nullptr_t) {}                 // NOLINT: implicit by design, as for all below
  Value(bool b) : v_(b) {}                 // NOLINT
  Value(double d) : v_(d) {}               // NOLINT
  Value(const char* s) : v_(std::string(s)) {}  // NOLINT
  Value(std::string s) : v_(std::move(s)) {}     // NOLINT
  Value(std::string_view s) : v_(std::string(s)) {}  // NOLINT
  Value(Binary b) : v_(std::move(b)) {}   // NOLINT
  Value(Array a) : v_(std::move(a)) {}    // NOLINT
  Value(Map m) : v_(std::move(m)) {}      // NOLINT
  template <typename I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
  Value(I i) {  // NOLINT
    if constexpr (std::is_signed_v<I>) {
      v_ = static_cast<int64_t>(i);
    } else if (static_cast<uint64_t>(i) <= static_cast<uint64_t>(INT64_MAX)) {
      v_ = static_cast<int64_t>(i);
    } else {
      v_ = static_cast<uint64_t>(i);
    }
  }

  Type type() const { return static_cast<Type>(v_.index()); }
  bool isNil() const { return type() == Type::kNil; }
  bool isBool() const { return type() == Type::kBool; }
  bool isInteger() const { return type() == Type::kInt || type() == Type::kUInt; }
  bool isDouble() const { return type() == Type::kDouble; }
  bool isString() const { return type() == Type::kString; }
  bool isBinary() const { return type() == Type::kBinary; }
  bool isArray() const { return type() == Type::kArray; }
  bool isMap() const { return type() == Type::kMap; }

  // Unchecked accessors: the caller checked type() first.
  bool asBool() const { return std::get<bool>(v_); }
  int64_t asInt() const { return std::get<int64_t>(v_); }
  uint64_t asUInt() const { return std::get<uint64_t>(v_); }
  double asDouble() const { return std::get<double>(v_); }
  const std::string& asString() const { return std::get<std::string>(v_); }
  std::string& asString() { return std::get<std::string>(v_); }
  const Binary& asBinary() const { return std::get<Binary>(v_); }
  Binary& asBinary() { return std::get<Binary>(v_); }
  const Array& asArray() const { return std::get<Array>(v_); }
  Array& asArray() { return std::get<Array>(v_); }
  const Map& asMap() const { return std::get<Map>(v_); }
  Map& asMap() { return std::get<Map>(v_); }

  // For a map: the value under string key `key`, or null.
  const Value* find(std::string_view key) const;

  // "nil", "bool", "integer", "double", "string", "binary", "array", "map".
  static std::string_view typeName(Type type);
  // A compact JSON-like rendering, for logs, errors and the CLI.
  std::string toJson() const;

  friend bool operator==(const Value&, const Value&) = default;

 private:
  std::variant<std::monostate, bool, int64_t, uint64_t, double, std::string, Binary, Array, Map>
      v_;
};

// ValueTraits<T>: to(T) -> Value and from(const Value&) -> Result<T> with BadArguments-style
// messages ("expected integer, got string"). Specialise it for your own types. A from(Value&&)
// overload, where there is one, takes the contents instead of copying them.
template <typename T, typename Enable = void>
struct ValueTraits;

namespace detail {
Status conversionError(std::string_view expected, const Value& got);
Status conversionRangeError(std::string_view type, const Value& got);
}  // namespace detail

template <>
struct ValueTraits<Value> {
  static Value to(Value v) { return v; }
  static Result<Value> from(const Value& v) { return v; }
  static Result<Value> from(Value&& v) { return std::move(v); }
};

template <>
struct ValueTraits<bool> {
  static Value to(bool b) { return Value(b); }
  static Result<bool> from(const Value& v) {
    if (!v.isBool()) return detail::conversionError("bool", v);
    return v.asBool();
  }
};

template <typename I>
struct ValueTraits<I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>>> {
  static Value to(I i) { return Value(i); }
  static Result<I> from(const Value& v) {
    if (v.type() == Value::Type::kInt) {
      const int64_t x = v.asInt();
      if constexpr (std::is_signed_v<I>) {
        if (x < std::numeric_limits<I>::min() || x > std::numeric_limits<I>::max()) {
          return detail::conversionRangeError("integer", v);
        }
      } else {
        if (x < 0 || static_cast<uint64_t>(x) > std::numeric_limits<I>::max()) {
          return detail::conversionRangeError("unsigned integer", v);
        }
      }
      return static_cast<I>(x);
    }
    if (v.type() == Value::Type::kUInt) {
      if (v.asUInt() > static_cast<uint64_t>(std::numeric_limits<I>::max())) {
        return detail::conversionRangeError("integer", v);
      }
      return static_cast<I>(v.asUInt());
    }
    return detail::conversionError("integer", v);
  }
};

template <typename F>
struct ValueTraits<F, std::enable_if_t<std::is_floating_point_v<F>>> {
  static Value to(F f) { return Value(static_cast<double>(f)); }
  static Result<F> from(const Value& v) {
    if (v.isDouble()) return static_cast<F>(v.asDouble());
    if (v.type() == Value::Type::kInt) return static_cast<F>(v.asInt());
    if (v.type() == Value::Type::kUInt) return static_cast<F>(v.asUInt());
    return detail::conversionError("number", v);
  }
};

template <>
struct ValueTraits<std::string> {
  static Value to(std::string s) { return Value(std::move(s)); }
  static Result<std::string> from(const Value& v) {
    if (!v.isString()) return detail::conversionError("string", v);
    return v.asString();
  }
  static Result<std::string> from(Value&& v) {
    if (!v.isString()) return detail::conversionError("string", v);
    return std::move(v.asString());
  }
};

// String literals convert to Values (arguments); nothing converts back to a borrowed pointer.
template <>
struct ValueTraits<const char*> {
  static Value to(const char* s) { return Value(s); }
};

template <>
struct ValueTraits<Binary> {
  static Value to(Binary b) { return Value(std::move(b)); }
  static Result<Binary> from(const Value& v) {
    if (!v.isBinary()) return detail::conversionError("binary", v);
    return v.asBinary();
  }
  static Result<Binary> from(Value&& v) {
    if (!v.isBinary()) return detail::conversionError("binary", v);
    return std::move(v.asBinary());
  }
};

template <typename T>
struct ValueTraits<std::optional<T>> {
  static Value to(std::optional<T> o) { return o ? ValueTraits<T>::to(std::move(*o)) : Value(); }
  static Result<std::optional<T>> from(const Value& v) {
    if (v.isNil()) return std::optional<T>();
    auto r = ValueTraits<T>::from(v);
    if (!r) return r.status();
    return std::optional<T>(std::move(r).value());
  }
};

template <typename T>
struct ValueTraits<std::vector<T>> {
  static Value to(std::vector<T> items) {
    Array a;
    a.reserve(items.size());
    for (auto& item : items) a.push_back(ValueTraits<T>::to(std::move(item)));
    return a;
  }
  static Result<std::vector<T>> from(const Value& v) {
    if (!v.isArray()) return detail::conversionError("array", v);
    std::vector<T> out;
    out.reserve(v.asArray().size());
    for (size_t i = 0; i < v.asArray().size(); ++i) {
      auto r = ValueTraits<T>::from(v.asArray()[i]);
      if (!r) {
        return Status(r.status().code(),
                      "element " + std::to_string(i) + ": " + r.status().message());
      }
      out.push_back(std::move(r).value());
    }
    return out;
  }
};

template <typename T>
struct ValueTraits<std::map<std::string, T>> {
  static Value to(std::map<std::string, T> m) {
    Map out;
    out.reserve(m.size());
    for (auto& [k, v] : m) out.emplace_back(Value(k), ValueTraits<T>::to(std::move(v)));
    return out;
  }
  static Result<std::map<std::string, T>> from(const Value& v) {
    if (!v.isMap()) return detail::conversionError("map", v);
    std::map<std::string, T> out;
    for (const auto& [k, item] : v.asMap()) {
      if (!k.isString()) return detail::conversionError("string key", k);
      auto r = ValueTraits<T>::from(item);
      if (!r) return Status(r.status().code(), "key '" + k.asString() + "': " + r.status().message());
      out.emplace(k.asString(), std::move(r).value());
    }
    return out;
  }
};

// Converts a C++ value to a Value through ValueTraits.
template <typename T>
Value toValue(T&& t) {
  return ValueTraits<std::decay_t<T>>::to(std::forward<T>(t));
}

// Converts a Value to T through ValueTraits; kBadArguments on a mismatch.
template <typename T>
Result<T> fromValue(const Value& v) {
  return ValueTraits<T>::from(v);
}
// The same from a Value the caller gives up: moved from where ValueTraits<T> can, else copied.
template <typename T>
Result<T> fromValue(Value&& v) {
  return ValueTraits<T>::from(std::move(v));
}

}  // namespace switchboard
