// RpcDispatcher: endpoint selection, access policy, argument errors and exception capture.
// Also the small out-of-line helpers of endpoint.h.
#include "messaging/dispatcher.h"

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <typeinfo>

namespace switchboard {

std::string MethodSignature::toString(std::string_view method) const {
  std::string out(method);
  out += "(";
  for (size_t i = 0; i < parameterTypes.size(); ++i) {
    if (i > 0) out += ", ";
    out += parameterNames[i] + ": " + parameterTypes[i];
  }
  out += ") -> " + resultType;
  return out;
}

Endpoint& Endpoint::add(std::string name, MethodHandler handler, MethodSignature signature) {
  methods_.insert_or_assign(std::move(name), Method{std::move(handler), std::move(signature)});
  return *this;
}

const Endpoint::Method* Endpoint::find(std::string_view name) const {
  auto it = methods_.find(name);
  return it == methods_.end() ? nullptr : &it->second;
}

namespace detail {

Status argumentError(size_t index, const std::vector<std::string>& names, const Status& why) {
  std::string which = "argument " + std::to_string(index + 1);
  if (index < names.size()) which += " ('" + names[index] + "')";
  return Status(StatusCode::kBadArguments, which + ": " + why.message());
}

Status arityError(size_t expected, size_t got) {
  return Status(StatusCode::kBadArguments, "expected " + std::to_string(expected) +
                                               " argument" + (expected == 1 ? "" : "s") +
                                               ", got " + std::to_string(got));
}

}  // namespace detail

std::string demangledTypeName(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && demangled ? std::string(demangled.get()) : std::string(type.name());
}

std::string currentExceptionTypeName() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  return type == nullptr ? "unknown" : demangledTypeName(*type);
}

RpcDispatcher::RpcDispatcher(std::vector<Endpoint> endpoints, AccessPolicy policy)
    : endpoints_(std::move(endpoints)), policy_(policy) {}

bool RpcDispatcher::isCallable(std::string_view method) const {
  return !method.empty() && (policy_ == AccessPolicy::kAll || method.front() != '_');
}

Value RpcDispatcher::introspect() const {
  Array out;
  for (const Endpoint& endpoint : endpoints_) {
    Array methods;
    for (const auto& [name, method] : endpoint.methods()) {
      if (!isCallable(name)) continue;
      methods.push_back(Map{{"name", name}, {"signature", method.signature.toString(name)}});
    }
    out.push_back(Map{{"namespace", endpoint.ns()},
                      {"version", endpoint.version().toString()},
                      {"methods", std::move(methods)}});
  }
  return out;
}

Result<Value> RpcDispatcher::dispatch(CallContext& ctx, std::string_view ns,
                                      const std::optional<Version>& version,
                                      std::string_view method, Array params) const {
  bool compatible = false;
  for (const Endpoint& endpoint : endpoints_) {
    if (endpoint.ns() != ns) continue;
    if (version && !endpoint.version().canServe(*version)) continue;
    compatible = true;
    const Endpoint::Method* m = isCallable(method) ? endpoint.find(method) : nullptr;
    if (m == nullptr) continue;
    try {
      return m->handler(ctx, std::move(params));  // one handler runs, at most
    } catch (const std::exception& e) {
      return Status::remote(currentExceptionTypeName(), e.what());
    } catch (...) {
      return Status::remote(currentExceptionTypeName(), "non-standard exception");
    }
  }
  const std::string where = "namespace '" + std::string(ns) + "'" +
                            (version ? " version " + version->toString() : std::string());
  if (compatible) {
    return Status(StatusCode::kNoSuchMethod,
                  "no method '" + std::string(method) + "' in " + where);
  }
  return Status(StatusCode::kUnsupportedVersion, "no endpoint serves " + where);
}

}  // namespace switchboard
