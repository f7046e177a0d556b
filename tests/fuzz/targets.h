// The fuzz targets: each takes arbitrary bytes and aborts (with a message on stderr) on a broken
// invariant; a libFuzzer executable (libfuzzer_main.cc) and the corpus replay gtest call them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace switchboard::fuzz {

// detail::decodeMessage on the bytes: a failure is a kProtocolError (with a msgid only for a
// request that has one); what decodes re-encodes to bytes that decode to the same message and
// encode again to the same bytes, and decodes the same under tighter limits or not at all.
void fuzzDecodeMessage(const uint8_t* data, size_t size);

// detail::splitRouterFrames on the input split into frames: byte 0 picks maxFrames (0..5), then
// each 0xff byte ends a frame. A valid layout's body goes through decodeMessage, as the
// server's would.
void fuzzRouterFrames(const uint8_t* data, size_t size);

// RpcDispatcher::dispatch over endpoints of varied typed signatures: byte 0 picks the method,
// byte 1 the namespace, version and access policy, the rest is decoded as the params (an
// array, or else one argument). The outcome is ok or a typed error, never a crash.
void fuzzDispatch(const uint8_t* data, size_t size);

// A Network over FakeServers and a ManualTimerQueue with calls in flight, driven by records of
// [control byte, 16-bit big-endian length, that many bytes]: replies from either server (the
// bytes), clock advances, link events, handshake answers and more calls. After stop() every
// call has had exactly one outcome and no channel or timer of the network remains.
void fuzzNetworkReplies(const uint8_t* data, size_t size);

// detail::FrameScanner (the msgpack+tcp stream framing) on the input after byte 0, which picks
// how it arrives (all at once, or in pieces of 1 to 16 bytes): the same messages either way,
// each the next bytes of the stream and one MessagePack object to msgpack-c under the same
// limits; bytes left waiting are no whole object.
void fuzzMsgpackStream(const uint8_t* data, size_t size);

// Reports a broken invariant on stderr and aborts; see FUZZ_CHECK.
[[noreturn]] inline void checkFailed(const char* file, int line, const char* condition,
                                     std::string_view message) {
  std::fprintf(stderr, "%s:%d: fuzz check failed: %s: %.*s\n", file, line, condition,
               static_cast<int>(message.size()), message.data());
  std::abort();
}

}  // namespace switchboard::fuzz

// FUZZ_CHECK(condition, message): aborts with file, line and `message` (anything a string_view
// can be made from) when `condition` is false. The same in the libFuzzer executables (a crash
// they report) and in the gtest replay (the test binary dies, naming the check).
#define FUZZ_CHECK(condition, message)                                             \
  do {                                                                             \
    if (!(condition)) {                                                            \
      ::switchboard::fuzz::checkFailed(__FILE__, __LINE__, #condition, (message)); \
    }                                                                              \
  } while (0)
