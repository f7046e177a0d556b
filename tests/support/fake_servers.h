// FakeServers: a Connector whose servers the test plays by hand. It records every connection
// attempt and every message sent, and lets the test answer, refuse, or stay silent, through the
// callbacks the network gave. Nothing is answered inside send(): like a real transport, replies
// come later, from the test's thread. Header-only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "messaging/detail/wire.h"
#include "messaging/network.h"

namespace switchboard::testing {

class FakeServers final : public Connector {
 public:
  struct Sent {
    int connection;  // which attempt of that server it went on (1 for the first)
    Address to;
    detail::WireMessage message;
    Deadline deadline;  // by which the channel was to hand it to the socket
  };

  Result<std::unique_ptr<ClientChannel>> open(const std::string& server, ReplyCallback onReply,
                                              LinkCallback onLink) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Server& s = servers_[server];
    s.connections.push_back(Connection{std::move(onReply), std::move(onLink), true});
    ++liveChannels_;
    return std::unique_ptr<ClientChannel>(
        new Channel(*this, server, static_cast<int>(s.connections.size())));
  }

  // Connection attempts made to `server`.
  int attempts(const std::string& server) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = servers_.find(server);
    return it == servers_.end() ? 0 : static_cast<int>(it->second.connections.size());
  }
  // Channels not yet destroyed, over every server.
  int liveChannels() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return liveChannels_;
  }
  std::vector<Sent> sent(const std::string& server) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = servers_.find(server);
    return it == servers_.end() ? std::vector<Sent>{} : it->second.sent;
  }
  // The requests sent to `server`, handshakes and pings left out.
  std::vector<detail::RequestMessage> calls(const std::string& server) const {
    std::vector<detail::RequestMessage> out;
    for (const Sent& s : sent(server)) {
      if (auto* r = std::get_if<detail::RequestMessage>(&s.message); r && r->method != "_health") {
        out.push_back(*r);
      }
    }
    return out;
  }
  // `_health` requests sent to `server` and not answered through answerHealth yet.
  std::vector<detail::RequestMessage> unansweredHealth(const std::string& server) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<detail::RequestMessage> out;
    auto it = servers_.find(server);
    if (it == servers_.end()) return out;
    for (const Sent& s : it->second.sent) {
      auto* r = std::get_if<detail::RequestMessage>(&s.message);
      if (r && r->method == "_health" && it->second.answered.count(r->msgid) == 0) out.push_back(*r);
    }
    return out;
  }

  // Answers every pending `_health` request of `server`'s latest connection with `state`.
  void answerHealth(const std::string& server, const std::string& state = "serving") {
    answerHealthWith(server, Status::ok(), Value(state));
  }
  // Answers them with the error `why`, as a server refusing what it polls does.
  void refuseHealth(const std::string& server, const Status& why) {
    answerHealthWith(server, why, Value());
  }
  // Delivers `message` through the reply callback of `server`'s connection `connection` (0: the
  // latest), as its transport would.
  void reply(const std::string& server, const detail::WireMessage& message, int connection = 0) {
    replyBytes(server, detail::encodeMessage(message), connection);
  }
  void replyBytes(const std::string& server, std::string bytes, int connection = 0) {
    ReplyCallback callback;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      Server& s = servers_[server];
      callback = s.connections.at(connection == 0 ? s.connections.size() - 1 : connection - 1).onReply;
    }
    const std::string_view reply = bytes;
    callback(std::span<const std::string_view>(&reply, 1));
  }
  void link(const std::string& server, LinkEvent event, int connection = 0) {
    LinkCallback callback;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      Server& s = servers_[server];
      callback = s.connections.at(connection == 0 ? s.connections.size() - 1 : connection - 1).onLink;
    }
    callback(event, "fake");
  }

 private:
  void answerHealthWith(const std::string& server, const Status& error, const Value& result) {
    for (const detail::RequestMessage& r : unansweredHealth(server)) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        servers_[server].answered.insert(r.msgid);
      }
      reply(server, detail::ResponseMessage{r.msgid, error, result});
    }
  }

  struct Connection {
    ReplyCallback onReply;
    LinkCallback onLink;
    bool open = false;
  };
  struct Server {
    std::vector<Connection> connections;
    std::vector<Sent> sent;
    std::set<uint32_t> answered;  // `_health` ids answered by answerHealth
  };

  class Channel final : public ClientChannel {
   public:
    Channel(FakeServers& owner, std::string server, int connection)
        : owner_(owner), server_(std::move(server)), connection_(connection) {}
    ~Channel() override {
      std::lock_guard<std::mutex> lock(owner_.mutex_);
      owner_.servers_[server_].connections[connection_ - 1].open = false;
      --owner_.liveChannels_;
    }
    Status send(const Address& to, std::string bytes, Deadline deadline) override {
      detail::DecodedMessage decoded = detail::decodeMessage(bytes);
      if (!decoded) return decoded.status();
      std::lock_guard<std::mutex> lock(owner_.mutex_);
      owner_.servers_[server_].sent.push_back(Sent{connection_, to, decoded.message(), deadline});
      return Status::ok();
    }

   private:
    FakeServers& owner_;
    const std::string server_;
    const int connection_;
  };

  mutable std::mutex mutex_;
  std::map<std::string, Server> servers_;  // guarded by mutex_
  int liveChannels_ = 0;                   // guarded by mutex_
};

}  // namespace switchboard::testing
