// The frame layout of a message a ZeroMQ ROUTER socket receives (the peer's identity, a REQ
// peer's empty delimiter when present, then the body), checked as a pure function of the frames.
#pragma once

#include <charconv>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace switchboard::detail {

// A ROUTER message whose layout is valid. Borrows from the frames it was split from.
struct RouterFrames {
  // Every frame before the body, sent back first in the reply: the identity, then the
  // delimiter when the peer sent one (and, with ZmqTransport::Options::maxFrames above 3, any
  // further frames, unchecked).
  std::span<const std::string_view> routing;
  std::string_view body;  // always the last frame; may be empty
};

// Splits the frames of one ROUTER message, in the order received, into routing frames and the
// body. kProtocolError, naming the fault, when the message has
//  - more than `maxFrames` frames (so every message when maxFrames < 2),
//  - fewer than 2 frames (no body after the identity), or
//  - exactly 3 frames whose middle one is not empty (not a REQ delimiter).
// A caller need not keep the frames past maxFrames + 1, nor the content of frame maxFrames + 1:
// a message that has one is rejected for its count alone (pass an empty view in its place).
// Pure and thread-safe; the result borrows from `frames`.
inline Result<RouterFrames> splitRouterFrames(std::span<const std::string_view> frames,
                                              size_t maxFrames) {
  if (frames.size() > maxFrames) {
    return Status(StatusCode::kProtocolError, "more than " + std::to_string(maxFrames) + " frames");
  }
  if (frames.size() < 2) {
    return Status(StatusCode::kProtocolError,
                  std::to_string(frames.size()) + " frame(s): no body after the identity");
  }
  if (frames.size() == 3 && !frames[1].empty()) {
    return Status(StatusCode::kProtocolError,
                  "3 frames whose middle one is not an empty delimiter");
  }
  return RouterFrames{frames.first(frames.size() - 1), frames.back()};
}

// `bytes` as lower-case hex (identities in logs and peer names).
inline std::string hexOf(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

// Parses all of `text` as an unsigned decimal number (a delivery id, a window); false for
// anything else (empty, a sign, other characters, overflow).
template <typename T>
bool parseDecimal(std::string_view text, T& value) {
  if (text.empty()) return false;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return error == std::errc() && end == text.data() + text.size();
}

}  // namespace switchboard::detail
