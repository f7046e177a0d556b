// Endpoint: a namespace and version and the methods served under them, registered from plain
// C++ callables and member functions; arguments are converted with arity and type checks.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "base/status.h"
#include "messaging/call_context.h"
#include "messaging/target.h"
#include "messaging/value.h"

namespace switchboard {

// ValueTypeName<T>: how a parameter or result type is named in signatures ("integer", ...).
template <typename T, typename = void>
struct ValueTypeName {
  static std::string name() { return "value"; }
};
template <>
struct ValueTypeName<bool> {
  static std::string name() { return "bool"; }
};
template <typename I>
struct ValueTypeName<I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>>> {
  static std::string name() { return "integer"; }
};
template <typename F>
struct ValueTypeName<F, std::enable_if_t<std::is_floating_point_v<F>>> {
  static std::string name() { return "number"; }
};
template <>
struct ValueTypeName<std::string> {
  static std::string name() { return "string"; }
};
template <>
struct ValueTypeName<Binary> {
  static std::string name() { return "binary"; }
};
template <>
struct ValueTypeName<void> {
  static std::string name() { return "nil"; }
};
template <typename T>
struct ValueTypeName<std::vector<T>> {
  static std::string name() { return "array<" + ValueTypeName<T>::name() + ">"; }
};
template <typename T>
struct ValueTypeName<std::optional<T>> {
  static std::string name() { return "optional<" + ValueTypeName<T>::name() + ">"; }
};
template <typename T>
struct ValueTypeName<std::map<std::string, T>> {
  static std::string name() { return "map<string, " + ValueTypeName<T>::name() + ">"; }
};
template <typename T>
struct ValueTypeName<Result<T>> {
  static std::string name() { return ValueTypeName<T>::name(); }
};

// What introspection reports of a method.
struct MethodSignature {
  std::vector<std::string> parameterNames;  // "arg1", ... unless names were given
  std::vector<std::string> parameterTypes;
  std::string resultType;
  std::string toString(std::string_view method) const;  // "add(a: integer, b: integer) -> integer"
};

// Runs a method: params in (the handler's own, to move from), result or error out. May throw
// (the dispatcher catches).
using MethodHandler = std::function<Result<Value>(CallContext&, Array params)>;

namespace detail {

template <typename T>
struct FunctionTraits : FunctionTraits<decltype(&T::operator())> {};
template <typename R, typename... A>
struct FunctionTraits<R (*)(A...)> {
  using ResultType = R;
  using ArgsTuple = std::tuple<A...>;
};
template <typename R, typename... A>
struct FunctionTraits<R(A...)> : FunctionTraits<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct FunctionTraits<R (C::*)(A...)> : FunctionTraits<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct FunctionTraits<R (C::*)(A...) const> : FunctionTraits<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct FunctionTraits<R (C::*)(A...) noexcept> : FunctionTraits<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct FunctionTraits<R (C::*)(A...) const noexcept> : FunctionTraits<R (*)(A...)> {};

template <typename T>
inline constexpr bool kIsCallContext = std::is_same_v<std::decay_t<T>, CallContext>;

template <typename Tuple>
struct TakesContext : std::false_type {};
template <typename First, typename... Rest>
struct TakesContext<std::tuple<First, Rest...>> : std::bool_constant<kIsCallContext<First>> {};

template <typename R>
struct IsResult : std::false_type {};
template <typename T>
struct IsResult<Result<T>> : std::true_type {};

Status argumentError(size_t index, const std::vector<std::string>& names, const Status& why);
Status arityError(size_t expected, size_t got);

// Converts params[I], moved from, to the decayed Ith parameter type, remembering the first
// failure.
template <typename Arg>
std::decay_t<Arg> convertArgument(Array& params, size_t index,
                                  const std::vector<std::string>& names, Status& failure) {
  using Plain = std::decay_t<Arg>;
  if (!failure.isOk()) return Plain{};
  Result<Plain> converted = fromValue<Plain>(std::move(params[index]));
  if (!converted) {
    failure = argumentError(index, names, converted.status());
    return Plain{};
  }
  return std::move(converted).value();
}

template <typename R, typename Invoke>
Result<Value> invokeAndConvert(Invoke&& invoke) {
  if constexpr (std::is_void_v<R>) {
    invoke();
    return Value();
  } else if constexpr (IsResult<R>::value) {
    R r = invoke();
    if (!r) return r.status();
    if constexpr (std::is_same_v<R, Result<void>>) {
      return Value();
    } else {
      return toValue(std::move(r).value());
    }
  } else {
    return toValue(invoke());
  }
}

template <typename F, typename... A, size_t... I>
Result<Value> callWithParams(F& fn, CallContext& ctx, Array& params,
                             const std::vector<std::string>& names, std::tuple<A...>*,
                             std::index_sequence<I...>) {
  using R = typename FunctionTraits<std::decay_t<F>>::ResultType;
  constexpr bool kTakesContext = TakesContext<std::tuple<A...>>::value;
  constexpr size_t kOffset = kTakesContext ? 1 : 0;
  constexpr size_t kArity = sizeof...(A) - kOffset;
  if (params.size() != kArity) return arityError(kArity, params.size());
  Status failure;
  // Braced init keeps left-to-right conversion order, so the first bad argument is reported.
  std::tuple<std::decay_t<std::tuple_element_t<I + kOffset, std::tuple<A...>>>...> args{
      convertArgument<std::tuple_element_t<I + kOffset, std::tuple<A...>>>(params, I, names,
                                                                           failure)...};
  if (!failure.isOk()) return failure;
  return invokeAndConvert<R>([&]() -> R {
    if constexpr (kTakesContext) {
      return fn(ctx, std::move(std::get<I>(args))...);
    } else {
      return fn(std::move(std::get<I>(args))...);
    }
  });
}

template <typename F>
MethodHandler makeHandler(F fn, std::vector<std::string> names) {
  using Traits = FunctionTraits<std::decay_t<F>>;
  using Args = typename Traits::ArgsTuple;
  constexpr size_t kArity = std::tuple_size_v<Args> - (TakesContext<Args>::value ? 1 : 0);
  return [fn = std::move(fn), names = std::move(names)](CallContext& ctx,
                                                        Array params) mutable {
    return callWithParams(fn, ctx, params, names, static_cast<Args*>(nullptr),
                          std::make_index_sequence<kArity>());
  };
}

template <typename... A>
void appendParameterTypes(std::tuple<A...>*, std::vector<std::string>& out) {
  (
      [&] {
        if constexpr (!kIsCallContext<A>) out.push_back(ValueTypeName<std::decay_t<A>>::name());
      }(),
      ...);
}

template <typename F>
MethodSignature makeSignature(const std::vector<std::string>& names) {
  using Traits = FunctionTraits<std::decay_t<F>>;
  MethodSignature sig;
  sig.resultType = ValueTypeName<std::decay_t<typename Traits::ResultType>>::name();
  appendParameterTypes(static_cast<typename Traits::ArgsTuple*>(nullptr), sig.parameterTypes);
  for (size_t i = 0; i < sig.parameterTypes.size(); ++i) {
    sig.parameterNames.push_back(i < names.size() ? names[i] : "arg" + std::to_string(i + 1));
  }
  return sig;
}

}  // namespace detail

// Thread-safe to read once registered; register everything before handing it to a dispatcher.
class Endpoint {
 public:
  struct Method {
    MethodHandler handler;
    MethodSignature signature;
  };

  explicit Endpoint(std::string ns = "", Version version = Version{1, 0})
      : ns_(std::move(ns)), version_(version) {}

  // Registers `fn` under `name`. fn may take `CallContext&` first; its other parameters and its
  // result convert through ValueTraits; returning Result<T> reports expected failures; a thrown
  // exception becomes a RemoteError. `names` name the parameters in errors and introspection.
  template <typename F>
  Endpoint& method(std::string name, F fn, std::vector<std::string> names = {}) {
    MethodSignature sig = detail::makeSignature<F>(names);
    return add(std::move(name), detail::makeHandler(std::move(fn), std::move(names)),
               std::move(sig));
  }

  // Registers a member function of `object`, which must outlive the endpoint's dispatcher.
  template <typename C, typename M>
  Endpoint& method(std::string name, C* object, M C::*member, std::vector<std::string> names = {}) {
    return methodOf(std::move(name), object, member, std::move(names));
  }

  // Registers a handler that takes the raw params.
  Endpoint& add(std::string name, MethodHandler handler, MethodSignature signature);

  const std::string& ns() const { return ns_; }
  const Version& version() const { return version_; }
  const Method* find(std::string_view name) const;
  const std::map<std::string, Method, std::less<>>& methods() const { return methods_; }

 private:
  template <typename C, typename R, typename... A>
  Endpoint& methodOf(std::string name, C* object, R (C::*member)(A...),
                     std::vector<std::string> names) {
    return method(std::move(name),
                  std::function<R(A...)>([object, member](A... a) -> R {
                    return (object->*member)(std::forward<A>(a)...);
                  }),
                  std::move(names));
  }
  template <typename C, typename R, typename... A>
  Endpoint& methodOf(std::string name, C* object, R (C::*member)(A...) const,
                     std::vector<std::string> names) {
    return method(std::move(name),
                  std::function<R(A...)>([object, member](A... a) -> R {
                    return (object->*member)(std::forward<A>(a)...);
                  }),
                  std::move(names));
  }

  std::string ns_;
  Version version_;
  std::map<std::string, Method, std::less<>> methods_;
};

}  // namespace switchboard
