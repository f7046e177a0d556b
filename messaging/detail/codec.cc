// The MessagePack codec for Values over msgpack-c: a packer writing straight into std::string,
// and a bounded parse into a Value whose every failure becomes a kProtocolError Status.
#include "messaging/detail/codec.h"

#include <algorithm>
#include <bit>
#include <boost/container/small_vector.hpp>
#include <msgpack.hpp>
#include <new>
#include <utility>

namespace switchboard::detail {
namespace {

// The msgpack-c buffer concept over a caller's string: appends, never copies the result.
struct StringWriter {
  std::string& out;
  void write(const char* data, size_t size) { out.append(data, size); }
};

using Packer = msgpack::packer<StringWriter>;

// Always float64, big-endian. msgpack-c 4.1's pack_double writes integral doubles as integers,
// which would turn 2.0 into the integer 2 and -0.0 into 0 at the peer.
void appendFloat64(double d, std::string& out) {
  const auto bits = std::bit_cast<uint64_t>(d);
  out += static_cast<char>(0xcb);
  for (int shift = 56; shift >= 0; shift -= 8) out += static_cast<char>((bits >> shift) & 0xff);
}

// Writes `value` through `packer`, whose writer appends to `out`, so the two can be mixed.
void pack(Packer& packer, std::string& out, const Value& value);

void packArray(Packer& packer, std::string& out, const Array& array) {
  packer.pack_array(static_cast<uint32_t>(array.size()));
  for (const Value& item : array) pack(packer, out, item);
}

void pack(Packer& packer, std::string& out, const Value& value) {
  switch (value.type()) {
    case Value::Type::kNil:
      packer.pack_nil();
      return;
    case Value::Type::kBool:
      if (value.asBool()) {
        packer.pack_true();
      } else {
        packer.pack_false();
      }
      return;
    case Value::Type::kInt:
      packer.pack_int64(value.asInt());
      return;
    case Value::Type::kUInt:
      packer.pack_uint64(value.asUInt());
      return;
    case Value::Type::kDouble:
      appendFloat64(value.asDouble(), out);
      return;
    case Value::Type::kString: {
      const std::string& s = value.asString();
      packer.pack_str(static_cast<uint32_t>(s.size()));
      packer.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
      return;
    }
    case Value::Type::kBinary: {
      const std::string& b = value.asBinary().bytes;
      packer.pack_bin(static_cast<uint32_t>(b.size()));
      packer.pack_bin_body(b.data(), static_cast<uint32_t>(b.size()));
      return;
    }
    case Value::Type::kArray:
      packArray(packer, out, value.asArray());
      return;
    case Value::Type::kMap:
      packer.pack_map(static_cast<uint32_t>(value.asMap().size()));
      for (const auto& [key, item] : value.asMap()) {
        pack(packer, out, key);
        pack(packer, out, item);
      }
      return;
  }
}

Status protocolError(std::string message) {
  return Status(StatusCode::kProtocolError, std::move(message));
}

}  // namespace

// Builds a Value straight from msgpack-c's parse events (no msgpack::object tree, no zone),
// checking `limits` as each header arrives; the first violation stops the parse and is kept in
// error(). Containers are reserved at their declared size, so a slot pointer into one stays
// valid while it fills. Given an Envelope, a small top-level array fills its inline items.
class ValueBuilder {
 public:
  ValueBuilder(Value& root, const DecodeLimits& limits, size_t messageBytes,
               Envelope* envelope = nullptr)
      : slot_(&root),
        envelope_(envelope),
        limits_(limits),
        // Each element takes at least one byte (a pair two): a header declaring more than the
        // message can hold is malformed, rejected before anything of its size is reserved.
        maxArray_(std::min(limits.maxArray, messageBytes)),
        maxMap_(std::min(limits.maxMap, messageBytes / 2)),
        maxDepth_(std::min(limits.maxDepth, kMaxDecodeDepth)) {}

  const Status& error() const { return error_; }

  bool visit_nil() { return set(Value(nullptr)); }
  bool visit_boolean(bool v) { return set(Value(v)); }
  bool visit_positive_integer(uint64_t v) { return set(Value(v)); }
  bool visit_negative_integer(int64_t v) { return set(Value(v)); }
  bool visit_float32(float v) { return set(Value(static_cast<double>(v))); }
  bool visit_float64(double v) { return set(Value(v)); }
  bool visit_str(const char* data, uint32_t size) {
    if (size > limits_.maxString) {
      return fail("MessagePack string longer than the limit of " +
                  std::to_string(limits_.maxString) + " bytes");
    }
    return set(Value(std::string(data, size)));
  }
  bool visit_bin(const char* data, uint32_t size) {
    if (size > limits_.maxBinary) {
      return fail("MessagePack binary longer than the limit of " +
                  std::to_string(limits_.maxBinary) + " bytes");
    }
    return set(Value(Binary{std::string(data, size)}));
  }
  bool visit_ext(const char* data, uint32_t size) {
    if (size > limits_.maxExt) {
      return fail("MessagePack ext longer than the limit of " + std::to_string(limits_.maxExt) +
                  " bytes");
    }
    const int type = size > 0 ? static_cast<int8_t>(data[0]) : 0;
    return fail("MessagePack ext type " + std::to_string(type) + " is not supported");
  }

  bool start_array(uint32_t size) {
    if (envelope_ && open_.empty() && size <= Envelope::kInlineItems) {
      if (!checkOpen(size, maxArray_, "array longer", "elements")) return false;
      envelope_->inline_ = true;
      open_.push_back(nullptr);  // stands for the envelope's inline items
      return true;
    }
    return open<Array>(size, maxArray_, "array longer", "elements");
  }
  bool start_array_item() {
    Value* array = open_.back();
    slot_ = array ? &array->asArray().emplace_back()
                  : &envelope_->inlineItems_[envelope_->size_++];
    return true;
  }
  bool end_array_item() { return true; }
  bool end_array() { return close(); }

  bool start_map(uint32_t size) { return open<Map>(size, maxMap_, "map larger", "pairs"); }
  bool start_map_key() {
    slot_ = &open_.back()->asMap().emplace_back().first;
    return true;
  }
  bool end_map_key() { return true; }
  bool start_map_value() {
    slot_ = &open_.back()->asMap().back().second;
    return true;
  }
  bool end_map_value() { return true; }
  bool end_map() { return close(); }

  void parse_error(size_t /*parsedOffset*/, size_t /*errorOffset*/) {
    if (error_.isOk()) error_ = protocolError("malformed MessagePack data");
  }
  void insufficient_bytes(size_t /*parsedOffset*/, size_t /*errorOffset*/) {
    if (error_.isOk()) error_ = protocolError("truncated MessagePack data");
  }

 private:
  bool set(Value v) {
    *slot_ = std::move(v);
    return true;
  }
  // Puts an empty Container of capacity `size` (at most `max` `unit`s) in the slot and fills it
  // next: one more level of nesting (a scalar has depth 0, [1] depth 1).
  template <typename Container>
  bool open(uint32_t size, size_t max, std::string_view tooBig, std::string_view unit) {
    if (!checkOpen(size, max, tooBig, unit)) return false;
    Container container;
    container.reserve(size);
    *slot_ = Value(std::move(container));
    open_.push_back(slot_);
    return true;
  }
  // Whether a container of `size` may open here: at most `max` `unit`s, within the depth limit.
  bool checkOpen(uint32_t size, size_t max, std::string_view tooBig, std::string_view unit) {
    if (size > max) {
      return fail("MessagePack " + std::string(tooBig) + " than the limit of " +
                  std::to_string(max) + " " + std::string(unit) + " (or than the message)");
    }
    if (open_.size() + 1 > maxDepth_) {
      return fail("MessagePack nesting deeper than the limit of " + std::to_string(maxDepth_));
    }
    return true;
  }
  bool close() {
    open_.pop_back();
    return true;
  }
  bool fail(std::string why) {
    error_ = protocolError(std::move(why));
    return false;
  }

  Value* slot_;                // where the next item goes
  Envelope* const envelope_;   // null, or where a small top-level array's items go
  // the containers being filled, outermost first (inline up to the nesting of an envelope);
  // null stands for the envelope's inline items
  boost::container::small_vector<Value*, 8> open_;
  const DecodeLimits& limits_;
  const size_t maxArray_;
  const size_t maxMap_;
  const size_t maxDepth_;
  Status error_ = Status::ok();
};

void encodeValue(const Value& value, std::string& out) {
  StringWriter writer{out};
  Packer packer(writer);
  pack(packer, out, value);
}

std::string encodeValue(const Value& value) {
  std::string out;
  encodeValue(value, out);
  return out;
}

void encodeArrayHeader(size_t size, std::string& out) {
  StringWriter writer{out};
  Packer(writer).pack_array(static_cast<uint32_t>(size));
}

void encodeMapHeader(size_t size, std::string& out) {
  StringWriter writer{out};
  Packer(writer).pack_map(static_cast<uint32_t>(size));
}

void encodeNil(std::string& out) {
  StringWriter writer{out};
  Packer(writer).pack_nil();
}

void encodeUInt(uint64_t value, std::string& out) {
  StringWriter writer{out};
  Packer(writer).pack_uint64(value);
}

void encodeString(std::string_view value, std::string& out) {
  StringWriter writer{out};
  Packer packer(writer);
  packer.pack_str(static_cast<uint32_t>(value.size()));
  packer.pack_str_body(value.data(), static_cast<uint32_t>(value.size()));
}

void encodeArray(const Array& array, std::string& out) {
  StringWriter writer{out};
  Packer packer(writer);
  packArray(packer, out, array);
}

namespace {

// The one parse behind decodeValue and decodeEnvelope: into `root`, or a small top-level array
// into `envelope`'s inline items when one is given.
Status parseInto(std::string_view bytes, const DecodeLimits& limits, Value& root,
                 Envelope* envelope) {
  if (bytes.size() > limits.maxMessageBytes) {
    return protocolError("message of " + std::to_string(bytes.size()) +
                         " bytes exceeds the limit of " + std::to_string(limits.maxMessageBytes) +
                         " bytes");
  }
  if (bytes.empty()) return protocolError("empty message");
  ValueBuilder builder(root, limits, bytes.size(), envelope);
  size_t offset = 0;
  try {
    if (!msgpack::parse(bytes.data(), bytes.size(), offset, builder)) {
      return builder.error().isOk() ? protocolError("malformed MessagePack data") : builder.error();
    }
  } catch (const std::bad_alloc&) {
    return protocolError("out of memory while decoding a message of " +
                         std::to_string(bytes.size()) + " bytes");
  } catch (const std::exception& e) {
    return protocolError(std::string("MessagePack decoding failed: ") + e.what());
  }
  if (offset != bytes.size()) {
    return protocolError(std::to_string(bytes.size() - offset) +
                         " trailing bytes after the MessagePack object");
  }
  return Status::ok();
}

}  // namespace

Result<Value> decodeValue(std::string_view bytes, const DecodeLimits& limits) {
  Value value;
  if (Status parsed = parseInto(bytes, limits, value, nullptr); !parsed) return parsed;
  return value;
}

Status decodeEnvelope(std::string_view bytes, const DecodeLimits& limits, Envelope& out) {
  return parseInto(bytes, limits, out.whole_, &out);
}

}  // namespace switchboard::detail
