// Tests of the wire envelope: exact MessagePack-RPC bytes, round trips of every message kind
// with and without the extension map, error objects, and every shape violation decoding rejects.
#include "messaging/detail/wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <variant>

#include "base/status.h"
#include "messaging/detail/codec.h"
#include "messaging/value.h"

namespace switchboard::detail {
namespace {

std::string bytes(std::initializer_list<unsigned> list) {
  std::string out;
  for (unsigned b : list) out += static_cast<char>(b);
  return out;
}

std::string encoded(Array envelope) { return encodeValue(Value(std::move(envelope))); }

// Decodes `input`, which must be valid, and returns the message.
WireMessage decodeOk(std::string_view input, const DecodeLimits& limits = DecodeLimits{}) {
  DecodedMessage decoded = decodeMessage(input, limits);
  EXPECT_TRUE(decoded.isOk()) << decoded.status();
  if (!decoded.isOk()) return CancelMessage{0xdeadbeef};
  return decoded.message();
}

WireMessage roundTrip(const WireMessage& message) { return decodeOk(encodeMessage(message)); }

// Decodes `input`, which must be rejected with kProtocolError, and returns the error.
DecodeError decodeFails(std::string_view input, const DecodeLimits& limits = DecodeLimits{}) {
  DecodedMessage decoded = decodeMessage(input, limits);
  EXPECT_FALSE(decoded.isOk());
  if (decoded.isOk()) return DecodeError{Status::ok(), std::nullopt};
  EXPECT_EQ(decoded.error().status.code(), StatusCode::kProtocolError) << decoded.status();
  EXPECT_EQ(decoded.status(), decoded.error().status);
  return decoded.error();
}

Extension fullExtension() {
  Extension ext;
  ext.ns = "billing";
  ext.version = "2.1";
  ext.context = Value(Map{{Value("user"), Value("ann")}, {Value("trace"), Value(42)}});
  ext.budgetMs = 1500;
  ext.callMonitorMs = 200;
  return ext;
}

// ---- Exact bytes ---------------------------------------------------------------------------

TEST(WireBytesTest, RequestIsPlainMessagePackRpc) {
  const std::string expected =
      bytes({0x94, 0x00, 0x01, 0xa4, 0x65, 0x63, 0x68, 0x6f, 0x91, 0xa2, 0x68, 0x69});
  EXPECT_EQ(encodeMessage(RequestMessage{1, "echo", {Value("hi")}, {}}), expected);
  EXPECT_EQ(decodeOk(expected), WireMessage(RequestMessage{1, "echo", {Value("hi")}, {}}));
}

TEST(WireBytesTest, ResponseIsPlainMessagePackRpc) {
  const std::string expected = bytes({0x94, 0x01, 0x01, 0xc0, 0xa2, 0x68, 0x69});
  EXPECT_EQ(encodeMessage(ResponseMessage{1, Status::ok(), Value("hi")}), expected);
  const WireMessage decoded = decodeOk(expected);
  ASSERT_TRUE(std::holds_alternative<ResponseMessage>(decoded));
  EXPECT_TRUE(std::get<ResponseMessage>(decoded).error.isOk());
  EXPECT_EQ(std::get<ResponseMessage>(decoded).result, Value("hi"));
}

TEST(WireBytesTest, NotificationHeartbeatAndCancel) {
  EXPECT_EQ(encodeMessage(NotificationMessage{"log", {}, {}}),
            bytes({0x93, 0x02, 0xa3, 0x6c, 0x6f, 0x67, 0x90}));
  EXPECT_EQ(encodeMessage(HeartbeatMessage{7}), bytes({0x92, 0x03, 0x07}));
  EXPECT_EQ(encodeMessage(CancelMessage{UINT32_MAX}),
            bytes({0x92, 0x04, 0xce, 0xff, 0xff, 0xff, 0xff}));
}

TEST(WireBytesTest, ExtensionIsWrittenOnlyWhenNotEmpty) {
  EXPECT_TRUE(Extension{}.empty());
  RequestMessage request{3, "m", {}, {}};
  EXPECT_EQ(static_cast<unsigned char>(encodeMessage(request)[0]), 0x94);

  request.ext.budgetMs = 0;
  EXPECT_FALSE(request.ext.empty());
  // [0, 3, "m", [], {"dl": 0, "pv": 1}]
  EXPECT_EQ(encodeMessage(request), bytes({0x95, 0x00, 0x03, 0xa1, 0x6d, 0x90, 0x82, 0xa2, 0x64,
                                           0x6c, 0x00, 0xa2, 0x70, 0x76, 0x01}));

  NotificationMessage notification{"n", {}, {}};
  notification.ext.protocolVersion = 2;
  EXPECT_FALSE(notification.ext.empty());
  // [2, "n", [], {"pv": 2}]
  EXPECT_EQ(encodeMessage(notification),
            bytes({0x94, 0x02, 0xa1, 0x6e, 0x90, 0x81, 0xa2, 0x70, 0x76, 0x02}));
}

TEST(WireBytesTest, EncodeAppends) {
  std::string out = "xy";
  encodeMessage(HeartbeatMessage{1}, out);
  encodeMessage(CancelMessage{2}, out);
  EXPECT_EQ(out, "xy" + bytes({0x92, 0x03, 0x01, 0x92, 0x04, 0x02}));
}

// ---- Round trips ---------------------------------------------------------------------------

TEST(WireRoundTripTest, Requests) {
  const RequestMessage plain{0, "add", {Value(1), Value(2.5), Value(Array{}), Value()}, {}};
  EXPECT_EQ(roundTrip(plain), WireMessage(plain));

  RequestMessage withExt{UINT32_MAX, "ns.method", {Value(Binary{"\x01\x02"})}, fullExtension()};
  EXPECT_EQ(roundTrip(withExt), WireMessage(withExt));

  RequestMessage onlyVersion{5, "m", {}, {}};
  onlyVersion.ext.version = "1.0";
  EXPECT_EQ(roundTrip(onlyVersion), WireMessage(onlyVersion));
}

TEST(WireRoundTripTest, Responses) {
  const ResponseMessage ok{9, Status::ok(), Value(Map{{Value("sum"), Value(3)}})};
  EXPECT_EQ(roundTrip(ok), WireMessage(ok));
  const ResponseMessage nilResult{10, Status::ok(), Value()};
  EXPECT_EQ(roundTrip(nilResult), WireMessage(nilResult));

  const ResponseMessage timeout{11, Status(StatusCode::kTimeout, "took too long"), Value()};
  const WireMessage back = roundTrip(timeout);
  EXPECT_EQ(back, WireMessage(timeout));
  EXPECT_EQ(std::get<ResponseMessage>(back).error.code(), StatusCode::kTimeout);
  EXPECT_EQ(std::get<ResponseMessage>(back).error.message(), "took too long");
}

TEST(WireRoundTripTest, EveryStatusCodeSurvives) {
  for (int c = static_cast<int>(StatusCode::kTimeout);
       c <= static_cast<int>(StatusCode::kTransportError); ++c) {
    const auto code = static_cast<StatusCode>(c);
    SCOPED_TRACE(std::string(statusCodeName(code)));
    const WireMessage back = roundTrip(ResponseMessage{1, Status(code, "m"), Value()});
    EXPECT_EQ(std::get<ResponseMessage>(back).error.code(), code);
    EXPECT_EQ(std::get<ResponseMessage>(back).error.message(), "m");
  }
}

TEST(WireRoundTripTest, RemoteErrorKeepsTypeAndDetails) {
  const ResponseMessage remote{12, Status::remote("ValueError", "bad value", "trace..."), Value()};
  const std::string wire = encodeMessage(remote);
  const Status error = std::get<ResponseMessage>(decodeOk(wire)).error;
  EXPECT_EQ(error.code(), StatusCode::kRemoteError);
  EXPECT_EQ(error.remoteType(), "ValueError");
  EXPECT_EQ(error.message(), "bad value");
  EXPECT_EQ(error.details(), "trace...");

  // The error object as a plain peer sees it.
  const Value envelope = decodeValue(wire, {}).value();
  const Value& object = envelope.asArray()[2];
  EXPECT_EQ(
      object.toJson(),
      R"({"code":"RemoteError","message":"bad value","type":"ValueError","details":"trace..."})");
  EXPECT_EQ(envelope.asArray()[3], Value());
}

TEST(WireRoundTripTest, ErrorObjectOmitsEmptyTypeAndDetails) {
  const std::string wire =
      encodeMessage(ResponseMessage{1, Status(StatusCode::kNoSuchMethod, "no 'x'"), Value(5)});
  const Value envelope = decodeValue(wire, {}).value();
  EXPECT_EQ(envelope.asArray()[2].toJson(), R"({"code":"NoSuchMethod","message":"no 'x'"})");
  EXPECT_EQ(envelope.asArray()[3], Value()) << "an error response carries a nil result";
}

TEST(WireRoundTripTest, ARefusalSaysSoAndOnlyATrueFlagCounts) {
  const Status refused = Status(StatusCode::kShuttingDown, "draining").asRefused();
  const std::string wire = encodeMessage(ResponseMessage{3, refused, Value()});
  EXPECT_EQ(decodeValue(wire, {}).value().asArray()[2].toJson(),
            R"({"code":"ShuttingDown","message":"draining","refused":true})");
  const Status back = std::get<ResponseMessage>(decodeOk(wire)).error;
  EXPECT_EQ(back.code(), StatusCode::kShuttingDown);
  EXPECT_TRUE(back.refused());
  EXPECT_FALSE(Status(StatusCode::kShuttingDown, "x").refused());
  for (const Value& flag : {Value(false), Value(1), Value("true")}) {
    const std::string foreign = encoded(
        {Value(1), Value(3),
         Value(Map{{Value("code"), Value("ShuttingDown")}, {Value("message"), Value("m")},
                   {Value("refused"), flag}}),
         Value()});
    EXPECT_FALSE(std::get<ResponseMessage>(decodeOk(foreign)).error.refused()) << flag.toJson();
  }
}

TEST(WireRoundTripTest, Notifications) {
  const NotificationMessage plain{"log", {Value("line")}, {}};
  EXPECT_EQ(roundTrip(plain), WireMessage(plain));
  const NotificationMessage withExt{"log", {}, fullExtension()};
  EXPECT_EQ(roundTrip(withExt), WireMessage(withExt));
}

TEST(WireRoundTripTest, HeartbeatAndCancel) {
  EXPECT_EQ(roundTrip(HeartbeatMessage{0}), WireMessage(HeartbeatMessage{0}));
  EXPECT_EQ(roundTrip(HeartbeatMessage{77}), WireMessage(HeartbeatMessage{77}));
  EXPECT_EQ(roundTrip(CancelMessage{UINT32_MAX}), WireMessage(CancelMessage{UINT32_MAX}));
}

// ---- Errors from plain MessagePack-RPC peers -----------------------------------------------

Status responseError(Value error) {
  const WireMessage m = decodeOk(encoded({Value(1), Value(4), std::move(error), Value()}));
  return std::get<ResponseMessage>(m).error;
}

TEST(WireForeignErrorTest, StringError) {
  const Status s = responseError(Value("something broke"));
  EXPECT_EQ(s.code(), StatusCode::kRemoteError);
  EXPECT_EQ(s.message(), "something broke");
  EXPECT_EQ(s.remoteType(), "");
}

TEST(WireForeignErrorTest, OtherValuesBecomeTheirJson) {
  EXPECT_EQ(responseError(Value(42)).message(), "42");
  EXPECT_EQ(responseError(Value(Array{Value(1), Value("x")})).message(), R"([1,"x"])");
  EXPECT_EQ(responseError(Value(false)).code(), StatusCode::kRemoteError);
  const Status noCode = responseError(Value(Map{{Value("message"), Value("m")}}));
  EXPECT_EQ(noCode.code(), StatusCode::kRemoteError);
  EXPECT_EQ(noCode.message(), R"({"message":"m"})");
  const Status badMessage =
      responseError(Value(Map{{Value("code"), Value("Timeout")}, {Value("message"), Value(1)}}));
  EXPECT_EQ(badMessage.code(), StatusCode::kRemoteError);
  EXPECT_EQ(badMessage.message(), R"({"code":"Timeout","message":1})");
}

TEST(WireForeignErrorTest, KnownAndUnknownCodeNames) {
  const Status known =
      responseError(Value(Map{{Value("code"), Value("Overloaded")}, {Value("message"), "busy"}}));
  EXPECT_EQ(known.code(), StatusCode::kOverloaded);
  EXPECT_EQ(known.message(), "busy");

  const Status noMessage = responseError(Value(Map{{Value("code"), Value("Cancelled")}}));
  EXPECT_EQ(noMessage.code(), StatusCode::kCancelled);
  EXPECT_EQ(noMessage.message(), "");

  const Status unknown = responseError(Value(Map{{Value("code"), Value("QuotaExceeded")},
                                                 {Value("message"), Value("over")},
                                                 {Value("type"), Value("QuotaError")}}));
  EXPECT_EQ(unknown.code(), StatusCode::kRemoteError);
  EXPECT_EQ(unknown.message(), "QuotaExceeded: over");
  EXPECT_EQ(unknown.remoteType(), "QuotaError");
}

// ---- Shape violations ----------------------------------------------------------------------

TEST(WireShapeTest, HostileBytes) {
  EXPECT_FALSE(decodeFails("").msgid);
  const std::string request = encodeMessage(RequestMessage{1, "echo", {Value("hi")}, {}});
  for (size_t n = 0; n < request.size(); ++n) {
    SCOPED_TRACE(n);
    EXPECT_FALSE(decodeFails(std::string_view(request).substr(0, n)).msgid);
  }
  EXPECT_EQ(decodeFails(request + bytes({0xc0})).status.message(),
            "1 trailing bytes after the MessagePack object");
  decodeFails(bytes({0xdd, 0xff, 0xff, 0xff, 0xff}));
  decodeFails(std::string(100000, '\x91'));
  DecodeLimits small;
  small.maxMessageBytes = 8;
  EXPECT_EQ(decodeFails(request, small).status.message(),
            "message of 12 bytes exceeds the limit of 8 bytes");
}

TEST(WireShapeTest, TopLevel) {
  EXPECT_EQ(decodeFails(encodeValue(Value("x"))).status.message(),
            "message must be an array, got string");
  EXPECT_EQ(decodeFails(encoded({})).status.message(), "message must not be an empty array");
  EXPECT_EQ(decodeFails(encoded({Value("0"), Value(1)})).status.message(),
            "message kind must be an integer, got string");
  EXPECT_EQ(decodeFails(encoded({Value(7), Value(1)})).status.message(), "unknown message kind 7");
  EXPECT_EQ(decodeFails(encoded({Value(-1), Value(1)})).status.message(),
            "unknown message kind -1");
  EXPECT_EQ(decodeFails(encoded({Value(UINT64_MAX), Value(1)})).status.message(),
            "unknown message kind 18446744073709551615");
  EXPECT_EQ(decodeFails(encoded({Value(0.0), Value(1)})).status.message(),
            "message kind must be an integer, got double");
}

TEST(WireShapeTest, RequestArity) {
  const DecodeError three = decodeFails(encoded({Value(0), Value(1), Value("m")}));
  EXPECT_EQ(three.status.message(), "request must have 4 or 5 elements, got 3");
  EXPECT_EQ(three.msgid, 1u);

  const DecodeError six =
      decodeFails(encoded({Value(0), Value(2), Value("m"), Value(Array{}), Value(Map{}), Value()}));
  EXPECT_EQ(six.status.message(), "request must have 4 or 5 elements, got 6");
  EXPECT_EQ(six.msgid, 2u);

  EXPECT_FALSE(decodeFails(encoded({Value(0)})).msgid) << "no msgid to read";
}

TEST(WireShapeTest, RequestMsgid) {
  for (const Value& bad :
       {Value("1"), Value(-1), Value(uint64_t{1} << 32), Value(1.0), Value(), Value(UINT64_MAX)}) {
    SCOPED_TRACE(bad.toJson());
    const DecodeError e = decodeFails(encoded({Value(0), bad, Value("m"), Value(Array{})}));
    EXPECT_EQ(e.status.message(), "request msgid must be an unsigned 32-bit integer");
    EXPECT_FALSE(e.msgid);
  }
  const WireMessage max =
      decodeOk(encoded({Value(0), Value(UINT32_MAX), Value("m"), Value(Array{})}));
  EXPECT_EQ(std::get<RequestMessage>(max).msgid, UINT32_MAX);
}

TEST(WireShapeTest, RequestMethod) {
  const DecodeError notString =
      decodeFails(encoded({Value(0), Value(3), Value(5), Value(Array{})}));
  EXPECT_EQ(notString.status.message(), "request method must be a string, got integer");
  EXPECT_EQ(notString.msgid, 3u);

  const DecodeError empty = decodeFails(encoded({Value(0), Value(4), Value(""), Value(Array{})}));
  EXPECT_EQ(empty.status.message(), "request method must not be empty");
  EXPECT_EQ(empty.msgid, 4u);

  const DecodeError huge =
      decodeFails(encoded({Value(0), Value(5), Value(std::string(1 << 20, 'm')), Value(Array{})}));
  EXPECT_EQ(huge.status.message(),
            "request method name of 1048576 bytes exceeds the limit of 256 bytes");
  EXPECT_EQ(huge.msgid, 5u);

  DecodeLimits limits;
  limits.maxMethodName = 4;
  EXPECT_TRUE(
      decodeMessage(encoded({Value(0), Value(6), Value("abcd"), Value(Array{})}), limits).isOk());
  EXPECT_EQ(
      decodeFails(encoded({Value(0), Value(6), Value("abcde"), Value(Array{})}), limits).msgid, 6u);
}

TEST(WireShapeTest, RequestParams) {
  const DecodeError e = decodeFails(encoded({Value(0), Value(8), Value("m"), Value(Map{})}));
  EXPECT_EQ(e.status.message(), "request params must be an array, got map");
  EXPECT_EQ(e.msgid, 8u);
  EXPECT_EQ(decodeFails(encoded({Value(0), Value(8), Value("m"), Value()})).msgid, 8u);
}

TEST(WireShapeTest, RequestExtension) {
  const auto withExt = [](Value ext) {
    return encoded({Value(0), Value(9), Value("m"), Value(Array{}), std::move(ext)});
  };
  const struct {
    Value ext;
    std::string message;
  } cases[] = {
      {Value(Array{}), "request ext must be a map, got array"},
      {Value(), "request ext must be a map, got nil"},
      {Value(Map{{Value("ns"), Value(1)}}), R"(request ext "ns" must be a string, got integer)"},
      {Value(Map{{Value("v"), Value(1.0)}}), R"(request ext "v" must be a string, got double)"},
      {Value(Map{{Value("ctx"), Value("x")}}),
       R"(request ext "ctx" must be a map or nil, got string)"},
      {Value(Map{{Value("dl"), Value("5")}}),
       R"(request ext "dl" must be an unsigned integer, got string)"},
      {Value(Map{{Value("dl"), Value(-5)}}),
       R"(request ext "dl" must be an unsigned integer, got integer)"},
      {Value(Map{{Value("cm"), Value(Array{})}}),
       R"(request ext "cm" must be an unsigned integer, got array)"},
      {Value(Map{{Value("pv"), Value(true)}}),
       R"(request ext "pv" must be an unsigned integer, got bool)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.ext.toJson());
    const DecodeError e = decodeFails(withExt(c.ext));
    EXPECT_EQ(e.status.message(), c.message);
    EXPECT_EQ(e.msgid, 9u);
  }
}

TEST(WireShapeTest, ExtensionUnknownKeysAreIgnored) {
  const WireMessage m = decodeOk(encoded({Value(0), Value(9), Value("m"), Value(Array{}),
                                          Value(Map{{Value("future"), Value(Array{Value(1)})},
                                                    {Value(7), Value("non-string key")},
                                                    {Value("ctx"), Value()},
                                                    {Value("dl"), Value(UINT64_MAX)},
                                                    {Value("pv"), Value(3)}})}));
  const Extension& ext = std::get<RequestMessage>(m).ext;
  EXPECT_TRUE(ext.context.isNil());
  EXPECT_EQ(ext.budgetMs, UINT64_MAX);
  EXPECT_FALSE(ext.callMonitorMs);
  EXPECT_EQ(ext.protocolVersion, 3u);
  EXPECT_TRUE(ext.ns.empty());

  // An empty map is an empty extension.
  EXPECT_TRUE(std::get<RequestMessage>(
                  decodeOk(encoded({Value(0), Value(1), Value("m"), Value(Array{}), Value(Map{})})))
                  .ext.empty());
}

// Keys that differ from a known one by a byte, a case or a length are unknown; a key that
// repeats counts with its first value (a bad later one is not looked at).
TEST(WireShapeTest, ExtensionKeysMatchWholeAndTheFirstOfARepeatedKeyCounts) {
  Map ext;
  for (const char* nearMiss :
       {"n", "s", "V", "vv", "nS", "ds", "dl ", "cn", "pw", "ct", "ctxx", "ctX", "Ns"}) {
    ext.emplace_back(Value(nearMiss), Value(Array{}));
  }
  ext.emplace_back(Value("ns"), Value("first"));
  ext.emplace_back(Value("ns"), Value(1));
  ext.emplace_back(Value("v"), Value("1.2"));
  ext.emplace_back(Value("v"), Value("9.9"));
  ext.emplace_back(Value("cm"), Value(250));
  ext.emplace_back(Value("cm"), Value("later"));
  const WireMessage m =
      decodeOk(encoded({Value(0), Value(9), Value("m"), Value(Array{}), Value(std::move(ext))}));
  const Extension& decoded = std::get<RequestMessage>(m).ext;
  EXPECT_EQ(decoded.ns, "first");
  EXPECT_EQ(decoded.version, "1.2");
  EXPECT_EQ(decoded.callMonitorMs, 250u);
  EXPECT_FALSE(decoded.budgetMs);
  EXPECT_TRUE(decoded.context.isNil());
  EXPECT_EQ(decoded.protocolVersion, kProtocolVersion);
}

TEST(WireShapeTest, Response) {
  const DecodeError three = decodeFails(encoded({Value(1), Value(1), Value()}));
  EXPECT_EQ(three.status.message(), "response must have 4 elements, got 3");
  EXPECT_FALSE(three.msgid) << "only requests report their msgid";
  EXPECT_EQ(decodeFails(encoded({Value(1), Value(1), Value(), Value(), Value()})).status.message(),
            "response must have 4 elements, got 5");
  const DecodeError negative = decodeFails(encoded({Value(1), Value(-1), Value(), Value()}));
  EXPECT_EQ(negative.status.message(), "response msgid must be an unsigned 32-bit integer");
  EXPECT_FALSE(negative.msgid);
}

TEST(WireShapeTest, Notification) {
  EXPECT_EQ(decodeFails(encoded({Value(2), Value("m")})).status.message(),
            "notification must have 3 or 4 elements, got 2");
  EXPECT_EQ(decodeFails(encoded({Value(2), Value("m"), Value(Array{}), Value(Map{}), Value()}))
                .status.message(),
            "notification must have 3 or 4 elements, got 5");
  EXPECT_EQ(decodeFails(encoded({Value(2), Value(1), Value(Array{})})).status.message(),
            "notification method must be a string, got integer");
  EXPECT_EQ(decodeFails(encoded({Value(2), Value(std::string(257, 'n')), Value(Array{})}))
                .status.message(),
            "notification method name of 257 bytes exceeds the limit of 256 bytes");
  EXPECT_EQ(decodeFails(encoded({Value(2), Value("m"), Value("p")})).status.message(),
            "notification params must be an array, got string");
  const DecodeError ext = decodeFails(
      encoded({Value(2), Value("m"), Value(Array{}), Value(Map{{Value("cm"), Value(-1)}})}));
  EXPECT_EQ(ext.status.message(),
            R"(notification ext "cm" must be an unsigned integer, got integer)");
  EXPECT_FALSE(ext.msgid);
}

TEST(WireShapeTest, HeartbeatAndCancel) {
  EXPECT_EQ(decodeFails(encoded({Value(3), Value(1), Value(2)})).status.message(),
            "heartbeat must have 2 elements, got 3");
  EXPECT_EQ(decodeFails(encoded({Value(3), Value(-2)})).status.message(),
            "heartbeat msgid must be an unsigned 32-bit integer");
  EXPECT_EQ(decodeFails(encoded({Value(4)})).status.message(),
            "cancel must have 2 elements, got 1");
  EXPECT_EQ(decodeFails(encoded({Value(4), Value(uint64_t{1} << 32)})).status.message(),
            "cancel msgid must be an unsigned 32-bit integer");
}

TEST(WireShapeTest, DecodedMessageAccessors) {
  DecodedMessage ok = decodeMessage(encodeMessage(CancelMessage{3}));
  ASSERT_TRUE(ok.isOk());
  EXPECT_TRUE(static_cast<bool>(ok));
  EXPECT_TRUE(ok.status().isOk());
  EXPECT_EQ(std::get<CancelMessage>(ok.message()).msgid, 3u);
  EXPECT_THROW(static_cast<void>(ok.error()), std::bad_variant_access);

  DecodedMessage bad = decodeMessage("");
  EXPECT_FALSE(bad.isOk());
  EXPECT_EQ(bad.status().code(), StatusCode::kProtocolError);
  EXPECT_THROW(static_cast<void>(bad.message()), std::bad_variant_access);
}

}  // namespace
}  // namespace switchboard::detail
