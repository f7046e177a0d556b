// Google Benchmark: the wire codec, encode and decode of a request and its reply, with 32 B and
// 4 KiB payloads. The per-message cost the framework adds before any socket is involved.
#include <benchmark/benchmark.h>

#include "messaging/detail/wire.h"

namespace switchboard {
namespace {

using detail::decodeMessage;
using detail::encodeMessage;
using detail::RequestMessage;
using detail::ResponseMessage;

// As RpcClient sends one: with the caller's remaining budget, so its extension map holds "dl"
// and "pv".
RequestMessage request(size_t payload) {
  RequestMessage message{42, "echo", {std::string(payload, 'x')}, {}};
  message.ext.budgetMs = 30000;
  return message;
}

ResponseMessage reply(size_t payload) {
  return ResponseMessage{42, Status::ok(), Value(std::string(payload, 'x'))};
}

// Into one string reused across iterations: the codec's own cost.
template <typename Message>
void encodeReusing(benchmark::State& state, const Message& message) {
  std::string out;
  for (auto _ : state) {
    out.clear();
    encodeMessage(message, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}

// Into a fresh string each time, as the client and server send: its allocation counts too.
template <typename Message>
void encodeFresh(benchmark::State& state, const Message& message) {
  for (auto _ : state) {
    std::string out;
    encodeMessage(message, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}

void BM_EncodeRequest(benchmark::State& state) {
  encodeReusing(state, request(static_cast<size_t>(state.range(0))));
}
BENCHMARK(BM_EncodeRequest)->Arg(32)->Arg(4096);

void BM_EncodeRequestFresh(benchmark::State& state) {
  encodeFresh(state, request(static_cast<size_t>(state.range(0))));
}
BENCHMARK(BM_EncodeRequestFresh)->Arg(32)->Arg(4096);

void BM_DecodeRequest(benchmark::State& state) {
  const std::string bytes = encodeMessage(request(static_cast<size_t>(state.range(0))));
  for (auto _ : state) {
    auto decoded = decodeMessage(bytes);
    benchmark::DoNotOptimize(decoded);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_DecodeRequest)->Arg(32)->Arg(4096);

void BM_EncodeReply(benchmark::State& state) {
  encodeReusing(state, reply(static_cast<size_t>(state.range(0))));
}
BENCHMARK(BM_EncodeReply)->Arg(32)->Arg(4096);

void BM_EncodeReplyFresh(benchmark::State& state) {
  encodeFresh(state, reply(static_cast<size_t>(state.range(0))));
}
BENCHMARK(BM_EncodeReplyFresh)->Arg(32)->Arg(4096);

void BM_DecodeReply(benchmark::State& state) {
  const std::string bytes = encodeMessage(reply(static_cast<size_t>(state.range(0))));
  for (auto _ : state) {
    auto decoded = decodeMessage(bytes);
    benchmark::DoNotOptimize(decoded);
  }
}
BENCHMARK(BM_DecodeReply)->Arg(32)->Arg(4096);

}  // namespace
}  // namespace switchboard

BENCHMARK_MAIN();
