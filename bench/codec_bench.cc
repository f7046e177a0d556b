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

RequestMessage request(size_t payload) {
  return RequestMessage{42, "echo", {std::string(payload, 'x')}, {}};
}

void BM_EncodeRequest(benchmark::State& state) {
  const RequestMessage r = request(static_cast<size_t>(state.range(0)));
  std::string out;
  for (auto _ : state) {
    out.clear();
    encodeMessage(r, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_EncodeRequest)->Arg(32)->Arg(4096);

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
  const ResponseMessage r{42, Status::ok(), Value(std::string(static_cast<size_t>(state.range(0)), 'x'))};
  std::string out;
  for (auto _ : state) {
    out.clear();
    encodeMessage(r, out);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_EncodeReply)->Arg(32)->Arg(4096);

void BM_DecodeReply(benchmark::State& state) {
  const std::string bytes = encodeMessage(
      ResponseMessage{42, Status::ok(), Value(std::string(static_cast<size_t>(state.range(0)), 'x'))});
  for (auto _ : state) {
    auto decoded = decodeMessage(bytes);
    benchmark::DoNotOptimize(decoded);
  }
}
BENCHMARK(BM_DecodeReply)->Arg(32)->Arg(4096);

}  // namespace
}  // namespace switchboard

BENCHMARK_MAIN();
