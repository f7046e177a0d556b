// Fuzz target: the msgpack+tcp stream framing (detail::FrameScanner) against msgpack-c itself.
#include <string>
#include <string_view>
#include <vector>

#include "messaging/detail/codec.h"
#include "targets.h"
#include "transports/detail/msgpack_stream.h"

namespace switchboard::fuzz {
namespace {

constexpr detail::FrameLimits kLimits{.maxMessageBytes = 4096,
                                      .maxArray = 64,
                                      .maxMap = 64,
                                      .maxString = 1024,
                                      .maxBinary = 1024,
                                      .maxExt = 1024,
                                      .maxDepth = 8};

struct Scan {
  std::vector<std::string> messages;
  bool bad = false;
};

// The messages of `stream` fed in pieces of `piece` bytes (0: all at once), up to the first
// kBad (bad is then true) or the end of the bytes.
Scan scan(std::string_view stream, size_t piece) {
  detail::FrameScanner scanner(kLimits);
  Scan out;
  std::string message, why;
  for (size_t at = 0; at < stream.size() && !out.bad;) {
    const size_t n = piece == 0 ? stream.size() : std::min(piece, stream.size() - at);
    scanner.append(stream.data() + at, n);
    at += n;
    for (;;) {
      const auto step = scanner.next(message, why);
      if (step == detail::FrameScanner::Step::kNeedMore) break;
      if (step == detail::FrameScanner::Step::kBad) {
        FUZZ_CHECK(!why.empty(), "a bad stream without a reason");
        out.bad = true;
        break;
      }
      out.messages.push_back(message);
    }
  }
  return out;
}

}  // namespace

void fuzzMsgpackStream(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const size_t piece = data[0] % 17;  // 0: the whole stream at once
  const std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Scan whole = scan(stream, 0);
  const Scan pieces = scan(stream, piece);
  FUZZ_CHECK(whole.messages == pieces.messages && whole.bad == pieces.bad,
             "the messages depend on how the bytes arrived");
  // The messages are the stream's first bytes, in order, one MessagePack object each, as the
  // codec (msgpack-c) sees them under the same limits (it refuses ext types, which the framing
  // lets through for the server to judge).
  detail::DecodeLimits limits;
  limits.maxMessageBytes = kLimits.maxMessageBytes;
  limits.maxArray = kLimits.maxArray;
  limits.maxMap = kLimits.maxMap;
  limits.maxString = kLimits.maxString;
  limits.maxBinary = kLimits.maxBinary;
  limits.maxExt = kLimits.maxExt;
  limits.maxDepth = kLimits.maxDepth;
  size_t at = 0;
  for (const std::string& message : whole.messages) {
    FUZZ_CHECK(!message.empty() && stream.substr(at, message.size()) == message,
               "a message is not the next bytes of the stream");
    at += message.size();
    const Result<Value> decoded = detail::decodeValue(message, limits);
    FUZZ_CHECK(decoded.isOk() || decoded.status().message().find("ext") != std::string::npos,
               "msgpack-c refuses a framed message: " + decoded.status().toString());
  }
  // Where the scanner stopped for more bytes, the rest is no whole object to msgpack-c either
  // (a prefix of one, or more than the limits allow).
  if (!whole.bad && at < stream.size()) {
    const Result<Value> rest = detail::decodeValue(stream.substr(at), limits);
    FUZZ_CHECK(!rest.isOk(), "the scanner waits for more bytes after a whole object");
  }
  // isServerBound only looks at whole messages; it must not read past them.
  for (const std::string& message : whole.messages) (void)detail::isServerBound(message);
}

}  // namespace switchboard::fuzz
