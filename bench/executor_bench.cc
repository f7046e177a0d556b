// Google Benchmark: executor hand-off latency, from a task becoming available to its run()
// starting, one task at a time, for each executor (what each hand-off costs on the hot path).
#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>

#include "executors/blocking_executor.h"
#include "executors/event_loop_executor.h"
#include "executors/thread_pool_executor.h"
#include "tests/support/manual_task_source.h"

namespace switchboard {
namespace {

template <typename MakeExecutor>
void handOff(benchmark::State& state, MakeExecutor make, bool blocking) {
  testing::ManualTaskSource source;
  auto executor = make();
  if (!executor->start(source)) {
    state.SkipWithError("start failed");
    return;
  }
  std::thread caller;
  if (blocking) caller = std::thread([&] { (void)executor->execute(); });
  std::atomic<uint64_t> done{0};
  uint64_t expected = 0;
  for (auto _ : state) {
    source.push([&done] {
      done.fetch_add(1, std::memory_order_release);
      done.notify_one();
    });
    ++expected;
    for (uint64_t seen = done.load(std::memory_order_acquire); seen < expected;
         seen = done.load(std::memory_order_acquire)) {
      done.wait(seen, std::memory_order_acquire);
    }
  }
  executor->stop();
  (void)executor->wait(deadlineAfter(std::chrono::seconds(10)));
  if (caller.joinable()) caller.join();
}

void BM_HandOffBlocking(benchmark::State& state) {
  handOff(state, [] { return std::make_unique<BlockingExecutor>(); }, true);
}
void BM_HandOffEventLoop(benchmark::State& state) {
  handOff(state, [] { return std::make_unique<EventLoopExecutor>(); }, false);
}
void BM_HandOffThreadPool(benchmark::State& state) {
  handOff(state, [] { return std::make_unique<ThreadPoolExecutor>(); }, false);
}
BENCHMARK(BM_HandOffBlocking)->UseRealTime();
BENCHMARK(BM_HandOffEventLoop)->UseRealTime();
BENCHMARK(BM_HandOffThreadPool)->UseRealTime();

}  // namespace
}  // namespace switchboard

BENCHMARK_MAIN();
