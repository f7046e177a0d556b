// The MessagePack codec for Values over msgpack-c: a packer writing straight into std::string,
// and a bounded unpack whose every failure becomes a kProtocolError Status.
#include "messaging/detail/codec.h"

#include <algorithm>
#include <bit>
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

// Lets str and bin objects point into the caller's bytes instead of being copied into the
// zone: they are copied once, into the Value, while the bytes are still alive.
bool referenceAll(msgpack::type::object_type /*type*/, size_t /*size*/, void* /*user_data*/) {
  return true;
}

// Converts an unpacked object into `out`; recursion is bounded by the depth limit the unpack
// enforced. Containers are sized first and filled in place, so no Value is moved around.
Status toValue(const msgpack::object& object, Value& out) {
  switch (object.type) {
    case msgpack::type::NIL:
      out = nullptr;
      return Status::ok();
    case msgpack::type::BOOLEAN:
      out = object.via.boolean;
      return Status::ok();
    case msgpack::type::POSITIVE_INTEGER:
      out = object.via.u64;
      return Status::ok();
    case msgpack::type::NEGATIVE_INTEGER:
      out = object.via.i64;
      return Status::ok();
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      out = object.via.f64;
      return Status::ok();
    case msgpack::type::STR:
      out = std::string(object.via.str.ptr, object.via.str.size);
      return Status::ok();
    case msgpack::type::BIN:
      out = Binary{std::string(object.via.bin.ptr, object.via.bin.size)};
      return Status::ok();
    case msgpack::type::ARRAY: {
      out = Array(object.via.array.size);
      Array& array = out.asArray();
      for (uint32_t i = 0; i < object.via.array.size; ++i) {
        if (Status s = toValue(object.via.array.ptr[i], array[i]); !s) return s;
      }
      return Status::ok();
    }
    case msgpack::type::MAP: {
      out = Map(object.via.map.size);
      Map& map = out.asMap();
      for (uint32_t i = 0; i < object.via.map.size; ++i) {
        if (Status s = toValue(object.via.map.ptr[i].key, map[i].first); !s) return s;
        if (Status s = toValue(object.via.map.ptr[i].val, map[i].second); !s) return s;
      }
      return Status::ok();
    }
    case msgpack::type::EXT:
      return protocolError("MessagePack ext type " + std::to_string(object.via.ext.type()) +
                           " is not supported");
  }
  return protocolError("unknown MessagePack object type " +
                       std::to_string(static_cast<int>(object.type)));
}

}  // namespace

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

Result<Value> decodeValue(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.size() > limits.maxMessageBytes) {
    return protocolError("message of " + std::to_string(bytes.size()) +
                         " bytes exceeds the limit of " + std::to_string(limits.maxMessageBytes) +
                         " bytes");
  }
  if (bytes.empty()) return protocolError("empty message");
  // msgpack-c allocates an array's or map's elements as soon as it reads the header. Each
  // element takes at least one byte (a pair two), so a header declaring more than the message
  // can hold is malformed: capping the limits by the size rejects it before that allocation.
  const size_t maxArray = std::min(limits.maxArray, bytes.size());
  const size_t maxMap = std::min(limits.maxMap, bytes.size() / 2);
  const size_t maxDepth = std::min(limits.maxDepth, kMaxDecodeDepth);
  const msgpack::unpack_limit unpackLimit(maxArray, maxMap, limits.maxString, limits.maxBinary,
                                          limits.maxExt, maxDepth);
  size_t offset = 0;
  // The unpacked objects live in a zone of this thread, kept between messages (a fresh zone
  // would allocate a chunk per message) and cleared, down to its first chunk, after each.
  thread_local msgpack::zone zone;
  struct ClearZone {
    ~ClearZone() { zone.clear(); }
  } clearZone;
  try {
    const msgpack::object object = msgpack::unpack(zone, bytes.data(), bytes.size(), offset,
                                                   referenceAll, nullptr, unpackLimit);
    if (offset != bytes.size()) {
      return protocolError(std::to_string(bytes.size() - offset) +
                           " trailing bytes after the MessagePack object");
    }
    Value value;
    if (Status s = toValue(object, value); !s) return s;
    return value;
  } catch (const msgpack::insufficient_bytes&) {
    return protocolError("truncated MessagePack data");
  } catch (const msgpack::parse_error&) {
    return protocolError("malformed MessagePack data");
  } catch (const msgpack::array_size_overflow&) {
    return protocolError("MessagePack array longer than the limit of " + std::to_string(maxArray) +
                         " elements (or than the message)");
  } catch (const msgpack::map_size_overflow&) {
    return protocolError("MessagePack map larger than the limit of " + std::to_string(maxMap) +
                         " pairs (or than the message)");
  } catch (const msgpack::str_size_overflow&) {
    return protocolError("MessagePack string longer than the limit of " +
                         std::to_string(limits.maxString) + " bytes");
  } catch (const msgpack::bin_size_overflow&) {
    return protocolError("MessagePack binary longer than the limit of " +
                         std::to_string(limits.maxBinary) + " bytes");
  } catch (const msgpack::ext_size_overflow&) {
    return protocolError("MessagePack ext longer than the limit of " +
                         std::to_string(limits.maxExt) + " bytes");
  } catch (const msgpack::depth_size_overflow&) {
    return protocolError("MessagePack nesting deeper than the limit of " +
                         std::to_string(maxDepth));
  } catch (const msgpack::size_overflow& e) {
    return protocolError(std::string("MessagePack size limit exceeded: ") + e.what());
  } catch (const msgpack::unpack_error& e) {
    return protocolError(std::string("malformed MessagePack data: ") + e.what());
  } catch (const msgpack::type_error&) {
    return protocolError("MessagePack type error while decoding");
  } catch (const std::bad_alloc&) {
    return protocolError("out of memory while decoding a message of " +
                         std::to_string(bytes.size()) + " bytes");
  } catch (const std::exception& e) {
    return protocolError(std::string("MessagePack decoding failed: ") + e.what());
  }
}

}  // namespace switchboard::detail
