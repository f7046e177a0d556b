// Tests of Value (find, typeName, toJson), ValueTraits conversions and the MessagePack codec,
// including hostile inputs that must fail as kProtocolError without crashing or big allocations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/status.h"
#include "messaging/detail/codec.h"
#include "messaging/value.h"

namespace switchboard {
namespace {

using detail::DecodeLimits;
using detail::decodeValue;
using detail::encodeValue;

std::string bytes(std::initializer_list<unsigned> list) {
  std::string out;
  for (unsigned b : list) out += static_cast<char>(b);
  return out;
}

Value roundTrip(const Value& v) {
  auto decoded = decodeValue(encodeValue(v), DecodeLimits{});
  EXPECT_TRUE(decoded.isOk()) << decoded.status();
  return decoded.valueOr(Value("<decode failed>"));
}

// Asserts that decoding `input` fails with kProtocolError and returns the message.
std::string protocolErrorOf(std::string_view input, const DecodeLimits& limits = DecodeLimits{}) {
  auto decoded = decodeValue(input, limits);
  EXPECT_FALSE(decoded.isOk()) << "decoded as " << decoded.valueOr(Value()).toJson();
  EXPECT_EQ(decoded.status().code(), StatusCode::kProtocolError) << decoded.status();
  return decoded.status().message();
}

// ---- Value ---------------------------------------------------------------------------------

TEST(ValueTest, IntegersNormaliseToIntWhenTheyFit) {
  EXPECT_EQ(Value(uint64_t{5}).type(), Value::Type::kInt);
  EXPECT_EQ(Value(static_cast<uint64_t>(INT64_MAX)).type(), Value::Type::kInt);
  EXPECT_EQ(Value(static_cast<uint64_t>(INT64_MAX) + 1).type(), Value::Type::kUInt);
  EXPECT_EQ(Value(uint64_t{5}), Value(5));
}

TEST(ValueTest, FindLooksUpStringKeysInMaps) {
  const Value m(Map{{Value(1), Value("one")},
                    {Value("a"), Value(10)},
                    {Value("b"), Value(20)},
                    {Value("a"), Value(30)}});
  ASSERT_NE(m.find("a"), nullptr);
  EXPECT_EQ(*m.find("a"), Value(10)) << "the first of duplicate keys wins";
  EXPECT_EQ(*m.find("b"), Value(20));
  EXPECT_EQ(m.find("1"), nullptr) << "integer keys are not string keys";
  EXPECT_EQ(m.find("c"), nullptr);
  EXPECT_EQ(Value(Array{Value("a")}).find("a"), nullptr);
  EXPECT_EQ(Value("a").find("a"), nullptr);
  EXPECT_EQ(Value().find("a"), nullptr);
}

TEST(ValueTest, TypeNames) {
  EXPECT_EQ(Value::typeName(Value::Type::kNil), "nil");
  EXPECT_EQ(Value::typeName(Value::Type::kBool), "bool");
  EXPECT_EQ(Value::typeName(Value::Type::kInt), "integer");
  EXPECT_EQ(Value::typeName(Value::Type::kUInt), "integer");
  EXPECT_EQ(Value::typeName(Value::Type::kDouble), "double");
  EXPECT_EQ(Value::typeName(Value::Type::kString), "string");
  EXPECT_EQ(Value::typeName(Value::Type::kBinary), "binary");
  EXPECT_EQ(Value::typeName(Value::Type::kArray), "array");
  EXPECT_EQ(Value::typeName(Value::Type::kMap), "map");
}

TEST(ValueToJsonTest, Scalars) {
  EXPECT_EQ(Value().toJson(), "null");
  EXPECT_EQ(Value(true).toJson(), "true");
  EXPECT_EQ(Value(false).toJson(), "false");
  EXPECT_EQ(Value(-42).toJson(), "-42");
  EXPECT_EQ(Value(INT64_MIN).toJson(), "-9223372036854775808");
  EXPECT_EQ(Value(UINT64_MAX).toJson(), "18446744073709551615");
  EXPECT_EQ(Value(1.5).toJson(), "1.5");
  EXPECT_EQ(Value(0.1).toJson(), "0.1");
  EXPECT_EQ(Value(2.0).toJson(), "2.0") << "integral doubles still read as doubles";
  EXPECT_EQ(Value(1e300).toJson(), "1e+300");
  EXPECT_EQ(Value(std::nan("")).toJson(), "NaN");
  EXPECT_EQ(Value(std::numeric_limits<double>::infinity()).toJson(), "Infinity");
  EXPECT_EQ(Value(-std::numeric_limits<double>::infinity()).toJson(), "-Infinity");
}

TEST(ValueToJsonTest, StringsAreEscaped) {
  EXPECT_EQ(Value("").toJson(), R"("")");
  EXPECT_EQ(Value("say \"hi\"\\ok").toJson(), R"("say \"hi\"\\ok")");
  EXPECT_EQ(Value("a\nb\tc\rd\be\ff").toJson(), R"("a\nb\tc\rd\be\ff")");
  EXPECT_EQ(Value(std::string("\x01\x1f", 2)).toJson(), R"("\u0001\u001f")");
  EXPECT_EQ(Value(std::string("nul\0", 4)).toJson(), R"("nul\u0000")");
  EXPECT_EQ(Value("h\xc3\xa9").toJson(), "\"h\xc3\xa9\"") << "UTF-8 is copied as is";
}

TEST(ValueToJsonTest, BinaryIsBase64) {
  EXPECT_EQ(Value(Binary{""}).toJson(), R"("")");
  EXPECT_EQ(Value(Binary{"f"}).toJson(), R"("Zg==")");
  EXPECT_EQ(Value(Binary{"fo"}).toJson(), R"("Zm8=")");
  EXPECT_EQ(Value(Binary{"foo"}).toJson(), R"("Zm9v")");
  EXPECT_EQ(Value(Binary{"foobar"}).toJson(), R"("Zm9vYmFy")");
  EXPECT_EQ(Value(Binary{std::string("\xff\xfe\x00", 3)}).toJson(), R"("//4A")");
}

// Found by the decode_message fuzzer: each level of map-in-key nesting escaped the level inside
// it, so 40 levels (an 85-byte message) rendered 2^40 bytes of backslashes.
TEST(ValueToJsonTest, KeysNestedInKeysStayShort) {
  Value v = Map{{Value(), Value()}};
  for (int depth = 0; depth < 60; ++depth) v = Map{{v, Value(depth)}};
  const std::string text = v.toJson();
  EXPECT_LT(text.size(), 2000u);
  EXPECT_EQ(text.substr(0, 2), "{\"");
  EXPECT_NE(text.find("..."), std::string::npos);
  EXPECT_EQ(Value(Map{{Value(1), Value(2)}}).toJson(), R"({"1":2})");
}

TEST(ValueToJsonTest, Containers) {
  EXPECT_EQ(Value(Array{}).toJson(), "[]");
  EXPECT_EQ(Value(Map{}).toJson(), "{}");
  const Value v(Array{Value(1), Value("two"), Value(Array{Value(), Value(true)}),
                      Value(Map{{Value("k"), Value(Array{})}})});
  EXPECT_EQ(v.toJson(), R"([1,"two",[null,true],{"k":[]}])");
}

TEST(ValueToJsonTest, NonStringMapKeysBecomeStringsOfTheirJson) {
  const Value v(Map{{Value(1), Value(2)},
                    {Value(Array{Value("a")}), Value("x")},
                    {Value(), Value(false)},
                    {Value("q\"k"), Value(1.5)}});
  EXPECT_EQ(v.toJson(), R"({"1":2,"[\"a\"]":"x","null":false,"q\"k":1.5})");
}

// ---- ValueTraits ---------------------------------------------------------------------------

TEST(ValueTraitsTest, IntegersInRange) {
  EXPECT_EQ(fromValue<int8_t>(Value(-128)).value(), -128);
  EXPECT_EQ(fromValue<int8_t>(Value(127)).value(), 127);
  EXPECT_EQ(fromValue<uint8_t>(Value(255)).value(), 255);
  EXPECT_EQ(fromValue<int64_t>(Value(INT64_MIN)).value(), INT64_MIN);
  EXPECT_EQ(fromValue<uint64_t>(Value(UINT64_MAX)).value(), UINT64_MAX);
  EXPECT_EQ(fromValue<uint64_t>(Value(7)).value(), 7u);
  EXPECT_EQ(toValue(uint64_t{UINT64_MAX}), Value(UINT64_MAX));
  EXPECT_EQ(toValue(int16_t{-3}), Value(-3));
}

TEST(ValueTraitsTest, IntegersOutOfRangeAreBadArguments) {
  auto r = fromValue<int8_t>(Value(300));
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(r.status().message(), "integer out of range: 300");

  auto negative = fromValue<uint8_t>(Value(-1));
  ASSERT_FALSE(negative.isOk());
  EXPECT_EQ(negative.status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(negative.status().message(), "unsigned integer out of range: -1");

  auto huge = fromValue<int64_t>(Value(UINT64_MAX));
  ASSERT_FALSE(huge.isOk());
  EXPECT_EQ(huge.status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(huge.status().message(), "integer out of range: 18446744073709551615");

  EXPECT_FALSE(fromValue<int8_t>(Value(-129)).isOk());
  EXPECT_FALSE(fromValue<uint32_t>(Value(uint64_t{1} << 32)).isOk());
}

TEST(ValueTraitsTest, WrongTypesNameBothTypes) {
  auto r = fromValue<int>(Value("5"));
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(r.status().message(), "expected integer, got string");

  EXPECT_EQ(fromValue<bool>(Value(1)).status().message(), "expected bool, got integer");
  EXPECT_EQ(fromValue<std::string>(Value(Binary{"x"})).status().message(),
            "expected string, got binary");
  EXPECT_EQ(fromValue<Binary>(Value("x")).status().message(), "expected binary, got string");
  EXPECT_EQ(fromValue<double>(Value()).status().message(), "expected number, got nil");
  EXPECT_EQ(fromValue<std::vector<int>>(Value(Map{})).status().message(),
            "expected array, got map");
  EXPECT_EQ(fromValue<int>(Value(1.0)).status().message(), "expected integer, got double");
}

TEST(ValueTraitsTest, OtherTypes) {
  EXPECT_EQ(fromValue<double>(Value(3)).value(), 3.0);
  EXPECT_EQ(fromValue<double>(Value(UINT64_MAX)).value(), 18446744073709551615.0);
  EXPECT_EQ(fromValue<float>(Value(0.5)).value(), 0.5f);
  EXPECT_EQ(fromValue<std::string>(Value("s")).value(), "s");
  EXPECT_EQ(fromValue<Binary>(Value(Binary{"b"})).value(), Binary{"b"});
  EXPECT_EQ(fromValue<std::optional<int>>(Value()).value(), std::nullopt);
  EXPECT_EQ(fromValue<std::optional<int>>(Value(4)).value(), 4);
  EXPECT_EQ(fromValue<std::optional<int>>(Value("x")).status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(toValue(std::optional<int>()), Value());
  EXPECT_EQ(fromValue<Value>(Value("any")).value(), Value("any"));
}

TEST(ValueTraitsTest, FromAValueGivenUpMovesTheContents) {
  const std::string text(100, 's');  // past the small-string buffer: a move keeps the storage
  Value string(text);
  const char* storage = string.asString().data();
  Result<std::string> taken = fromValue<std::string>(std::move(string));
  ASSERT_TRUE(taken.isOk());
  EXPECT_EQ(*taken, text);
  EXPECT_EQ(taken->data(), storage);
  Value binary(Binary{text});
  storage = binary.asBinary().bytes.data();
  EXPECT_EQ(fromValue<Binary>(std::move(binary))->bytes.data(), storage);
  Value any(Array{Value(text)});
  storage = any.asArray()[0].asString().data();
  EXPECT_EQ(fromValue<Value>(std::move(any))->asArray()[0].asString().data(), storage);
  // A mismatch still names both types, and leaves the value as it was.
  Value number(7);
  EXPECT_EQ(fromValue<std::string>(std::move(number)).status().message(),
            "expected string, got integer");
  EXPECT_EQ(number, Value(7));  // NOLINT(bugprone-use-after-move): from() did not take it
}

TEST(ValueTraitsTest, VectorElementErrorNamesTheIndex) {
  const Value v(Array{Value(1), Value(2), Value("three")});
  auto r = fromValue<std::vector<int>>(v);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kBadArguments);
  EXPECT_EQ(r.status().message(), "element 2: expected integer, got string");

  auto range = fromValue<std::vector<uint8_t>>(Value(Array{Value(1), Value(256)}));
  EXPECT_EQ(range.status().message(), "element 1: unsigned integer out of range: 256");

  auto nested = fromValue<std::vector<std::vector<int>>>(
      Value(Array{Value(Array{}), Value(Array{Value(1), Value(true)})}));
  EXPECT_EQ(nested.status().message(), "element 1: element 1: expected integer, got bool");

  EXPECT_EQ(fromValue<std::vector<int>>(Value(Array{Value(1), Value(2)})).value(),
            (std::vector<int>{1, 2}));
  EXPECT_EQ(toValue(std::vector<int>{1, 2}), Value(Array{Value(1), Value(2)}));
}

TEST(ValueTraitsTest, StringMaps) {
  using M = std::map<std::string, int>;
  const Value v(Map{{Value("a"), Value(1)}, {Value("b"), Value(2)}});
  EXPECT_EQ(fromValue<M>(v).value(), (M{{"a", 1}, {"b", 2}}));
  EXPECT_EQ(toValue(M{{"a", 1}}), Value(Map{{Value("a"), Value(1)}}));
  EXPECT_EQ(fromValue<M>(Value(Map{{Value("a"), Value("x")}})).status().message(),
            "key 'a': expected integer, got string");
  EXPECT_EQ(fromValue<M>(Value(Map{{Value(1), Value(1)}})).status().message(),
            "expected string key, got integer");
}

// ---- Encoding and round trips --------------------------------------------------------------

TEST(CodecTest, EncodesTheSmallestMessagePackForms) {
  EXPECT_EQ(encodeValue(Value()), bytes({0xc0}));
  EXPECT_EQ(encodeValue(Value(false)), bytes({0xc2}));
  EXPECT_EQ(encodeValue(Value(true)), bytes({0xc3}));
  EXPECT_EQ(encodeValue(Value(0)), bytes({0x00}));
  EXPECT_EQ(encodeValue(Value(127)), bytes({0x7f}));
  EXPECT_EQ(encodeValue(Value(128)), bytes({0xcc, 0x80}));
  EXPECT_EQ(encodeValue(Value(-1)), bytes({0xff}));
  EXPECT_EQ(encodeValue(Value(-33)), bytes({0xd0, 0xdf}));
  EXPECT_EQ(encodeValue(Value(UINT64_MAX)),
            bytes({0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}));
  EXPECT_EQ(encodeValue(Value(INT64_MIN)),
            bytes({0xd3, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}));
  EXPECT_EQ(encodeValue(Value(1.5)), bytes({0xcb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}));
  // Integral doubles stay float64 (msgpack-c's own pack_double would write integers).
  EXPECT_EQ(encodeValue(Value(2.0)), bytes({0xcb, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}));
  EXPECT_EQ(encodeValue(Value(-0.0)),
            bytes({0xcb, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}));
  EXPECT_EQ(encodeValue(Value("hi")), bytes({0xa2, 0x68, 0x69}));
  EXPECT_EQ(encodeValue(Value(Binary{"hi"})), bytes({0xc4, 0x02, 0x68, 0x69}));
  EXPECT_EQ(encodeValue(Value(Array{Value(1), Value(Array{})})), bytes({0x92, 0x01, 0x90}));
  EXPECT_EQ(encodeValue(Value(Map{{Value("a"), Value()}})), bytes({0x81, 0xa1, 0x61, 0xc0}));
}

TEST(CodecTest, EncodeAppends) {
  std::string out = "prefix";
  encodeValue(Value(1), out);
  encodeValue(Value("x"), out);
  EXPECT_EQ(out, "prefix" + bytes({0x01, 0xa1, 0x78}));
}

TEST(CodecTest, ScalarsRoundTrip) {
  const std::vector<Value> values = {
      Value(),
      Value(true),
      Value(false),
      Value(0),
      Value(1),
      Value(-1),
      Value(127),
      Value(128),
      Value(-32),
      Value(-33),
      Value(65536),
      Value(INT32_MIN),
      Value(INT64_MAX),
      Value(INT64_MIN),
      Value(static_cast<uint64_t>(INT64_MAX) + 1),
      Value(UINT64_MAX),
      Value(0.0),
      Value(2.0),
      Value(-3.0),
      Value(18446744073709551616.0),
      Value(-0.5),
      Value(1e-300),
      Value(std::numeric_limits<double>::max()),
      Value(std::numeric_limits<double>::infinity()),
      Value(""),
      Value("hello"),
      Value(std::string(70000, 'x')),
      Value(std::string("a\0b", 3)),
      Value(Binary{}),
      Value(Binary{std::string("\x00\xff\x80", 3)}),
      Value(Binary{std::string(300, '\x01')}),
  };
  for (const Value& v : values) {
    const Value back = roundTrip(v);
    EXPECT_EQ(back, v) << v.toJson() << " came back as " << back.toJson();
    EXPECT_EQ(back.type(), v.type()) << v.toJson();
  }
}

TEST(CodecTest, NegativeZeroRoundTrips) {
  const Value back = roundTrip(Value(-0.0));
  ASSERT_TRUE(back.isDouble());
  EXPECT_TRUE(std::signbit(back.asDouble()));
}

TEST(CodecTest, NaNRoundTrips) {
  const Value back = roundTrip(Value(std::nan("")));
  ASSERT_TRUE(back.isDouble());
  EXPECT_TRUE(std::isnan(back.asDouble()));
}

TEST(CodecTest, ContainersRoundTrip) {
  const Value nested(Array{
      Value(Array{}),
      Value(Map{}),
      Value(Array{Value(Array{Value(Array{Value(1), Value("deep")})})}),
      Value(Map{{Value("k"), Value(Map{{Value("inner"), Value(Array{Value(UINT64_MAX)})}})},
                {Value(7), Value(Binary{"bin"})},
                {Value(Array{Value(1)}), Value()},
                {Value("k"), Value("duplicate keys keep their order")}}),
  });
  EXPECT_EQ(roundTrip(nested), nested);
  EXPECT_EQ(roundTrip(Value(Array{})), Value(Array{}));
  EXPECT_EQ(roundTrip(Value(Map{})), Value(Map{}));

  Array big;
  for (int i = 0; i < 70000; ++i) big.emplace_back(i);
  EXPECT_EQ(roundTrip(Value(big)), Value(big));
}

TEST(CodecTest, DecodingNormalisesIntegersAndFloats) {
  // uint8 5, uint64 1, int64 5 (a non-negative value in a signed encoding), int8 -1.
  EXPECT_EQ(decodeValue(bytes({0xcc, 0x05}), {}).value().type(), Value::Type::kInt);
  EXPECT_EQ(decodeValue(bytes({0xcf, 0, 0, 0, 0, 0, 0, 0, 1}), {}).value(), Value(1));
  EXPECT_EQ(decodeValue(bytes({0xd3, 0, 0, 0, 0, 0, 0, 0, 5}), {}).value(), Value(5));
  EXPECT_EQ(decodeValue(bytes({0xd0, 0xff}), {}).value(), Value(-1));
  const Value u = decodeValue(bytes({0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0}), {}).value();
  EXPECT_EQ(u.type(), Value::Type::kUInt);
  EXPECT_EQ(u.asUInt(), uint64_t{1} << 63);
  // float32 1.5
  const Value f = decodeValue(bytes({0xca, 0x3f, 0xc0, 0x00, 0x00}), {}).value();
  ASSERT_TRUE(f.isDouble());
  EXPECT_EQ(f.asDouble(), 1.5);
  // str8 and bin8 forms
  EXPECT_EQ(decodeValue(bytes({0xd9, 0x01, 0x61}), {}).value(), Value("a"));
  EXPECT_EQ(decodeValue(bytes({0xc4, 0x01, 0x61}), {}).value(), Value(Binary{"a"}));
}

// ---- Hostile input -------------------------------------------------------------------------

TEST(CodecHostileTest, EmptyInput) { EXPECT_EQ(protocolErrorOf(""), "empty message"); }

TEST(CodecHostileTest, EveryTruncationFails) {
  const std::string full =
      encodeValue(Value(Array{Value("method"), Value(Map{{Value("k"), Value(UINT64_MAX)}}),
                              Value(Binary{"xyz"}), Value(1.25), Value(Array{Value(-100000)})}));
  for (size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE(n);
    protocolErrorOf(std::string_view(full).substr(0, n));
  }
  EXPECT_EQ(protocolErrorOf(bytes({0x92, 0x01})), "truncated MessagePack data");
}

TEST(CodecHostileTest, HugeArrayHeaderFailsBeforeAllocating) {
  const std::string input = bytes({0xdd, 0xff, 0xff, 0xff, 0xff});
  EXPECT_NE(protocolErrorOf(input).find("array longer than the limit"), std::string::npos);

  // Even with no array limit, a header cannot declare more elements than the message has
  // bytes: the count is rejected before msgpack-c allocates 4G objects.
  DecodeLimits unlimited;
  unlimited.maxArray = std::numeric_limits<size_t>::max();
  unlimited.maxMap = std::numeric_limits<size_t>::max();
  EXPECT_NE(protocolErrorOf(input, unlimited).find("array longer than the limit"),
            std::string::npos);
  EXPECT_NE(protocolErrorOf(bytes({0xdf, 0xff, 0xff, 0xff, 0xff}), unlimited)
                .find("map larger than the limit"),
            std::string::npos);
  // 1M elements (exactly the default limit) announced by a 5-byte message.
  EXPECT_NE(protocolErrorOf(bytes({0xdd, 0x00, 0x10, 0x00, 0x00})).find("array longer"),
            std::string::npos);
  // Within both bounds but truncated.
  EXPECT_EQ(protocolErrorOf(bytes({0xdd, 0x00, 0x00, 0x00, 0x03, 0x01})),
            "truncated MessagePack data");
}

TEST(CodecHostileTest, HugeStringBinaryAndExtHeaders) {
  // msgpack-c waits for a str, bin or ext body before it copies it, so a header announcing
  // more bytes than the message has is just truncated data; nothing is allocated for it.
  EXPECT_EQ(protocolErrorOf(bytes({0xdb, 0xff, 0xff, 0xff, 0xff})), "truncated MessagePack data");
  EXPECT_EQ(protocolErrorOf(bytes({0xc6, 0xff, 0xff, 0xff, 0xff})), "truncated MessagePack data");
  EXPECT_EQ(protocolErrorOf(bytes({0xc9, 0xff, 0xff, 0xff, 0xff, 0x01})),
            "truncated MessagePack data");
  EXPECT_EQ(protocolErrorOf(bytes({0xdb, 0x00, 0x10, 0x00, 0x00, 0x61})),
            "truncated MessagePack data");
}

TEST(CodecHostileTest, DeepNestingFailsWithoutCrashing) {
  const std::string deep(100000, '\x91');
  EXPECT_NE(protocolErrorOf(deep).find("nesting deeper than the limit of 64"), std::string::npos);
  DecodeLimits noDepthLimit;
  noDepthLimit.maxDepth = std::numeric_limits<size_t>::max();
  EXPECT_NE(protocolErrorOf(deep, noDepthLimit).find("nesting deeper than the limit of"),
            std::string::npos)
      << "maxDepth is capped by kMaxDecodeDepth";
  // Deep maps too: {nil: {nil: ...}}.
  std::string deepMaps;
  for (int i = 0; i < 100000; ++i) deepMaps += bytes({0x81, 0xc0});
  protocolErrorOf(deepMaps);
}

TEST(CodecHostileTest, DepthLimitIsExact) {
  DecodeLimits limits;
  limits.maxDepth = 5;
  const auto nested = [](int depth) {
    return std::string(static_cast<size_t>(depth), '\x91') + bytes({0x01});
  };
  auto ok = decodeValue(nested(5), limits);
  ASSERT_TRUE(ok.isOk()) << ok.status();
  EXPECT_EQ(ok.value().toJson(), "[[[[[1]]]]]");
  protocolErrorOf(nested(6), limits);

  limits.maxDepth = 0;
  EXPECT_EQ(decodeValue(bytes({0x01}), limits).value(), Value(1));
  protocolErrorOf(bytes({0x90}), limits);

  // The default limit of 64.
  EXPECT_TRUE(decodeValue(nested(64), {}).isOk());
  protocolErrorOf(nested(65));
}

TEST(CodecHostileTest, OversizeMessageIsRejectedBeforeParsing) {
  DecodeLimits limits;
  limits.maxMessageBytes = 10;
  EXPECT_TRUE(decodeValue(encodeValue(Value(std::string(8, 'x'))), limits).isOk());
  // Malformed bytes over the limit: the size check comes first.
  EXPECT_EQ(protocolErrorOf(std::string(11, '\xc1'), limits),
            "message of 11 bytes exceeds the limit of 10 bytes");
  EXPECT_EQ(protocolErrorOf(encodeValue(Value(std::string(10, 'x'))), limits),
            "message of 11 bytes exceeds the limit of 10 bytes");
}

TEST(CodecHostileTest, ElementLimits) {
  DecodeLimits limits;
  limits.maxString = 10;
  limits.maxBinary = 4;
  limits.maxArray = 3;
  limits.maxMap = 2;
  EXPECT_TRUE(decodeValue(encodeValue(Value(std::string(10, 'x'))), limits).isOk());
  EXPECT_EQ(protocolErrorOf(encodeValue(Value(std::string(11, 'x'))), limits),
            "MessagePack string longer than the limit of 10 bytes");
  EXPECT_TRUE(decodeValue(encodeValue(Value(Binary{"1234"})), limits).isOk());
  EXPECT_EQ(protocolErrorOf(encodeValue(Value(Binary{"12345"})), limits),
            "MessagePack binary longer than the limit of 4 bytes");
  EXPECT_TRUE(decodeValue(encodeValue(Value(Array{1, 2, 3})), limits).isOk());
  EXPECT_NE(protocolErrorOf(encodeValue(Value(Array{1, 2, 3, 4})), limits)
                .find("array longer than the limit of 3"),
            std::string::npos);
  const Value twoPairs(Map{{Value(1), Value(1)}, {Value(2), Value(2)}});
  EXPECT_TRUE(decodeValue(encodeValue(twoPairs), limits).isOk());
  Map threePairs = twoPairs.asMap();
  threePairs.emplace_back(Value(3), Value(3));
  EXPECT_NE(protocolErrorOf(encodeValue(Value(threePairs)), limits)
                .find("map larger than the limit of 2"),
            std::string::npos);
  // A nested string over the limit is caught too.
  protocolErrorOf(encodeValue(Value(Array{Value(Map{{Value("k"), Value(std::string(11, 'y'))}})})),
                  limits);
}

// An envelope keeps a small top-level array's items inline; every other top level is whole,
// and both decode as decodeValue does.
TEST(CodecTest, EnvelopeKeepsSmallTopLevelArraysInline) {
  using detail::decodeEnvelope;
  using detail::Envelope;
  const Array five{0, 7, "echo", Array{Value(std::string(40, 'p'))}, Value(Map{})};
  Envelope small;
  ASSERT_TRUE(decodeEnvelope(encodeValue(Value(five)), DecodeLimits{}, small).isOk());
  EXPECT_TRUE(small.isArray());
  EXPECT_EQ(Array(small.items().begin(), small.items().end()), five);
  EXPECT_TRUE(small.whole().isNil());  // nothing was built there

  Array six = five;
  six.emplace_back("extra");
  Envelope large;
  ASSERT_TRUE(decodeEnvelope(encodeValue(Value(six)), DecodeLimits{}, large).isOk());
  EXPECT_EQ(large.whole(), Value(six));
  EXPECT_EQ(Array(large.items().begin(), large.items().end()), six);

  Envelope empty;
  ASSERT_TRUE(decodeEnvelope(encodeValue(Value(Array{})), DecodeLimits{}, empty).isOk());
  EXPECT_TRUE(empty.isArray());
  EXPECT_TRUE(empty.items().empty());

  Envelope scalar;
  ASSERT_TRUE(decodeEnvelope(encodeValue(Value("text")), DecodeLimits{}, scalar).isOk());
  EXPECT_FALSE(scalar.isArray());
  EXPECT_TRUE(scalar.items().empty());
  EXPECT_EQ(scalar.whole(), Value("text"));
}

TEST(CodecHostileTest, EnvelopeChecksTheLimitsOfItsInlineArray) {
  using detail::decodeEnvelope;
  using detail::Envelope;
  const auto errorOf = [](const Value& value, const DecodeLimits& limits) {
    Envelope envelope;
    Status status = decodeEnvelope(encodeValue(value), limits, envelope);
    EXPECT_EQ(status.code(), StatusCode::kProtocolError) << status;
    EXPECT_EQ(decodeValue(encodeValue(value), limits).status(), status);  // the same error
    return status.message();
  };
  DecodeLimits limits;
  limits.maxArray = 3;
  EXPECT_NE(errorOf(Value(Array{1, 2, 3, 4}), limits).find("array longer than the limit of 3"),
            std::string::npos);
  limits = DecodeLimits{};
  limits.maxDepth = 1;
  EXPECT_EQ(errorOf(Value(Array{1, Array{2}}), limits),
            "MessagePack nesting deeper than the limit of 1");
  limits.maxDepth = 0;
  EXPECT_EQ(errorOf(Value(Array{1}), limits), "MessagePack nesting deeper than the limit of 0");
  Envelope truncated;
  const std::string bytes = encodeValue(Value(Array{1, "two", 3}));
  EXPECT_EQ(decodeEnvelope(bytes.substr(0, bytes.size() - 1), DecodeLimits{}, truncated).message(),
            "truncated MessagePack data");
}

// A decode after a failed one starts afresh.
TEST(CodecHostileTest, ADecodeAfterAFailedOneStartsAfresh) {
  DecodeLimits limits;
  limits.maxString = 4;
  const Value nested(Array{Value(Array{1, Value(Map{{Value("k"), Value(Array{2, 3})}})}), 4});
  const std::string good = encodeValue(nested);
  for (const std::string& bad :
       {good.substr(0, good.size() - 3),                         // truncated mid-container
        encodeValue(Value(Array{Value(Array{Value("too long")})})),  // stopped by the builder
        bytes({0x92, 0x01, 0xc1})}) {                                // malformed mid-array
    SCOPED_TRACE(bad.size());
    protocolErrorOf(bad, limits);
    Result<Value> decoded = decodeValue(good, limits);
    ASSERT_TRUE(decoded.isOk()) << decoded.status();
    EXPECT_EQ(*decoded, nested);
  }
}

TEST(CodecHostileTest, TrailingBytes) {
  EXPECT_EQ(protocolErrorOf(bytes({0x01, 0x02})), "1 trailing bytes after the MessagePack object");
  EXPECT_EQ(protocolErrorOf(encodeValue(Value(Array{1})) + bytes({0xc0, 0xc0, 0xc0})),
            "3 trailing bytes after the MessagePack object");
}

TEST(CodecHostileTest, ExtTypesAreUnsupported) {
  // fixext1 type 1, and an ext inside an array.
  EXPECT_NE(protocolErrorOf(bytes({0xd4, 0x01, 0x00})).find("ext type 1 is not supported"),
            std::string::npos);
  EXPECT_NE(protocolErrorOf(bytes({0x92, 0x01, 0xd5, 0x7f, 0x00, 0x00})).find("ext type 127"),
            std::string::npos);
  // ext8 of type 1 with 3 data bytes, over a maxExt of 2 (which counts the type byte too).
  DecodeLimits limits;
  limits.maxExt = 2;
  EXPECT_EQ(protocolErrorOf(bytes({0xc7, 0x03, 0x01, 0xaa, 0xbb, 0xcc}), limits),
            "MessagePack ext longer than the limit of 2 bytes");
}

TEST(CodecHostileTest, ReservedByteIsMalformed) {
  EXPECT_EQ(protocolErrorOf(bytes({0xc1})), "malformed MessagePack data");
  EXPECT_EQ(protocolErrorOf(bytes({0x92, 0x01, 0xc1})), "malformed MessagePack data");
}

TEST(CodecHostileTest, RandomBytesNeverCrash) {
  std::mt19937 rng(12345);
  DecodeLimits limits;
  limits.maxArray = 64;
  limits.maxMap = 64;
  size_t decoded = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string input(rng() % 24, '\0');
    for (char& c : input) c = static_cast<char>(rng());
    auto r = decodeValue(input, limits);
    if (r.isOk()) {
      ++decoded;
      // Whatever decodes re-encodes to bytes that decode to the same Value (compared as
      // bytes, since NaN != NaN).
      const std::string encoded = encodeValue(r.value());
      auto again = decodeValue(encoded, {});
      ASSERT_TRUE(again.isOk()) << again.status();
      EXPECT_EQ(encodeValue(again.value()), encoded);
    } else {
      EXPECT_EQ(r.status().code(), StatusCode::kProtocolError) << r.status();
    }
  }
  EXPECT_GT(decoded, 0u);
}

}  // namespace
}  // namespace switchboard
