// The sample service. sleep() defers its reply and polls its cancellation on executor timers,
// so a blocking, event-loop or pool executor keeps serving while it waits.
#include "tools/sample_service.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "executors/executor.h"

namespace switchboard::tools {
namespace {

constexpr auto kCancelCheck = std::chrono::milliseconds(20);

// Completes `reply` with `ms` at `until`, or kCancelled as soon as the caller gave up.
void sleepStep(Executor* executor, std::shared_ptr<DeferredReply> reply,
               std::shared_ptr<const std::atomic<bool>> cancelled, Deadline callerDeadline,
               Deadline until, int64_t ms) {
  const Deadline now = Clock::now();
  if (cancelled && cancelled->load()) {
    reply->fail(Status(StatusCode::kCancelled, "sleep cancelled by the caller"));
    return;
  }
  if (now >= callerDeadline) {  // the caller is giving up too: say what it will see
    reply->fail(Status(StatusCode::kTimeout, "sleep outlived the caller's deadline"));
    return;
  }
  if (now >= until) {
    reply->complete(ms);
    return;
  }
  const Deadline next = std::min({until, now + kCancelCheck, callerDeadline});
  Status scheduled = executor->runAt(next, [=] {
    sleepStep(executor, reply, cancelled, callerDeadline, until, ms);
  });
  if (!scheduled) reply->fail(scheduled);
}

}  // namespace

Endpoint sampleEndpoint(std::string name, int journalFd) {
  Endpoint ep;
  ep.method("echo", [](Value x) { return x; }, {"x"});
  ep.method("whoami", [name = std::move(name)]() { return name; }, {});
  ep.method("add", [](Value a, Value b) -> Result<Value> {
    if (a.isInteger() && b.isInteger()) {
      Result<int64_t> x = fromValue<int64_t>(a), y = fromValue<int64_t>(b);
      int64_t sum = 0;
      if (x && y && !__builtin_add_overflow(*x, *y, &sum)) return Value(sum);
    }
    Result<double> x = fromValue<double>(a), y = fromValue<double>(b);
    if (!x) return Status(StatusCode::kBadArguments, "argument 1 ('a'): " + x.status().message());
    if (!y) return Status(StatusCode::kBadArguments, "argument 2 ('b'): " + y.status().message());
    return Value(*x + *y);
  }, {"a", "b"});
  ep.method("sleep", [](CallContext& ctx, int64_t ms) {
    if (ms < 0) throw std::invalid_argument("sleep: ms must not be negative");
    auto reply = std::make_shared<DeferredReply>(ctx.defer());
    sleepStep(ctx.executor(), reply, ctx.cancellationFlag(), ctx.deadline(),
              deadlineAfter(std::chrono::milliseconds(ms)), ms);
  }, {"ms"});
  ep.method("fail", [](std::string message) -> Value { throw SampleFailure(message); },
            {"message"});
  if (journalFd >= 0) {
    ep.method("record", [journalFd](std::string token) -> Result<std::string> {
      if (token.empty() || token.find('\n') != std::string::npos) {
        return Status(StatusCode::kBadArguments, "record: the token must be one non-empty line");
      }
      const std::string line = token + "\n";
      if (::write(journalFd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
        throw std::runtime_error(std::string("record: journal write failed: ") +
                                 std::strerror(errno));
      }
      return token;
    }, {"token"});
  }
  return ep;
}

}  // namespace switchboard::tools
