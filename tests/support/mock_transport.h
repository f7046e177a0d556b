// GoogleMock mocks of the Transport interfaces: MockTransport, MockListener, MockClientChannel
// and MockIncomingMessage. Header-only; for tests of code that drives a Transport.
#pragma once

#include <gmock/gmock.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "transports/transport.h"

namespace switchboard::testing {

// listen() and openChannel() return move-only Results, which have no default value: give every
// expected call an action, e.g.
//   EXPECT_CALL(transport, listen(_)).WillOnce([&](const Address&) {
//     return Result<std::unique_ptr<Listener>>(std::move(listener)); });
// Expect openChannel with both arguments, openChannel(_, _): the one-argument overload calls it
// with an empty LinkCallback.
class MockTransport : public Transport {
 public:
  MOCK_METHOD(Result<std::unique_ptr<Listener>>, listen, (const Address& address), (override));
  MOCK_METHOD(Result<std::unique_ptr<ClientChannel>>, openChannel,
              (ReplyCallback onReply, LinkCallback onLink), (override));
  using Transport::openChannel;
  MOCK_METHOD(Status, publish, (std::string_view topic, std::string bytes), (override));
  MOCK_METHOD(Result<std::unique_ptr<Listener>>, subscribe, (const Subscription& subscription),
              (override));
};

// By default poll() returns ok at once with nothing appended; a test that runs a receive loop
// on it should give poll an action that waits (until the deadline or an interrupt).
class MockListener : public Listener {
 public:
  MOCK_METHOD(Status, poll, (Deadline deadline, size_t maxBatch, std::vector<IncomingPtr>& out),
              (override));
  MOCK_METHOD(void, interrupt, (), (override));
  MOCK_METHOD(void, close, (), (override));
};

// By default send() returns ok.
class MockClientChannel : public ClientChannel {
 public:
  MOCK_METHOD(Status, send, (const Address& to, std::string bytes, Deadline deadline), (override));
};

// By default body() returns the `body` given to the constructor, peer() returns `peer`, reply()
// returns ok and acknowledge() does nothing. Override with EXPECT_CALL/ON_CALL as usual.
class MockIncomingMessage : public IncomingMessage {
 public:
  explicit MockIncomingMessage(std::string body = {}, std::string peer = "mock")
      : body_(std::move(body)), peer_(std::move(peer)) {
    ON_CALL(*this, body()).WillByDefault(::testing::Return(std::string_view(body_)));
    ON_CALL(*this, peer()).WillByDefault(::testing::Return(std::string_view(peer_)));
  }

  MOCK_METHOD(std::string_view, body, (), (const, override));
  MOCK_METHOD(Status, reply, (std::string bytes), (override));
  MOCK_METHOD(void, acknowledge, (), (override));
  MOCK_METHOD(std::string_view, peer, (), (const, override));
  MOCK_METHOD(Status, requeue, (), (override));

 private:
  const std::string body_;  // what body() returns by default; outlives every call
  const std::string peer_;  // what peer() returns by default
};

}  // namespace switchboard::testing
