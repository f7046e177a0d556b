// Fuzz target: RpcDispatcher's argument conversion, over endpoints whose methods take integers,
// strings, vectors, maps, optionals, Values, binaries and CallContext&, fed decoded params.
#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "messaging/detail/codec.h"
#include "messaging/dispatcher.h"
#include "targets.h"

namespace switchboard::fuzz {
namespace {

std::vector<Endpoint> makeEndpoints() {
  Endpoint base;  // "" 1.0
  base.method("add", [](int32_t a, int32_t b) { return int64_t{a} + b; }, {"a", "b"});
  base.method("concat", [](std::string a, const std::string& b) { return a + b; });
  base.method("sum", [](std::vector<int64_t> xs) {
    uint64_t s = 0;  // wraps instead of overflowing
    for (int64_t x : xs) s += static_cast<uint64_t>(x);
    return s;
  });
  base.method("lookup",
              [](const std::map<std::string, std::vector<std::string>>& table,
                 const std::string& key) -> std::optional<std::vector<std::string>> {
                auto it = table.find(key);
                if (it == table.end()) return std::nullopt;
                return it->second;
              },
              {"table", "key"});
  base.method("maybe", [](std::optional<int16_t> x) { return x.value_or(-1); });
  base.method("echo", [](Value v) { return v; });
  base.method("scale", [](double x, uint8_t factor) { return x * factor; });
  base.method("flags", [](bool on, const Binary& b) { return on ? b.bytes.size() : size_t{0}; });
  base.method("nested", [](std::vector<std::map<std::string, std::optional<int64_t>>> rows) {
    size_t present = 0;
    for (const auto& row : rows) {
      for (const auto& [key, value] : row) present += value ? 1 : 0;
    }
    return present;
  });
  base.method("context", [](CallContext& ctx, std::optional<std::string> suffix) {
    return std::string(ctx.method()) + "@" + std::string(ctx.peer()) + suffix.value_or("") +
           (ctx.isCancelled() ? "!" : "");
  });
  base.method("defer", [](CallContext& ctx, int64_t x) {
    DeferredReply reply = ctx.defer();  // no reply sink outside a server: answering is a no-op
    reply.complete(Value(x));
    return x;
  });
  base.method("fail", [](const std::string& how) -> Result<int> {
    if (how == "throw") throw std::runtime_error("thrown on request");
    if (how == "int") throw 7;  // not a std::exception
    if (how.empty()) return Status(StatusCode::kInvalidState, "asked to fail");
    return static_cast<int>(how.size());
  });
  base.method("nothing", []() {});
  base.method("_hidden", []() { return 1; });

  Endpoint newer("", Version{1, 5});
  newer.method("who", []() { return std::string("1.5"); });

  Endpoint admin("admin", Version{2, 3});
  admin.method("add", [](uint64_t a, uint64_t b) -> Result<uint64_t> {
    if (a + b < a) return Status(StatusCode::kBadArguments, "overflow");
    return a + b;
  });
  admin.method("strings", [](std::vector<std::optional<std::string>> xs, bool reverse) {
    std::string out;
    for (const auto& x : xs) out = reverse ? x.value_or("-") + out : out + x.value_or("-");
    return out;
  });
  return {base, newer, admin};
}

constexpr std::string_view kMethods[] = {
    "add",   "concat",  "sum",     "lookup", "maybe",   "echo",    "scale",
    "flags", "nested",  "context", "defer",  "fail",    "nothing", "_hidden",
    "who",   "strings", "missing", "",       "_health",
};
constexpr std::string_view kNamespaces[] = {"", "admin", "other"};
const std::optional<Version> kVersions[] = {std::nullopt,  Version{1, 0}, Version{1, 7},
                                            Version{2, 0}, Version{2, 3}, Version{3, 0}};

bool isTypedError(StatusCode code) {
  switch (code) {
    case StatusCode::kNoSuchMethod:
    case StatusCode::kUnsupportedVersion:
    case StatusCode::kBadArguments:
    case StatusCode::kRemoteError:
    case StatusCode::kInvalidState:  // "fail" with an empty string
      return true;
    default:
      return false;
  }
}

}  // namespace

void fuzzDispatch(const uint8_t* data, size_t size) {
  if (size < 2) return;
  const std::string_view method = kMethods[data[0] % std::size(kMethods)];
  const std::string_view ns = kNamespaces[data[1] % std::size(kNamespaces)];
  const std::optional<Version>& version =
      kVersions[(data[1] / std::size(kNamespaces)) % std::size(kVersions)];
  const AccessPolicy policy =
      (data[1] & 0x80) != 0 ? AccessPolicy::kAll : AccessPolicy::kPublicOnly;
  Result<Value> decoded =
      detail::decodeValue(std::string_view(reinterpret_cast<const char*>(data) + 2, size - 2));
  if (!decoded) return;
  const Array params = decoded->isArray() ? decoded->asArray() : Array{*decoded};

  const RpcDispatcher dispatcher(makeEndpoints(), policy);
  CallContext ctx(Value(), method, "fuzz", kNoDeadline, nullptr, nullptr, nullptr);
  const Result<Value> outcome = dispatcher.dispatch(ctx, ns, version, method, params);
  if (!outcome) {
    FUZZ_CHECK(isTypedError(outcome.status().code()), outcome.status().toString());
    FUZZ_CHECK(!outcome.status().message().empty(), "an error without a message");
    return;
  }
  // A result goes back on the wire: it must encode and decode again.
  const std::string encoded = detail::encodeValue(*outcome);
  Result<Value> back = detail::decodeValue(encoded);
  FUZZ_CHECK(back.isOk(), "a result does not survive the codec: " + back.status().toString());
  if (method == "echo") {
    FUZZ_CHECK(encoded == detail::encodeValue(params.at(0)), "echo changed its argument");
  }
}

}  // namespace switchboard::fuzz
