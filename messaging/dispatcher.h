// RpcDispatcher: picks the endpoint for a request by namespace and version and runs its method,
// turning every failure (bad arguments, handler exceptions) into a typed Status.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "base/status.h"
#include "messaging/call_context.h"
#include "messaging/endpoint.h"
#include "messaging/target.h"
#include "messaging/value.h"

namespace switchboard {

// Which method names a remote caller may reach.
enum class AccessPolicy {
  kPublicOnly,  // names starting with '_' are hidden (the default)
  kAll,         // every registered name
};

// Immutable once built; thread-safe.
class RpcDispatcher final {
 public:
  explicit RpcDispatcher(std::vector<Endpoint> endpoints,
                         AccessPolicy policy = AccessPolicy::kPublicOnly);

  // Runs `method` of the first endpoint, in order, whose namespace equals `ns` and whose version
  // can serve `version` (any version when the caller asked for none). Never throws:
  //  kNoSuchMethod        a compatible endpoint exists but none has the (callable) method;
  //  kUnsupportedVersion  no endpoint of the namespace is compatible;
  //  kBadArguments        arity or an argument's type is wrong (the message names it);
  //  kRemoteError         the handler threw; remoteType() is its demangled type name.
  Result<Value> dispatch(CallContext& ctx, std::string_view ns,
                         const std::optional<Version>& version, std::string_view method,
                         Array params) const;

  // The callable methods: [{"namespace", "version", "methods": [{"name", "signature"}]}].
  Value introspect() const;

  const std::vector<Endpoint>& endpoints() const { return endpoints_; }
  // True when `method` may be called remotely under the policy.
  bool isCallable(std::string_view method) const;

 private:
  std::vector<Endpoint> endpoints_;
  AccessPolicy policy_;
};

// The demangled name of a type, e.g. "std::runtime_error".
std::string demangledTypeName(const std::type_info& type);
// The demangled name of the exception being handled (inside a catch block), e.g.
// "std::runtime_error"; RpcClient::registerException matches it.
std::string currentExceptionTypeName();

}  // namespace switchboard
