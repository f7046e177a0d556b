#include "transports/detail/msgpack_stream.h"

namespace switchboard::detail {
namespace {

// The big-endian unsigned integer of `n` bytes at `p`.
uint64_t bigEndian(const char* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace

FrameScanner::Step FrameScanner::next(std::string& message, std::string& why) {
  for (;;) {
    const size_t avail = buffer_.size() - pos_;
    if (avail == 0) return needMore();
    const char* p = buffer_.data() + pos_;
    const auto b = static_cast<uint8_t>(p[0]);
    size_t header = 1;       // bytes before the payload
    size_t lengthBytes = 0;  // of a length or count field after the type byte
    uint64_t payload = 0;
    enum { kScalar, kStr, kBin, kExt, kArray, kMap } kind = kScalar;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
      // fixint, nil, bool
    } else if ((b & 0xf0) == 0x80 || (b & 0xf0) == 0x90) {
      kind = (b & 0xf0) == 0x80 ? kMap : kArray;
      payload = b & 0x0f;  // the count, for a container
    } else if ((b & 0xe0) == 0xa0) {
      kind = kStr;
      payload = b & 0x1f;
    } else if (b >= 0xc4 && b <= 0xc6) {
      kind = kBin, lengthBytes = size_t{1} << (b - 0xc4);
    } else if (b >= 0xc7 && b <= 0xc9) {
      kind = kExt, lengthBytes = size_t{1} << (b - 0xc7);  // then the type byte
    } else if (b == 0xca || b == 0xcb) {
      payload = b == 0xca ? 4 : 8;
    } else if (b >= 0xcc && b <= 0xd3) {
      payload = size_t{1} << ((b - 0xcc) & 3);
    } else if (b >= 0xd4 && b <= 0xd8) {
      kind = kExt, header = 2, payload = size_t{1} << (b - 0xd4);
    } else if (b >= 0xd9 && b <= 0xdb) {
      kind = kStr, lengthBytes = size_t{1} << (b - 0xd9);
    } else if (b == 0xdc || b == 0xdd) {
      kind = kArray, lengthBytes = b == 0xdc ? 2 : 4;
    } else if (b == 0xde || b == 0xdf) {
      kind = kMap, lengthBytes = b == 0xde ? 2 : 4;
    } else {
      return bad(why, "byte 0xc1 is not MessagePack");
    }
    if (lengthBytes > 0) {
      header = 1 + lengthBytes + (kind == kExt ? 1 : 0);
      if (avail < header) return needMore();
      payload = bigEndian(p + 1, lengthBytes);
    }
    // For a container `payload` is its count; it has no bytes of its own.
    uint64_t count = 0;
    switch (kind) {
      case kArray:
        if (payload > limits_.maxArray) return bad(why, "array over maxArray elements");
        count = payload, payload = 0;
        break;
      case kMap:
        if (payload > limits_.maxMap) return bad(why, "map over maxMap pairs");
        count = 2 * payload, payload = 0;
        break;
      case kStr:
        if (payload > limits_.maxString) return bad(why, "string over maxString bytes");
        break;
      case kBin:
        if (payload > limits_.maxBinary) return bad(why, "binary over maxBinary bytes");
        break;
      case kExt:
        if (payload + 1 > limits_.maxExt) return bad(why, "ext over maxExt bytes");
        break;
      case kScalar:
        break;
    }
    if (pos_ - start_ + header + payload > limits_.maxMessageBytes) {
      return bad(why, "message over maxMessageBytes");
    }
    if (avail < header + payload) return needMore();
    pos_ += header + payload;
    if (kind == kArray || kind == kMap) {
      if (open_.size() + 1 > limits_.maxDepth) return bad(why, "nesting over maxDepth");
      if (count > 0) {
        open_.push_back(count);
        continue;
      }
    }
    // One item done: it completes the containers whose last item it was.
    bool complete = true;
    while (!open_.empty()) {
      if (--open_.back() != 0) {
        complete = false;
        break;
      }
      open_.pop_back();
    }
    if (!complete) continue;
    message.assign(buffer_, start_, pos_ - start_);
    start_ = pos_;
    return Step::kMessage;
  }
}

FrameScanner::Step FrameScanner::needMore() {
  buffer_.erase(0, start_);  // what is left is part of one message, at most maxMessageBytes
  pos_ -= start_;
  start_ = 0;
  return Step::kNeedMore;
}

FrameScanner::Step FrameScanner::bad(std::string& why, std::string_view what) {
  why = what;
  return Step::kBad;
}

bool isServerBound(std::string_view m) {
  auto b = static_cast<uint8_t>(m[0]);
  uint64_t size = 0;
  size_t i = 1;
  if ((b & 0xf0) == 0x90) {
    size = b & 0x0f;
  } else if ((b == 0xdc || b == 0xdd) && m.size() > (b == 0xdc ? 3u : 5u)) {
    i = b == 0xdc ? 3 : 5;
    size = bigEndian(m.data() + 1, i - 1);
  } else {
    return false;
  }
  if (size == 0 || i >= m.size()) return false;
  b = static_cast<uint8_t>(m[i]);
  uint64_t kind = 0;
  if (b <= 0x7f) {
    kind = b;
  } else if (b >= 0xcc && b <= 0xcf && m.size() > i + (size_t{1} << (b - 0xcc))) {
    kind = bigEndian(m.data() + i + 1, size_t{1} << (b - 0xcc));
  } else {
    return false;
  }
  return (kind == 0 && size >= 2) || (kind == 2 && (size == 3 || size == 4)) ||
         (kind == 4 && size == 2);
}

}  // namespace switchboard::detail
