// The stream framing of MessagePack-RPC over TCP: a byte stream split into MessagePack objects
// without decoding them (FrameScanner), and which objects a server may be sent. Used by
// MsgpackRpcTcpTransport; separate so that the fuzz targets reach it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::detail {

// What one message may hold (MsgpackRpcTcpTransport::Options has the same fields).
struct FrameLimits {
  size_t maxMessageBytes = 0;
  size_t maxArray = 0;   // elements of one array
  size_t maxMap = 0;     // pairs of one map
  size_t maxString = 0;  // bytes of one str
  size_t maxBinary = 0;  // bytes of one bin
  size_t maxExt = 0;     // bytes of one ext (its type byte included)
  size_t maxDepth = 0;   // nesting of arrays and maps
};

// Splits a byte stream into MessagePack objects. Resumable: bytes may come in any pieces; each
// header is looked at once. Checks the limits of Options as it goes, so an over-size length or
// count fails as soon as its header is read, before its bytes arrive. Never decodes.
class FrameScanner {
 public:
  enum class Step { kNeedMore, kMessage, kBad };

  explicit FrameScanner(FrameLimits limits) : limits_(limits) {}

  void append(const char* data, size_t size) { buffer_.append(data, size); }
  void reset() {
    buffer_.clear();
    start_ = pos_ = 0;
    open_.clear();
  }

  // kMessage with the next complete object in `message`; kNeedMore when the bytes so far end
  // inside one; kBad, with `why`, when they are not MessagePack or break a limit (the stream
  // cannot be resynchronised: drop the connection).
  Step next(std::string& message, std::string& why);

 private:
  Step needMore();
  static Step bad(std::string& why, std::string_view what);

  const FrameLimits limits_;
  std::string buffer_;
  size_t start_ = 0;            // where the message being scanned starts in buffer_
  size_t pos_ = 0;              // the next header to look at
  std::vector<uint64_t> open_;  // items still to come in each open container, outermost first
};

// What a server may be sent, by the head of a complete message: a request [0, msgid, ...] (its
// shape past the msgid is the server's to judge: it answers ProtocolError), a notification
// [2, method, params(, ext)] or a cancel [4, msgid]. Anything else cannot be answered.
bool isServerBound(std::string_view message);

}  // namespace switchboard::detail
