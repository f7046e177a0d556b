// Deadlines: every blocking wait in Switchboard takes one.
// A Deadline is an absolute steady_clock time point; kNoDeadline waits for ever.
#pragma once

#include <chrono>

namespace switchboard {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
using Duration = Clock::duration;

inline constexpr Deadline kNoDeadline = Deadline::max();

// The deadline `d` after `from` (or after now), saturating at kNoDeadline instead of
// overflowing.
inline Deadline deadlineAfter(Deadline from, Duration d) {
  return d >= kNoDeadline - from ? kNoDeadline : from + d;
}
inline Deadline deadlineAfter(Duration d) { return deadlineAfter(Clock::now(), d); }

}  // namespace switchboard
