// Fuzz target: the client network's handling of what servers send back, with servers played by
// FakeServers and a clock that moves only when the input says (ManualTimerQueue).
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "messaging/network.h"
#include "messaging/rpc_client.h"
#include "support/fake_servers.h"
#include "support/manual_timer_queue.h"
#include "targets.h"

namespace switchboard::fuzz {
namespace {

using namespace std::chrono_literals;

const std::string kServers[] = {"tcp://a:1", "tcp://b:1"};

// The outcomes each call got, by call index. Single-threaded: the fake servers answer and the
// manual clock runs timers on the fuzzing thread.
struct Outcomes {
  std::vector<int> counts;
  RpcClient::Callback next() {
    const size_t index = counts.size();
    counts.push_back(0);
    return [this, index](Result<Value>) { ++counts[index]; };
  }
};

}  // namespace

// Records: [control, length high, length low, length bytes]; a short tail is cut to what is
// there. control & 7: 0-2 the bytes are a reply from server A, 3-4 from server B; 5 advances
// the clock by (control >> 3) * 100 ms; 6 a link event (bit 3 the server, control >> 4 the
// kind: up, down, refused); 7 answers the server's handshakes (bit 3 the server) when bit 4 is
// clear, else starts another call (bit 5: idempotent).
void fuzzNetworkReplies(const uint8_t* data, size_t size) {
  testing::ManualTimerQueue timers;
  testing::FakeServers servers;
  Outcomes outcomes;
  {
    Network::Options options;
    options.servers = {kServers[0], kServers[1]};
    options.connectTimeout = 5s;
    options.pingInterval = 2s;
    options.pingTimeout = 2s;
    options.backoffInitial = 1s;
    options.backoffMax = 4s;
    options.backoffJitter = 0;
    options.seed = 1;
    options.retiredIdsPerConnection = 4;
    options.timers = &timers;
    options.log = [](LogLevel, std::string_view, std::string_view) {};
    Result<Network> network = Network::create(servers, std::move(options));
    FUZZ_CHECK(network.isOk(), network.status().toString());
    servers.answerHealth(kServers[0]);  // A is main; B stays connecting unless the input answers

    RpcClient::Options clientOptions;
    clientOptions.timeout = 10s;
    clientOptions.log = [](LogLevel, std::string_view, std::string_view) {};
    Result<RpcClient> made = RpcClient::create(*network, Target{.topic = "t"}, clientOptions);
    FUZZ_CHECK(made.isOk(), made.status().toString());
    const RpcClient& client = *made;
    client.callAsync("plain", Array{1}, outcomes.next());
    client.prepare({.idempotent = true}).callAsync("idempotent", Array{"x"}, outcomes.next());
    client.prepare({.callMonitorTimeout = 3s}).callAsync("monitored", Array{}, outcomes.next());

    size_t at = 0;
    while (at < size) {
      const uint8_t control = data[at++];
      size_t length = 0;
      if (at < size) length = size_t{data[at++]} << 8;
      if (at < size) length |= data[at++];
      if (length > size - at) length = size - at;
      std::string bytes(reinterpret_cast<const char*>(data) + at, length);
      at += length;
      const std::string& server = kServers[(control >> 3) & 1];
      switch (control & 7) {
        case 0:
        case 1:
        case 2:
          servers.replyBytes(kServers[0], std::move(bytes));
          break;
        case 3:
        case 4:
          servers.replyBytes(kServers[1], std::move(bytes));
          break;
        case 5:
          timers.advance((control >> 3) * 100ms);
          break;
        case 6: {
          const LinkEvent kinds[] = {LinkEvent::kUp, LinkEvent::kDown, LinkEvent::kRefused};
          servers.link(server, kinds[(control >> 4) % 3]);
          break;
        }
        case 7:
          if ((control & 0x10) == 0) {
            servers.answerHealth(server);
          } else {
            client.prepare({.idempotent = (control & 0x20) != 0})
                .callAsync("more", Array{static_cast<int>(at)}, outcomes.next());
          }
          break;
      }
    }

    network->stop();
    FUZZ_CHECK(servers.liveChannels() == 0, "a channel outlived stop()");
    FUZZ_CHECK(timers.scheduled() == 0, "a timer outlived stop()");
    for (size_t i = 0; i < outcomes.counts.size(); ++i) {
      FUZZ_CHECK(outcomes.counts[i] == 1, "call " + std::to_string(i) + " had " +
                                              std::to_string(outcomes.counts[i]) + " outcomes");
    }
    // After stop: a call fails at once, a late reply changes nothing.
    client.callAsync("after", Array{}, outcomes.next());
    FUZZ_CHECK(outcomes.counts.back() == 1, "a call after stop() got no outcome at once");
    servers.replyBytes(kServers[0], std::string("\x94\x01\x03\xc0\xc0", 5));  // [1, 3, nil, nil]
  }
  for (size_t i = 0; i < outcomes.counts.size(); ++i) {
    FUZZ_CHECK(outcomes.counts[i] == 1, "an outcome after the last handle was dropped");
  }
}

}  // namespace switchboard::fuzz
