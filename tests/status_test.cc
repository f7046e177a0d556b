// Status and Result<T>: codes and names, remote errors, value access and raising.
// Also Target validation and Version parsing, the other small vocabulary types.
#include <gtest/gtest.h>

#include <stdexcept>

#include "base/status.h"
#include "messaging/target.h"

namespace switchboard {
namespace {

TEST(StatusTest, OkIsCheapAndEmpty) {
  Status ok;
  EXPECT_TRUE(ok.isOk());
  EXPECT_EQ(ok.code(), StatusCode::kOk);
  EXPECT_EQ(ok.message(), "");
  EXPECT_EQ(ok.toString(), "Ok");
}

TEST(StatusTest, CodeNamesRoundTrip) {
  for (int c = 1; c <= static_cast<int>(StatusCode::kTransportError); ++c) {
    const auto code = static_cast<StatusCode>(c);
    EXPECT_EQ(statusCodeFromName(statusCodeName(code)), code) << statusCodeName(code);
  }
  EXPECT_EQ(statusCodeFromName("NoSuchThing"), StatusCode::kRemoteError);
  EXPECT_EQ(statusCodeName(static_cast<StatusCode>(999)), "Unknown");
}

TEST(StatusTest, RemoteErrorsCarryTypeAndDetails) {
  Status s = Status::remote("app::Quota", "over", "limit=3");
  EXPECT_EQ(s.code(), StatusCode::kRemoteError);
  EXPECT_EQ(s.remoteType(), "app::Quota");
  EXPECT_EQ(s.details(), "limit=3");
  EXPECT_EQ(s.toString(), "RemoteError (app::Quota): over");
  EXPECT_THROW(s.raise(), StatusError);
  Status rebuilt = s.withException(std::make_exception_ptr(std::out_of_range("over")));
  EXPECT_THROW(rebuilt.raise(), std::out_of_range);
}

TEST(ResultTest, HoldsValueOrError) {
  Result<int> good = 5;
  EXPECT_TRUE(good.isOk());
  EXPECT_EQ(*good, 5);
  EXPECT_TRUE(good.status().isOk());
  Result<int> bad = Status(StatusCode::kTimeout, "late");
  EXPECT_FALSE(bad.isOk());
  EXPECT_EQ(bad.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(bad.valueOr(7), 7);
  try {
    (void)bad.value();
    FAIL() << "value() of an error must throw";
  } catch (const StatusError& e) {
    EXPECT_EQ(e.status().code(), StatusCode::kTimeout);
  }
  // A Result built from an ok Status is a programming error reported as kInvalidState.
  Result<int> confused = Status::ok();
  EXPECT_EQ(confused.status().code(), StatusCode::kInvalidState);
}

TEST(VersionTest, ParsesAndChecksCompatibility) {
  EXPECT_EQ(Version::parse("1.3").value(), (Version{1, 3}));
  EXPECT_EQ(Version::parse("2").value(), (Version{2, 0}));
  for (const char* bad : {"", "a", "1.", "1.x", "-1.0", "1.2.3", ".1"}) {
    EXPECT_EQ(Version::parse(bad).status().code(), StatusCode::kBadArguments) << bad;
  }
  EXPECT_TRUE((Version{1, 3}).canServe(Version{1, 2}));
  EXPECT_TRUE((Version{1, 3}).canServe(Version{1, 3}));
  EXPECT_FALSE((Version{1, 3}).canServe(Version{1, 4}));
  EXPECT_FALSE((Version{2, 0}).canServe(Version{1, 0}));
}

TEST(TargetTest, ServerAndClientRules) {
  Target t;
  EXPECT_EQ(t.validateForServer().code(), StatusCode::kInvalidTarget);
  EXPECT_EQ(t.validateForClient(false).code(), StatusCode::kInvalidTarget);
  t.topic = "compute";
  EXPECT_EQ(t.validateForServer().code(), StatusCode::kInvalidTarget);
  EXPECT_TRUE(t.validateForClient(true).isOk());
  t.server = "host1";
  EXPECT_TRUE(t.validateForServer().isOk());
  t.fanout = true;
  EXPECT_EQ(t.validateForServer().code(), StatusCode::kInvalidTarget);
  EXPECT_EQ(t.validateForClient(true).code(), StatusCode::kInvalidTarget);
  EXPECT_TRUE(t.validateForClient(false).isOk());
  EXPECT_EQ(t.address(), (Address{"", "compute", "host1", true}));
}

}  // namespace
}  // namespace switchboard
