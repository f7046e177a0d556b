// RpcDispatcher and Endpoint: selection by namespace and version, access policy, argument
// conversion errors naming the argument, results, exceptions, signatures.
#include <gtest/gtest.h>

#include <stdexcept>

#include "messaging/dispatcher.h"

namespace switchboard {
namespace {

struct Counter {
  int64_t total = 0;
  int64_t add(int64_t x) { return total += x; }
  int64_t get() const { return total; }
};

class DispatcherTest : public ::testing::Test {
 protected:
  Result<Value> dispatch(const RpcDispatcher& d, std::string_view method, Array params,
                         std::string_view ns = "", std::optional<Version> v = std::nullopt) {
    CallContext ctx(Value(), method, "test", kNoDeadline, nullptr, nullptr, nullptr);
    return d.dispatch(ctx, ns, v, method, std::move(params));
  }
};

TEST_F(DispatcherTest, ConvertsArgumentsAndResults) {
  Endpoint ep;
  ep.method("concat", [](std::string a, const std::string& b) { return a + b; });
  ep.method("sum", [](std::vector<int> xs) {
    int s = 0;
    for (int x : xs) s += x;
    return s;
  });
  ep.method("maybe", [](std::optional<int> x) { return x.value_or(-1); });
  ep.method("nothing", []() {});
  ep.method("half", [](double x) { return x / 2; });
  RpcDispatcher d({ep});
  EXPECT_EQ(*dispatch(d, "concat", {"a", "b"}), Value("ab"));
  EXPECT_EQ(*dispatch(d, "sum", {Array{1, 2, 3}}), Value(6));
  EXPECT_EQ(*dispatch(d, "maybe", {Value()}), Value(-1));
  EXPECT_EQ(*dispatch(d, "nothing", {}), Value());
  EXPECT_EQ(*dispatch(d, "half", {3}), Value(1.5));  // integers convert to double
}

// A handler's arguments are moved out of the params the dispatcher was given, not copied.
TEST_F(DispatcherTest, ArgumentsAreMovedFromTheParams) {
  const std::string text(100, 'p');  // past the small-string buffer: a move keeps the storage
  Array params{Value(text), Value(Binary{text})};
  const char* stringStorage = params[0].asString().data();
  const char* binaryStorage = params[1].asBinary().bytes.data();
  const char* stringReceived = nullptr;
  const char* binaryReceived = nullptr;
  Endpoint ep;
  ep.method("take", [&](std::string s, Binary b) {
    stringReceived = s.data();
    binaryReceived = b.bytes.data();
    return s.size() + b.bytes.size();
  });
  RpcDispatcher d({ep});
  CallContext ctx(Value(), "take", "test", kNoDeadline, nullptr, nullptr, nullptr);
  EXPECT_EQ(*d.dispatch(ctx, "", std::nullopt, "take", std::move(params)), Value(200));
  EXPECT_EQ(stringReceived, stringStorage);
  EXPECT_EQ(binaryReceived, binaryStorage);
}

TEST_F(DispatcherTest, BadArgumentsNameTheArgument) {
  Endpoint ep;
  ep.method("add", [](int32_t a, int32_t b) { return a + b; }, {"a", "b"});
  ep.method("list", [](std::vector<int> xs) { return xs.size(); });
  RpcDispatcher d({ep});
  Result<Value> r = dispatch(d, "add", {1, "two"});
  EXPECT_EQ(r.status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(r.status().message(), "argument 2 ('b'): expected integer, got string");
  r = dispatch(d, "add", {1});
  EXPECT_EQ(r.status().message(), "expected 2 arguments, got 1");
  r = dispatch(d, "add", {int64_t{1} << 40, 1});
  EXPECT_EQ(r.status().code(), StatusCode::kBadArguments);
  EXPECT_NE(r.status().message().find("argument 1 ('a')"), std::string::npos);
  r = dispatch(d, "list", {Array{1, "x"}});
  EXPECT_NE(r.status().message().find("argument 1: element 1"), std::string::npos)
      << r.status().message();
}

TEST_F(DispatcherTest, SelectsByNamespaceAndVersionInOrder) {
  Endpoint a("", Version{1, 1});
  a.method("who", []() { return std::string("a"); });
  Endpoint b("", Version{1, 5});
  b.method("who", []() { return std::string("b"); });
  b.method("onlyB", []() { return 1; });
  Endpoint c("admin", Version{2, 0});
  c.method("who", []() { return std::string("c"); });
  RpcDispatcher d({a, b, c});
  EXPECT_EQ(*dispatch(d, "who", {}), Value("a"));  // first match wins
  EXPECT_EQ(*dispatch(d, "who", {}, "", Version{1, 3}), Value("b"));
  EXPECT_EQ(*dispatch(d, "onlyB", {}, "", Version{1, 0}), Value(1));  // skips a, which lacks it
  EXPECT_EQ(*dispatch(d, "who", {}, "admin", Version{2, 0}), Value("c"));
  EXPECT_EQ(dispatch(d, "who", {}, "", Version{1, 6}).status().code(),
            StatusCode::kUnsupportedVersion);
  EXPECT_EQ(dispatch(d, "who", {}, "admin", Version{1, 0}).status().code(),
            StatusCode::kUnsupportedVersion);
  EXPECT_EQ(dispatch(d, "missing", {}, "admin").status().code(), StatusCode::kNoSuchMethod);
}

TEST_F(DispatcherTest, AccessPolicyHidesPrivateNames) {
  Endpoint ep;
  ep.method("_internal", []() { return 1; });
  EXPECT_EQ(dispatch(RpcDispatcher({ep}), "_internal", {}).status().code(),
            StatusCode::kNoSuchMethod);
  EXPECT_EQ(*dispatch(RpcDispatcher({ep}, AccessPolicy::kAll), "_internal", {}), Value(1));
}

TEST_F(DispatcherTest, ExceptionsBecomeTypedRemoteErrors) {
  Endpoint ep;
  ep.method("std", []() -> int { throw std::invalid_argument("bad input"); });
  ep.method("odd", []() -> int { throw 42; });
  ep.method("expected", []() -> Result<int> { return Status(StatusCode::kCancelled, "nope"); });
  RpcDispatcher d({ep});
  Result<Value> r = dispatch(d, "std", {});
  EXPECT_EQ(r.status().code(), StatusCode::kRemoteError);
  EXPECT_EQ(r.status().remoteType(), "std::invalid_argument");
  EXPECT_EQ(r.status().message(), "bad input");
  r = dispatch(d, "odd", {});
  EXPECT_EQ(r.status().remoteType(), "int");
  EXPECT_EQ(dispatch(d, "expected", {}).status().code(), StatusCode::kCancelled);
}

TEST_F(DispatcherTest, MemberFunctionsAndSignatures) {
  Counter counter;
  Endpoint ep;
  ep.method("add", &counter, &Counter::add, {"x"});
  ep.method("get", &counter, &Counter::get);
  ep.method("ctx", [](CallContext&, std::string s, std::vector<int>) { return s; });
  RpcDispatcher d({ep});
  EXPECT_EQ(*dispatch(d, "add", {5}), Value(5));
  EXPECT_EQ(*dispatch(d, "add", {2}), Value(7));
  EXPECT_EQ(*dispatch(d, "get", {}), Value(7));
  EXPECT_EQ(ep.find("add")->signature.toString("add"), "add(x: integer) -> integer");
  EXPECT_EQ(ep.find("ctx")->signature.toString("ctx"),
            "ctx(arg1: string, arg2: array<integer>) -> string");
}

}  // namespace
}  // namespace switchboard
