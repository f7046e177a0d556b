// The layering rule of docs/ARCHITECTURE.md, checked on the source tree: base/ includes nothing
// of the project, executors/ only base/, transports/ only base/, messaging/ no tools or tests,
// discovery/ only base/ and transports/address.h.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>

namespace {

namespace fs = std::filesystem;

// The project directories that files under `layer` include.
std::set<std::string> includedLayers(const std::string& layer) {
  std::set<std::string> found;
  const std::regex include(R"re(^\s*#\s*include\s*"([a-z_]+)/)re");
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(SWITCHBOARD_SOURCE_ROOT) / layer)) {
    if (!entry.is_regular_file()) continue;
    const auto ext = entry.path().extension();
    if (ext != ".h" && ext != ".cc") continue;
    std::ifstream in(entry.path());
    std::string line;
    std::smatch m;
    while (std::getline(in, line)) {
      if (std::regex_search(line, m, include)) found.insert(m[1]);
    }
  }
  return found;
}

TEST(IncludeRulesTest, BaseIncludesNothingOfTheProject) {
  EXPECT_EQ(includedLayers("base"), (std::set<std::string>{"base"}));
}

TEST(IncludeRulesTest, ExecutorsIncludeOnlyBase) {
  for (const auto& layer : includedLayers("executors")) {
    EXPECT_TRUE(layer == "base" || layer == "executors") << "executors/ includes " << layer;
  }
}

TEST(IncludeRulesTest, TransportsIncludeOnlyBase) {
  for (const auto& layer : includedLayers("transports")) {
    EXPECT_TRUE(layer == "base" || layer == "transports") << "transports/ includes " << layer;
  }
}

TEST(IncludeRulesTest, DiscoveryIncludesOnlyBaseAndTheAddress) {
  for (const auto& layer : includedLayers("discovery")) {
    EXPECT_TRUE(layer == "base" || layer == "discovery" || layer == "transports")
        << "discovery/ includes " << layer;
  }
  const std::regex transportInclude(R"re(#\s*include\s*"transports/(?!address\.h")[^"]*")re");
  for (const auto& entry :
       fs::recursive_directory_iterator(fs::path(SWITCHBOARD_SOURCE_ROOT) / "discovery")) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path());
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    EXPECT_FALSE(std::regex_search(text, transportInclude)) << entry.path();
  }
}

TEST(IncludeRulesTest, MessagingDoesNotReachUp) {
  for (const auto& layer : includedLayers("messaging")) {
    EXPECT_TRUE(layer != "tools" && layer != "tests") << "messaging/ includes " << layer;
  }
}

// Every library file that includes `header` (a regex over the include line) is one of `allowed`.
void expectConfinedTo(const std::regex& header, const std::set<std::string>& allowed) {
  for (const char* layer : {"base", "executors", "transports", "messaging", "discovery"}) {
    for (const auto& entry :
         fs::recursive_directory_iterator(fs::path(SWITCHBOARD_SOURCE_ROOT) / layer)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path());
      const std::string text((std::istreambuf_iterator<char>(in)), {});
      if (std::regex_search(text, header)) {
        EXPECT_EQ(allowed.count(entry.path().filename().string()), 1u) << entry.path();
      }
    }
  }
}

TEST(IncludeRulesTest, MsgpackStaysInTheCodec) {
  expectConfinedTo(std::regex(R"re(#\s*include\s*[<"]msgpack)re"), {"codec.cc"});
}

TEST(IncludeRulesTest, BoostAsioStaysInTheMsgpackTcpTransport) {
  expectConfinedTo(std::regex(R"re(#\s*include\s*[<"]boost/asio)re"),
                   {"msgpack_rpc_tcp_transport.cc"});
}

TEST(IncludeRulesTest, CppzmqStaysInTheZmqTransport) {
  expectConfinedTo(std::regex(R"re(#\s*include\s*[<"]zmq)re"),
                   {"zmq_transport.cc", "zmq_notification_broker.cc", "zmq_socket.h"});
}

TEST(IncludeRulesTest, HiredisStaysInTheRedisRegistry) {
  expectConfinedTo(std::regex(R"re(#\s*include\s*[<"]hiredis)re"), {"redis_registry.cc"});
}

}  // namespace
