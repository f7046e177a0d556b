// LatencyHistogram: lock-free recording of durations into log-linear buckets (four per power of
// two, from 1 us to about 4.6 hours), with snapshots that give counts and percentiles.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "base/deadline.h"

namespace switchboard {

struct HistogramSnapshot {
  static constexpr size_t kBuckets = 4 * 34;
  uint64_t count = 0;
  uint64_t sumMicros = 0;
  std::array<uint64_t, kBuckets> buckets{};

  // The upper bound of bucket `b`, in microseconds.
  static uint64_t upperMicros(size_t b) {
    if (b < 4) return b + 1;  // 1..4 us, one each
    const size_t octave = b / 4, step = b % 4;
    const uint64_t base = uint64_t{1} << octave;
    return base + (base / 4) * (step + 1);
  }
  // The smallest bucket bound under which a fraction `q` (0..1] of the samples lie; 0 when empty.
  std::chrono::microseconds percentile(double q) const {
    if (count == 0) return std::chrono::microseconds(0);
    const double wanted = q * static_cast<double>(count);
    uint64_t seen = 0;
    for (size_t b = 0; b < kBuckets; ++b) {
      seen += buckets[b];
      if (static_cast<double>(seen) >= wanted) {
        return std::chrono::microseconds(static_cast<int64_t>(upperMicros(b)));
      }
    }
    return std::chrono::microseconds(static_cast<int64_t>(upperMicros(kBuckets - 1)));
  }
  std::chrono::microseconds mean() const {
    return std::chrono::microseconds(count ? static_cast<int64_t>(sumMicros / count) : 0);
  }
};

// Thread-safe; record() is wait-free (relaxed atomics). A snapshot taken while others record
// may count a sample in `count` and not yet in its bucket, or the other way round.
class LatencyHistogram {
 public:
  void record(Duration d) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
    const uint64_t micros = us > 0 ? static_cast<uint64_t>(us) : 0;
    buckets_[bucketOf(micros)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sumMicros_.fetch_add(micros, std::memory_order_relaxed);
  }

  HistogramSnapshot snapshot() const {
    HistogramSnapshot s;
    s.count = count_.load(std::memory_order_relaxed);
    s.sumMicros = sumMicros_.load(std::memory_order_relaxed);
    for (size_t b = 0; b < HistogramSnapshot::kBuckets; ++b) {
      s.buckets[b] = buckets_[b].load(std::memory_order_relaxed);
    }
    return s;
  }

  // The bucket whose bound is the first at or above `micros`.
  static size_t bucketOf(uint64_t micros) {
    if (micros <= 4) return micros == 0 ? 0 : micros - 1;
    const size_t octave = static_cast<size_t>(std::bit_width(micros - 1) - 1);  // 2^o < micros <= 2^(o+1)
    const uint64_t base = uint64_t{1} << octave;
    const size_t step = static_cast<size_t>((micros - 1 - base) / (base / 4));   // 0..3
    const size_t b = octave * 4 + step;
    return b < HistogramSnapshot::kBuckets ? b : HistogramSnapshot::kBuckets - 1;
  }

 private:
  std::array<std::atomic<uint64_t>, HistogramSnapshot::kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sumMicros_{0};
};

}  // namespace switchboard
