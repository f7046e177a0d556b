// CallContext: what a handler knows about the call it serves (context, method, peer, identity,
// deadline, cancellation) and DeferredReply, with which a handler answers later.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "base/deadline.h"
#include "base/status.h"
#include "messaging/serializer.h"
#include "messaging/value.h"

namespace switchboard {

class Executor;

namespace detail {
// Where a call's one answer goes. Thread-safe; only the first send() counts.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  virtual void send(Result<Value> outcome) = 0;
};
}  // namespace detail

// The reply of a call whose handler returned before it had the answer. Move-only, thread-safe
// to complete from any thread, once. Destroying it unanswered answers the caller kCancelled,
// so no call is ever left without an outcome. While it lives, the server's wait() waits for it.
class DeferredReply {
 public:
  DeferredReply() = default;
  DeferredReply(std::shared_ptr<detail::ReplySink> sink) : sink_(std::move(sink)) {}  // NOLINT
  DeferredReply(DeferredReply&&) noexcept = default;
  DeferredReply& operator=(DeferredReply&& other) noexcept {
    if (this != &other) {
      abandon();
      sink_ = std::move(other.sink_);
    }
    return *this;
  }
  ~DeferredReply() { abandon(); }

  void complete(Value result) {
    if (auto sink = std::move(sink_)) sink->send(std::move(result));
  }
  template <typename T>
  void completeWith(T&& result) {
    complete(toValue(std::forward<T>(result)));
  }
  // Precondition: !error.isOk().
  void fail(Status error) {
    if (auto sink = std::move(sink_)) sink->send(std::move(error));
  }
  bool pending() const { return sink_ != nullptr; }

 private:
  void abandon() {
    if (auto sink = std::move(sink_)) {
      sink->send(Status(StatusCode::kCancelled, "the handler dropped its deferred reply"));
    }
  }
  std::shared_ptr<detail::ReplySink> sink_;
};

// Handed to a handler that takes `CallContext&` as its first parameter. Valid for the handler's
// run only (copy what a deferred completion needs). Thread-bound, except isCancelled().
class CallContext {
 public:
  CallContext(Context context, std::string_view method, std::string_view peer, Deadline deadline,
              std::shared_ptr<const std::atomic<bool>> cancelled, Executor* executor,
              std::shared_ptr<detail::ReplySink> reply, std::string_view identity = {})
      : context_(std::move(context)),
        method_(method),
        peer_(peer),
        identity_(identity),
        deadline_(deadline),
        cancelled_(std::move(cancelled)),
        executor_(executor),
        reply_(std::move(reply)) {}

  // The request context after Serializer::deserializeContext (nil when the caller sent none).
  const Context& context() const { return context_; }
  std::string_view method() const { return method_; }
  // The transport's name for the sender.
  std::string_view peer() const { return peer_; }
  // The sender as the transport authenticated it (ZeroMQ CURVE: the client's Z85 public key);
  // empty when the transport authenticated no one.
  std::string_view identity() const { return identity_; }
  // When the caller stops waiting (kNoDeadline when it did not say).
  Deadline deadline() const { return deadline_; }
  // True once the caller cancelled the call or its deadline passed; handlers poll it to stop
  // early. The flag object may be kept past the handler's return (cancellationFlag()).
  bool isCancelled() const {
    return (cancelled_ && cancelled_->load(std::memory_order_relaxed)) ||
           (deadline_ != kNoDeadline && Clock::now() >= deadline_);
  }
  std::shared_ptr<const std::atomic<bool>> cancellationFlag() const { return cancelled_; }
  // The executor running the call: runAt() for timers. Null outside a server (unit tests).
  Executor* executor() const { return executor_; }

  // Takes over the reply: the handler's return value is then ignored. At most once.
  DeferredReply defer() {
    deferred_ = true;
    return DeferredReply(std::exchange(reply_, nullptr));
  }
  bool deferred() const { return deferred_; }

 private:
  Context context_;
  std::string_view method_;
  std::string_view peer_;
  std::string_view identity_;
  Deadline deadline_;
  std::shared_ptr<const std::atomic<bool>> cancelled_;
  Executor* executor_;
  std::shared_ptr<detail::ReplySink> reply_;
  bool deferred_ = false;
};

}  // namespace switchboard
