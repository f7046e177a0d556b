// The MessagePack codec for Values: encoding into a byte string and bounded, hostile-input-safe
// decoding. msgpack-c is an implementation detail of codec.cc; no header exposes it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"
#include "messaging/value.h"

namespace switchboard::detail {

// Bounds on what decodeValue accepts from a peer. Every count is checked before anything of
// that size is allocated, so a small hostile message cannot make the decoder allocate much.
struct DecodeLimits {
  size_t maxMessageBytes = size_t{16} << 20;  // the whole encoded message, checked first
  size_t maxArray = size_t{1} << 20;          // elements of one array
  size_t maxMap = size_t{1} << 20;            // key/value pairs of one map
  size_t maxString = size_t{8} << 20;         // bytes of one string
  size_t maxBinary = size_t{16} << 20;        // bytes of one binary
  size_t maxExt = size_t{1} << 20;            // bytes of one ext incl. its type (all rejected)
  // Nesting of arrays and maps: a scalar has depth 0, [1] has depth 1, [[1]] depth 2.
  // Values above kMaxDecodeDepth act as kMaxDecodeDepth.
  size_t maxDepth = 64;
  size_t maxMethodName = 256;  // bytes of a method name in a wire envelope (see wire.h)
};

// The hard ceiling on DecodeLimits::maxDepth. Values are converted, encoded, rendered and
// destroyed recursively, so the nesting a peer may send must stay well within a thread's stack.
inline constexpr size_t kMaxDecodeDepth = 512;

// Appends the MessagePack encoding of `value` to `out`. Integers use the smallest encoding,
// doubles are always float64, strings str and binaries bin. Recursive in the nesting of
// `value`. Precondition: every string, binary, array and map has fewer than 2^32 elements.
void encodeValue(const Value& value, std::string& out);
// The MessagePack encoding of `value`; see above.
std::string encodeValue(const Value& value);

// Low-level appenders for writers of envelopes (wire.cc) that must not build a Value first.
// Each appends one MessagePack item to `out`; a header must be followed by its elements.
void encodeArrayHeader(size_t size, std::string& out);
void encodeMapHeader(size_t size, std::string& out);
void encodeNil(std::string& out);
void encodeUInt(uint64_t value, std::string& out);
void encodeString(std::string_view value, std::string& out);
// The encoding of Value(array), without copying `array` into a Value.
void encodeArray(const Array& array, std::string& out);

// Decodes exactly one MessagePack object that spans all of `bytes`. Positive integers become
// Value(uint64_t) (so kInt when they fit in int64), negative ones int64; float32 and float64
// become double; str a string (not checked for UTF-8); bin a Binary.
// Fails with kProtocolError, never by throwing or crashing, when: bytes.size() exceeds
// limits.maxMessageBytes (checked before any parsing); the data is malformed, truncated or
// empty; any limit of `limits` is exceeded (an array header may also not declare more elements
// than the message has bytes, nor a map more pairs than half of them); bytes follow the object;
// or the data holds an ext type, which this protocol does not use.
Result<Value> decodeValue(std::string_view bytes, const DecodeLimits& limits = DecodeLimits{});

// A decoded message's top level. An array of at most kInlineItems elements (every wire envelope)
// keeps them here, with no array allocated; anything else is whole, as decodeValue builds it.
class Envelope {
 public:
  static constexpr size_t kInlineItems = 5;
  // The top-level array's elements, inline or in whole; empty when the top level is no array.
  std::span<Value> items() {
    if (inline_) return {inlineItems_.data(), size_};
    if (whole_.isArray()) return whole_.asArray();
    return {};
  }
  bool isArray() const { return inline_ || whole_.isArray(); }
  const Value& whole() const { return whole_; }  // meaningful when the items are not inline

 private:
  friend Status decodeEnvelope(std::string_view, const DecodeLimits&, Envelope&);
  friend class ValueBuilder;
  std::array<Value, kInlineItems> inlineItems_;
  size_t size_ = 0;
  bool inline_ = false;
  Value whole_;
};

// Decodes `bytes` as decodeValue does, with the same limits and errors, into `out` (fresh).
Status decodeEnvelope(std::string_view bytes, const DecodeLimits& limits, Envelope& out);

}  // namespace switchboard::detail
