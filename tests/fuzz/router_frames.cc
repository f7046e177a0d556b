// Fuzz target: the ZeroMQ server's frame layout check (detail::splitRouterFrames) on the input
// split into frames, and the body of an accepted layout through the envelope decoder.
#include <string>
#include <string_view>
#include <vector>

#include "messaging/detail/wire.h"
#include "targets.h"
#include "transports/detail/zmq_frames.h"

namespace switchboard::fuzz {

void fuzzRouterFrames(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const size_t maxFrames = data[0] % 6;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  // Each 0xff ends a frame; what follows the last one is the last frame (no 0xff: one frame).
  std::vector<std::string_view> frames;
  size_t start = 0;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (static_cast<unsigned char>(rest[i]) == 0xff) {
      frames.push_back(rest.substr(start, i - start));
      start = i + 1;
    }
  }
  frames.push_back(rest.substr(start));

  const Result<detail::RouterFrames> split = detail::splitRouterFrames(frames, maxFrames);
  const bool expectValid = frames.size() <= maxFrames && frames.size() >= 2 &&
                           !(frames.size() == 3 && !frames[1].empty());
  FUZZ_CHECK(split.isOk() == expectValid, "the layout rule of zmq_frames.h is not kept");
  if (!split) {
    FUZZ_CHECK(split.status().code() == StatusCode::kProtocolError, split.status().toString());
    // The transport keeps no frame past maxFrames + 1 and puts an empty one in its place.
    if (frames.size() > maxFrames + 1) {
      std::vector<std::string_view> kept(frames.begin(), frames.begin() + maxFrames);
      kept.emplace_back();
      FUZZ_CHECK(!detail::splitRouterFrames(kept, maxFrames), "truncated frames were accepted");
    }
    return;
  }
  const detail::RouterFrames& layout = *split;
  FUZZ_CHECK(layout.routing.size() == frames.size() - 1, "routing is not every frame but the body");
  FUZZ_CHECK(layout.routing.data() == frames.data(), "routing does not borrow the frames");
  FUZZ_CHECK(
      layout.body.data() == frames.back().data() && layout.body.size() == frames.back().size(),
      "the body is not the last frame");
  // What the server does next with the body; the reply would carry the routing frames back.
  const detail::DecodedMessage decoded = detail::decodeMessage(layout.body);
  if (!decoded) {
    FUZZ_CHECK(decoded.status().code() == StatusCode::kProtocolError, decoded.status().toString());
  }
}

}  // namespace switchboard::fuzz
