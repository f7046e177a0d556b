// NetnsLab: test hosts in network namespaces that the test makes itself. Each host is a namespace
// with one veth link to a bridge in the lab's own "switch" namespace, addressed 10.77.0.N/24
// inside the namespaces only: nothing of the machine's own network is touched. Needs root (or
// CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2's `ip`; make() says why it cannot. Every command
// is bounded; the destructor deletes the namespaces (and the links in them go with them).
// Header-only. Thread-bound.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/server_process.h"

namespace switchboard::testing {

class NetnsLab {
 public:
  // A lab with no host yet; null and `why` set where namespaces cannot be made here.
  static std::unique_ptr<NetnsLab> make(std::string& why) {
    const std::string ip = ipPath();
    if (ip.empty()) {
      why = "iproute2's ip is not installed";
      return nullptr;
    }
    removeStaleLabs(ip);
    std::unique_ptr<NetnsLab> lab(new NetnsLab(ip));
    std::string failed;
    if (!lab->ip({"netns", "add", lab->switchName()}, &failed) ||
        !lab->ip({"-n", lab->switchName(), "link", "add", "br0", "type", "bridge"}, &failed) ||
        !lab->ip({"-n", lab->switchName(), "link", "set", "br0", "up"}, &failed)) {
      why = "cannot make network namespaces here (needs root): " + failed;
      return nullptr;
    }
    return lab;
  }

  ~NetnsLab() {
    for (const auto& [host, address] : hosts_) ip({"netns", "delete", nameOf(host)}, nullptr);
    ip({"netns", "delete", switchName()}, nullptr);
  }
  NetnsLab(const NetnsLab&) = delete;
  NetnsLab& operator=(const NetnsLab&) = delete;

  // Adds host `host` (a short name) at 10.77.0.`octet` with its link up; its address.
  std::optional<std::string> addHost(const std::string& host, int octet) {
    const std::string ns = nameOf(host);
    const std::string address = "10.77.0." + std::to_string(octet);
    const std::string port = "p" + std::to_string(octet);  // the switch side of its link
    std::string failed;
    const bool ok =
        ip({"netns", "add", ns}, &failed) &&
        ip({"-n", switchName(), "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns},
           &failed) &&
        ip({"-n", switchName(), "link", "set", port, "master", "br0", "up"}, &failed) &&
        ip({"-n", ns, "addr", "add", address + "/24", "dev", "eth0"}, &failed) &&
        ip({"-n", ns, "link", "set", "eth0", "up"}, &failed) &&
        ip({"-n", ns, "link", "set", "lo", "up"}, &failed);
    hosts_.emplace(host, address);  // deleted with the lab even when half made
    if (!ok) {
      ADD_FAILURE() << "cannot add host " << host << ": " << failed;
      return std::nullopt;
    }
    return address;
  }

  // `argv` run inside `host`'s namespace (argv[0] a path, as ChildProcess takes it).
  std::vector<std::string> inHost(const std::string& host, std::vector<std::string> argv) const {
    std::vector<std::string> out{ip_, "netns", "exec", nameOf(host)};
    out.insert(out.end(), std::make_move_iterator(argv.begin()),
               std::make_move_iterator(argv.end()));
    return out;
  }

  // Cuts `host` off the network (its link goes down, as a pulled cable), or brings it back.
  bool setLink(const std::string& host, bool up) {
    std::string failed;
    const bool ok = ip({"-n", nameOf(host), "link", "set", "eth0", up ? "up" : "down"}, &failed);
    if (!ok) ADD_FAILURE() << failed;
    return ok;
  }

 private:
  explicit NetnsLab(std::string ip) : ip_(std::move(ip)), prefix_(prefixOf(::getpid())) {}

  static std::string prefixOf(pid_t pid) { return "sblab" + std::to_string(pid) + "-"; }
  std::string switchName() const { return prefix_ + "switch"; }
  std::string nameOf(const std::string& host) const { return prefix_ + host; }

  static std::string ipPath() {
    for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
      if (::access(path, X_OK) == 0) return path;
    }
    return {};
  }

  // Runs `ip args...` bounded by 10 s; on failure appends the command to `failed`.
  bool ip(const std::vector<std::string>& args, std::string* failed) const {
    return run(ip_, args, failed);
  }
  static bool run(const std::string& ip, const std::vector<std::string>& args,
                  std::string* failed) {
    std::vector<std::string> argv{ip};
    argv.insert(argv.end(), args.begin(), args.end());
    ChildProcess child(argv);
    std::string output;
    while (std::optional<std::string> line = child.readLine(deadlineAfter(kDefaultWait))) {
      output += *line + "\n";
    }
    const std::optional<int> code = child.waitExit(deadlineAfter(kDefaultWait));
    if (code == 0) return true;
    if (failed != nullptr) {
      std::ostringstream why;
      why << "`ip";
      for (const std::string& a : args) why << ' ' << a;
      why << "` exited " << (code ? std::to_string(*code) : "late") << " " << output;
      *failed = why.str();
    }
    return false;
  }

  // Namespaces of labs whose process is gone (a test killed before its destructor ran).
  static void removeStaleLabs(const std::string& ip) {
    std::error_code ignored;
    for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ignored)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("sblab", 0) != 0) continue;
      const pid_t pid = static_cast<pid_t>(std::atol(name.c_str() + 5));
      if (pid > 0 && name.rfind(prefixOf(pid), 0) == 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
        run(ip, {"netns", "delete", name}, nullptr);
      }
    }
  }

  const std::string ip_;
  const std::string prefix_;
  std::map<std::string, std::string> hosts_;  // host -> address
};

}  // namespace switchboard::testing
