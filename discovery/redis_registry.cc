// RedisRegistry's backend over hiredis (the only file that includes it): Lua scripts that take
// the time from the Redis server's clock, a command connection and a subscription thread.
#include "discovery/redis_registry.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace switchboard {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

constexpr std::string_view kComponent = "registry";
constexpr std::string_view kKeyPrefix = "switchboard:";
constexpr const char* kChannel = "switchboard:changes";

// The expiry scripts read the Redis server's clock (TIME), so hosts with skewed clocks agree.
// KEYS: the topic's and the server's sets. ARGV: url, ttl in ms, channel, the two key names.
// Publishes each key that gains the url; keeps each key alive at least as long as the url.
constexpr const char* kPutScript = R"lua(
local t = redis.call('TIME')
local ttl = tonumber(ARGV[2])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, expiry, ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[3], ARGV[3 + i])
  end
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
return 0
)lua";
// KEYS: the topic's and the server's sets. ARGV: url, channel, the two key names.
constexpr const char* kRemoveScript = R"lua(
for i, key in ipairs(KEYS) do
  if redis.call('ZREM', key, ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[2 + i])
  end
end
return 0
)lua";
// KEYS: one set. ARGV: channel, key name. Drops the expired urls (publishing the key if any
// was) and returns the others.
constexpr const char* kReadScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) > 0 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
)lua";

struct Endpoint {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string text() const { return host + ":" + std::to_string(port); }
};

// A decimal in [min, max], or nullopt.
std::optional<int> parseNumber(std::string_view text, int min, int max) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < min ||
      value > max) {
    return std::nullopt;
  }
  return value;
}

// redis://host[:port][/db], host a name, an IPv4 address or a bracketed IPv6 address.
Result<Endpoint> parseRedisUrl(std::string_view url) {
  const auto bad = [&](std::string_view why) {
    return Status(StatusCode::kInvalidTarget,
                  "bad registry URL '" + std::string(url) + "': " + std::string(why) +
                      " (expected redis://host[:port][/db])");
  };
  constexpr std::string_view kScheme = "redis://";
  if (!url.starts_with(kScheme)) return bad("not redis://");
  std::string_view rest = url.substr(kScheme.size());
  Endpoint ep;
  if (const size_t slash = rest.find('/'); slash != std::string_view::npos) {
    const auto db = parseNumber(rest.substr(slash + 1), 0, 1 << 20);
    if (!db) return bad("the database is not a number");
    ep.db = *db;
    rest = rest.substr(0, slash);
  }
  std::string_view port;
  if (rest.starts_with('[')) {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) return bad("no ']' after an IPv6 address");
    ep.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return bad("junk after ']'");
      port = rest.substr(close + 2);
      if (port.empty()) return bad("an empty port");
    }
  } else if (const size_t colon = rest.find(':'); colon != std::string_view::npos) {
    ep.host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (port.empty()) return bad("an empty port");
  } else {
    ep.host = rest;
  }
  if (ep.host.empty()) return bad("no host");
  if (!port.empty()) {
    const auto number = parseNumber(port, 1, 65535);
    if (!number) return bad("the port is not in 1..65535");
    ep.port = *number;
  }
  return ep;
}

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;
struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

timeval toTimeval(Duration d) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

int toPollMs(Duration d) {
  return static_cast<int>(std::clamp<int64_t>(duration_cast<milliseconds>(d).count(), 1, 1 << 30));
}

std::string_view replyText(const redisReply& r) { return std::string_view(r.str, r.len); }

// A connection whose connect and every later read and write are bounded.
Result<Context> connectTo(const Endpoint& ep, Duration connectTimeout, Duration ioTimeout) {
  Context c(redisConnectWithTimeout(ep.host.c_str(), ep.port, toTimeval(connectTimeout)));
  if (!c) return Status(StatusCode::kTransportError, "cannot allocate a redis connection");
  if (c->err != 0 || redisSetTimeout(c.get(), toTimeval(ioTimeout)) != REDIS_OK) {
    return Status(StatusCode::kTransportError,
                  "cannot connect to redis at " + ep.text() + ": " + c->errstr);
  }
  return c;
}

// One command and its reply. After a failure with c->err set the connection is unusable.
Result<Reply> command(redisContext* c, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  Reply reply(static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lengths.data())));
  if (!reply) {
    return Status(StatusCode::kTransportError, "redis connection failed: " + std::string(c->errstr));
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    return Status(StatusCode::kTransportError, "redis " + args[0] + ": " +
                                                   std::string(replyText(*reply)));
  }
  return reply;
}

class RedisBackend final : public detail::RegistryBackend {
 public:
  // Owns `wakeFd`, the eventfd that stops the subscription thread.
  RedisBackend(Endpoint ep, const RedisRegistry::Options& options, int wakeFd)
      : ep_(std::move(ep)),
        connectTimeout_(options.connectTimeout),
        commandTimeout_(options.commandTimeout),
        pingInterval_(options.refreshInterval),
        backoffInitial_(options.backoffInitial),
        backoffMax_(options.backoffMax),
        log_(options.log),
        wakeFd_(wakeFd),
        backoff_(options.backoffInitial) {}
  ~RedisBackend() override {
    stop();
    ::close(wakeFd_);
  }

  void start(ChangeCallback onChange) override {
    onChange_ = std::move(onChange);
    subscriber_ = std::thread([this] { runSubscription(); });
  }

  Status put(const RegistryEntry& entry, Duration ttl) override {
    const auto ms = std::max<int64_t>(1, duration_cast<milliseconds>(ttl).count());
    const std::string server = serverKey(entry);
    return eval(kPutScript, {prefixed(entry.topic), prefixed(server)},
                {entry.url, std::to_string(ms), kChannel, entry.topic, server})
        .status();
  }

  Status remove(const RegistryEntry& entry) override {
    const std::string server = serverKey(entry);
    return eval(kRemoveScript, {prefixed(entry.topic), prefixed(server)},
                {entry.url, kChannel, entry.topic, server})
        .status();
  }

  Result<std::vector<std::string>> read(const std::string& key) override {
    Result<Reply> reply = eval(kReadScript, {prefixed(key)}, {kChannel, key});
    if (!reply) return reply.status();
    const redisReply& r = **reply;
    std::vector<std::string> urls;
    bool wellFormed = r.type == REDIS_REPLY_ARRAY;
    for (size_t i = 0; wellFormed && i < r.elements; ++i) {
      wellFormed = r.element[i]->type == REDIS_REPLY_STRING;
      if (wellFormed) urls.emplace_back(replyText(*r.element[i]));
    }
    if (!wellFormed) {
      return Status(StatusCode::kProtocolError, "redis answered a read of '" + key +
                                                    "' with something else than a list of strings");
    }
    return urls;
  }

  uint64_t reconnects() const override { return reconnects_.load(); }

  void stop() override {
    if (!subscriber_.joinable()) return;
    const uint64_t one = 1;
    if (::write(wakeFd_, &one, sizeof one) != sizeof one) {
      log_(LogLevel::kError, kComponent, "cannot wake the redis subscription thread",
           {{"errno", std::to_string(errno)}});
    }
    subscriber_.join();
  }

 private:
  static std::string prefixed(std::string_view key) { return std::string(kKeyPrefix) + std::string(key); }

  // The command connection, connected now unless an attempt failed within the back-off delay.
  Status connectCommands() {
    if (commands_) return Status::ok();
    const Deadline now = Clock::now();
    if (now < nextAttempt_) {
      return Status(StatusCode::kTransportError,
                    "redis at " + ep_.text() + " unreachable (next attempt within " +
                        std::to_string(duration_cast<milliseconds>(nextAttempt_ - now).count()) +
                        " ms): " + lastError_);
    }
    Result<Context> c = connectTo(ep_, connectTimeout_, commandTimeout_);
    if (c && ep_.db != 0) {
      if (Result<Reply> selected = command(c->get(), {"SELECT", std::to_string(ep_.db)}); !selected) {
        c = selected.status();
      }
    }
    if (!c) {
      lastError_ = c.status().message();
      nextAttempt_ = now + backoff_;
      backoff_ = std::min(backoff_ * 2, backoffMax_);
      return c.status();
    }
    backoff_ = backoffInitial_;
    nextAttempt_ = Deadline();
    if (std::exchange(commandsConnectedBefore_, true)) ++reconnects_;
    commands_ = std::move(*c);
    return Status::ok();
  }

  Result<Reply> eval(const char* script, const std::vector<std::string>& keys,
                     const std::vector<std::string>& args) {
    if (Status s = connectCommands(); !s) return s;
    std::vector<std::string> argv{"EVAL", script, std::to_string(keys.size())};
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    Result<Reply> reply = command(commands_.get(), argv);
    if (commands_->err != 0) commands_.reset();  // unusable after an I/O error or a timeout
    return reply;
  }

  // The subscription thread: subscribe, listen until stop() or a failure, back off, again.
  void runSubscription() {
    Duration backoff = backoffInitial_;
    uint64_t failures = 0;
    bool subscribedBefore = false;
    for (;;) {
      Result<Context> c = connectTo(ep_, connectTimeout_, commandTimeout_);
      Status outcome = c.status();
      if (c) outcome = command(c->get(), {"SUBSCRIBE", kChannel}).status();
      if (outcome) {
        if (std::exchange(subscribedBefore, true)) ++reconnects_;
        if (failures > 0) {
          log_(LogLevel::kInfo, kComponent, "redis subscription restored", {{"redis", ep_.text()}});
        }
        failures = 0;
        backoff = backoffInitial_;
        onChange_("");  // changes may have gone unnoticed while not subscribed
        outcome = listen(c->get());
        if (outcome) return;  // stopped
      }
      if (isLoggedOccurrence(++failures)) {
        log_(LogLevel::kWarning, kComponent,
             "redis subscription down: changes are noticed by the periodic re-reads only",
             {{"redis", ep_.text()}, {"failures", std::to_string(failures)},
              {"error", outcome.message()}});
      }
      if (waitForStop(backoff)) return;
      backoff = std::min(backoff * 2, backoffMax_);
    }
  }

  // Passes on published changes until stop() (ok) or a failure: a read error, or no answer to
  // a PING sent after pingInterval_ of silence within another pingInterval_.
  Status listen(redisContext* c) {
    bool pinged = false;
    for (;;) {
      pollfd fds[2] = {{wakeFd_, POLLIN, 0}, {c->fd, POLLIN, 0}};
      const int ready = ::poll(fds, 2, toPollMs(pingInterval_));
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) return Status(StatusCode::kTransportError, "poll failed: " + std::string(std::strerror(errno)));
      if (fds[0].revents != 0) return Status::ok();
      if (ready == 0) {
        if (pinged) return Status(StatusCode::kTimeout, "redis did not answer a PING");
        int done = 0;
        if (redisAppendCommand(c, "PING") != REDIS_OK) return lostSubscription(c);
        while (done == 0) {
          if (redisBufferWrite(c, &done) != REDIS_OK) return lostSubscription(c);
        }
        pinged = true;
        continue;
      }
      if (redisBufferRead(c) != REDIS_OK) return lostSubscription(c);
      for (;;) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(c, &raw) != REDIS_OK) return lostSubscription(c);
        if (raw == nullptr) break;
        const Reply reply(static_cast<redisReply*>(raw));
        pinged = false;  // anything proves the link
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
            reply->element[0]->type == REDIS_REPLY_STRING &&
            replyText(*reply->element[0]) == "message" &&
            reply->element[2]->type == REDIS_REPLY_STRING) {
          onChange_(std::string(replyText(*reply->element[2])));
        }
      }
    }
  }

  static Status lostSubscription(const redisContext* c) {
    return Status(StatusCode::kTransportError, "redis subscription lost: " + std::string(c->errstr));
  }

  // True if stop() was called, false once `delay` passed.
  bool waitForStop(Duration delay) {
    pollfd fd{wakeFd_, POLLIN, 0};
    return ::poll(&fd, 1, toPollMs(delay)) > 0;
  }

  const Endpoint ep_;
  const Duration connectTimeout_;
  const Duration commandTimeout_;
  const Duration pingInterval_;
  const Duration backoffInitial_;
  const Duration backoffMax_;
  const LogSink log_;
  const int wakeFd_;
  ChangeCallback onChange_;  // set by start(), before the thread
  std::thread subscriber_;
  std::atomic<uint64_t> reconnects_{0};

  // The command connection: used one call at a time (the registry serializes its calls).
  Context commands_;
  bool commandsConnectedBefore_ = false;
  Deadline nextAttempt_{};  // no attempt before this (back-off)
  Duration backoff_;
  std::string lastError_;
};

}  // namespace

Result<std::unique_ptr<RedisRegistry>> RedisRegistry::create(Options options) {
  Result<Endpoint> ep = parseRedisUrl(options.url);
  if (!ep) return ep.status();
  for (Duration d : {options.connectTimeout, options.commandTimeout, options.refreshInterval,
                     options.backoffInitial, options.backoffMax}) {
    if (d < std::chrono::milliseconds(1)) {
      return Status(StatusCode::kBadArguments,
                    "RedisRegistry timeouts, intervals and back-off must be at least 1 ms");
    }
  }
  const int wakeFd = ::eventfd(0, EFD_CLOEXEC);
  if (wakeFd < 0) {
    return Status(StatusCode::kTransportError,
                  "cannot make an eventfd: " + std::string(std::strerror(errno)));
  }
  auto backend = std::make_unique<RedisBackend>(std::move(*ep), options, wakeFd);
  return std::unique_ptr<RedisRegistry>(
      new RedisRegistry(std::move(backend), {.refreshInterval = options.refreshInterval,
                                             .timers = options.timers,
                                             .log = std::move(options.log)}));
}

RedisRegistry::RedisRegistry(std::unique_ptr<detail::RegistryBackend> backend,
                             detail::SoftStateOptions options)
    : SoftStateRegistry(std::move(backend), std::move(options)) {}

}  // namespace switchboard
