// Soak: two switchboard-server children (thread pool and event loop, both journaling record())
// on fixed loopback ports; two clients, each with its own Network over both servers, keeping
// calls in flight with mixed payloads (100 B, 64 KiB, 1 MiB); a seeded schedule kills one server
// at a time (SIGKILL or SIGTERM) and restarts it on the same port. Runs SWITCHBOARD_SOAK_SECONDS
// (180 by default) and SWITCHBOARD_SOAK_SEED picks the schedule.
// Checks: every call gets exactly one outcome (none lost without an error), every echo answer is
// its own call's payload, no record token is executed twice, every record answered Ok is in a
// journal, the client's descriptor and thread counts stay flat and come back to where they
// started, and its heap in use does not grow (its resident size is reported). Figures: gtest XML
// properties.
#include <gtest/gtest.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "messaging/network.h"
#include "messaging/rpc_client.h"
#include "tests/support/figures.h"
#include "tests/support/sanitizers.h"
#include "tests/support/server_process.h"
#include "tests/support/test_util.h"
#include "transports/transport_factory.h"

#ifdef SWITCHBOARD_SANITIZED_ALLOCATOR
extern "C" size_t __sanitizer_get_current_allocated_bytes();  // sanitizer/allocator_interface.h
#endif

namespace switchboard {
namespace {

using namespace std::chrono_literals;
using testing::envOr;
using testing::Figures;
using testing::freeTcpUrl;
using testing::LogCapture;
using testing::ServerProcess;
using testing::TempDir;

constexpr size_t kWindow = 4;  // calls each client keeps in flight
constexpr Duration kCallTimeout = 10s;
constexpr Duration kTick = 250ms;  // the schedule's step; resources are sampled every 4 ticks
constexpr int kSecondsToJudgeMemory = 120;  // runs at least this long have a memory plateau

// ----- this process's resources -----------------------------------------------------------------

long residentKiB() {
  std::ifstream statm("/proc/self/statm");
  long sizePages = 0, residentPages = 0;
  statm >> sizePages >> residentPages;
  return residentPages * (::sysconf(_SC_PAGESIZE) / 1024);
}

// Bytes this process's malloc has handed out and not had back (every arena, and the chunks it
// mapped on their own; a sanitizer's allocator counts its own, its quarantine left out): what
// grows when something is kept, whatever the allocator does with the pages it got back.
long heapInUseKiB() {
#ifdef SWITCHBOARD_SANITIZED_ALLOCATOR
  return static_cast<long>(__sanitizer_get_current_allocated_bytes() / 1024);
#else
  const struct mallinfo2 info = ::mallinfo2();
  return static_cast<long>((info.uordblks + info.hblkhd) / 1024);
#endif
}

// This process's descriptors and threads, as docs/RELIABILITY.md reports them: countEntries
// also counts "." and "..", and (in /proc/self/fd) the descriptor its opendir holds.
int openDescriptors() { return static_cast<int>(testing::countEntries("/proc/self/fd")) - 3; }
int threads() { return static_cast<int>(testing::countEntries("/proc/self/task")) - 2; }

// Least-squares slope of y over x; zero with fewer than two points.
double slope(const std::vector<std::pair<double, double>>& points) {
  if (points.size() < 2) return 0;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [x, y] : points) {
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double n = static_cast<double>(points.size());
  const double d = n * sxx - sx * sx;
  return d == 0 ? 0 : (n * sxy - sx * sy) / d;
}

// ----- the clients -------------------------------------------------------------------------------

// The payload of one call: `size` bytes that name the call, so a reply meant for another call
// cannot pass for this one.
std::string payloadFor(const std::string& token, size_t size) {
  std::string payload(size, static_cast<char>('a' + token.size() % 26));
  payload.replace(0, std::min(token.size(), size), token.substr(0, size));
  return payload;
}

// One client: its own Network over every server, a driver keeping kWindow calls in flight.
// Echo calls (idempotent, replayed on failover) carry 100 B, 64 KiB or 1 MiB; record calls
// (not idempotent) carry a unique token that the server journals.
class SoakClient {
 public:
  struct Totals {
    uint64_t answered = 0;       // calls with an outcome
    uint64_t extraOutcomes = 0;  // outcomes after a call's first (the contract: none)
    uint64_t mismatched = 0;     // echo answers that were not the call's payload
    uint64_t echoes = 0, echoesOk = 0;
    uint64_t bytesSent = 0;
    uint64_t records = 0, recordsOk = 0;
    std::map<std::string, uint64_t> errors;  // by status code name

    uint64_t issued() const { return echoes + records; }
    Totals& operator+=(const Totals& t) {
      answered += t.answered;
      extraOutcomes += t.extraOutcomes;
      mismatched += t.mismatched;
      echoes += t.echoes;
      echoesOk += t.echoesOk;
      bytesSent += t.bytesSent;
      records += t.records;
      recordsOk += t.recordsOk;
      for (const auto& [code, n] : t.errors) errors[code] += n;
      return *this;
    }
  };

  SoakClient(int id, Connector& connector, Network::Options options, uint64_t seed)
      : id_(id), random_(seed) {
    network_.emplace(Network::create(connector, std::move(options)).value());
    client_.emplace(
        RpcClient::create(*network_, Target{.topic = "switchboard"}, {.timeout = kCallTimeout})
            .value());
  }

  // Issues calls until `until`, then waits (within a bound) for the ones still out.
  void run(Deadline until) {
    while (Clock::now() < until) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!cv_.wait_until(lock, until, [&] { return inFlight_ < kWindow; })) break;
        ++inFlight_;
      }
      issueOne();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, kCallTimeout + 5s, [&] { return inFlight_ == 0; });
  }

  bool connectedToAll(size_t servers) const { return network_->status().connected == servers; }
  Network::Stats networkStats() const { return network_->stats(); }
  void stop() { network_->stop(); }
  Totals totals() {
    std::lock_guard<std::mutex> lock(mutex_);
    return totals_;
  }
  // The tokens of the record calls answered Ok.
  std::vector<std::string> recordTokensOk() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    for (uint64_t seq = 0; seq < recordOk_.size(); ++seq) {
      if (recordOk_[seq]) out.push_back(tokenOf(seq));
    }
    return out;
  }

 private:
  void issueOne() {
    const uint64_t seq = nextSeq_++;
    const std::string token = tokenOf(seq);
    const int dice = static_cast<int>(random_() % 100);
    auto delivered = std::make_shared<std::atomic<int>>(0);
    if (dice < 15) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ++totals_.records;
      }
      client_->callAsync("record", {Value(token)}, [this, seq, delivered](Result<Value> r) {
        finished(*delivered, r.status(), [&] {
          ++totals_.recordsOk;
          if (recordOk_.size() <= seq) recordOk_.resize(seq + 1);
          recordOk_[seq] = true;
        });
      });
      return;
    }
    const size_t size = dice < 18 ? 1u << 20 : dice < 30 ? 64u << 10 : 100u;
    std::string payload = payloadFor(token, size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++totals_.echoes;
      totals_.bytesSent += size;
    }
    auto expected = std::make_shared<const std::string>(payload);
    client_->prepare({.idempotent = true})
        .callAsync("echo", {Value(std::move(payload))},
                   [this, expected, delivered](Result<Value> r) {
                     const bool same = r && r->isString() && r->asString() == *expected;
                     finished(*delivered, r.status(), [&] {
                       ++totals_.echoesOk;
                       if (!same) ++totals_.mismatched;
                     });
                   });
  }

  std::string tokenOf(uint64_t seq) const {
    return "c" + std::to_string(id_) + "-" + std::to_string(seq);
  }

  // Counts a call's outcome (`onOk` runs under the lock for a success) and frees its slot.
  template <typename OnOk>
  void finished(std::atomic<int>& delivered, const Status& status, OnOk onOk) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (delivered.fetch_add(1) != 0) {
      ++totals_.extraOutcomes;
      return;
    }
    ++totals_.answered;
    if (status) {
      onOk();
    } else {
      ++totals_.errors[std::string(statusCodeName(status.code()))];
    }
    --inFlight_;
    cv_.notify_all();
  }

  const int id_;
  std::mt19937_64 random_;  // driver thread only
  uint64_t nextSeq_ = 0;    // driver thread only
  std::optional<Network> network_;
  std::optional<RpcClient> client_;
  std::mutex mutex_;
  std::condition_variable cv_;
  size_t inFlight_ = 0;  // guarded by mutex_
  Totals totals_;        // guarded by mutex_
  // guarded by mutex_: by sequence number, the record calls answered Ok (a bit per call, so
  // that the bookkeeping does not weigh on the memory figures)
  std::vector<bool> recordOk_;
};

// ----- the servers -------------------------------------------------------------------------------

// A switchboard-server on a fixed URL, killed and started again by the schedule.
class SoakServer {
 public:
  SoakServer(std::string executor, std::string journal)
      : executor_(std::move(executor)), journal_(std::move(journal)) {}

  // Starts it on its URL (the first time, on a fresh loopback port, another each attempt);
  // false if it did not come up.
  bool start() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      const std::string url = url_.empty() ? freeTcpUrl() : url_;
      process_.emplace(executor_, url,
                       std::vector<std::string>{"--journal", journal_, "--log-level", "warning",
                                                "--drain-seconds", "5"});
      if (!process_->url().empty()) {
        url_ = process_->url();  // what it listens on: restarts reuse it
        return true;
      }
      process_.reset();
    }
    return false;
  }
  // SIGKILL (reaped) or SIGTERM (drained); the exit status.
  int stop(int signal) {
    const int status = signal == SIGKILL ? process_->killAndReap() : process_->terminate();
    process_.reset();
    return status;
  }
  bool running() const { return process_.has_value(); }
  const std::string& url() const { return url_; }
  const std::string& journal() const { return journal_; }

 private:
  const std::string executor_;
  const std::string journal_;
  std::string url_;
  std::optional<ServerProcess> process_;
};

// Token -> executions, over every journal.
std::map<std::string, int> journaled(const std::vector<std::string>& journals) {
  std::map<std::string, int> count;
  for (const std::string& path : journals) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) ++count[line];
  }
  return count;
}

TEST(SoakTest, TwoServersTwoClientsMixedPayloadsRandomKillsAndRestarts) {
  const int seconds = std::stoi(envOr("SWITCHBOARD_SOAK_SECONDS", "180"));
  const uint64_t seed = std::stoull(envOr("SWITCHBOARD_SOAK_SEED", "20261122"));
  Figures figures("soak", "two_servers_two_clients");
  figures.add("seconds", seconds);
  figures.add("seed", static_cast<int64_t>(seed));

  TempDir dir;
  std::deque<SoakServer> servers;  // never moved: each holds its child process
  servers.emplace_back("threadpool", dir.path() + "/a.journal");
  servers.emplace_back("eventloop", dir.path() + "/b.journal");
  for (SoakServer& s : servers) ASSERT_TRUE(s.start()) << "a server did not start";

  const int fdsBefore = openDescriptors();
  const int threadsBefore = threads();
  std::optional<TransportFactory> factory(std::in_place);
  std::optional<TransportConnector> connector(std::in_place, *factory);
  LogCapture logs;
  Network::Options options{.servers = {servers[0].url(), servers[1].url()},
                           .connectTimeout = 2s,
                           .pingInterval = 500ms,
                           .pingTimeout = 1s,
                           .backoffInitial = 100ms,
                           .backoffMax = 1s,
                           .log = logs.sink()};
  std::vector<std::unique_ptr<SoakClient>> clients;
  for (int id = 0; id < 2; ++id) {
    clients.push_back(std::make_unique<SoakClient>(id, *connector, options, seed + 1 + id));
  }

  const Deadline started = Clock::now();
  const Deadline end = started + std::chrono::seconds(seconds);
  std::vector<std::thread> drivers;
  for (auto& c : clients) drivers.emplace_back([&c, end] { c->run(end); });

  // The schedule: every 2-5 s one server goes down (SIGKILL twice as often as SIGTERM) for
  // 0.1-0.8 s; never both at once, and both are up for the last seconds.
  std::mt19937_64 schedule(seed);
  auto between = [&](Duration low, Duration high) {
    return low + Duration(schedule() % static_cast<uint64_t>((high - low).count() + 1));
  };
  Deadline nextKill = started + between(2s, 5s);
  std::optional<size_t> down;
  Deadline restartAt{};
  int kills = 0, terms = 0, restarts = 0, badExits = 0;
  std::vector<std::pair<double, double>> rss, heap;  // (minutes, KiB)
  int steadyFdsMin = INT32_MAX, steadyFdsMax = 0, steadyThreadsMin = INT32_MAX,
      steadyThreadsMax = 0;
  for (int tick = 0; Clock::now() < end; ++tick) {
    std::this_thread::sleep_for(kTick);  // the schedule's clock, not a synchronization
    const Deadline now = Clock::now();
    if (tick % 4 == 0) {
      const double minutes = std::chrono::duration<double>(now - started).count() / 60;
      rss.emplace_back(minutes, static_cast<double>(residentKiB()));
      heap.emplace_back(minutes, static_cast<double>(heapInUseKiB()));
      // Descriptors and threads are compared in one state: every client connected to both.
      if (!down && std::all_of(clients.begin(), clients.end(),
                               [](const auto& c) { return c->connectedToAll(2); })) {
        steadyFdsMin = std::min(steadyFdsMin, openDescriptors());
        steadyFdsMax = std::max(steadyFdsMax, openDescriptors());
        steadyThreadsMin = std::min(steadyThreadsMin, threads());
        steadyThreadsMax = std::max(steadyThreadsMax, threads());
      }
    }
    if (down && now >= restartAt) {
      ASSERT_TRUE(servers[*down].start()) << "restart on " << servers[*down].url() << " failed";
      ++restarts;
      down.reset();
      nextKill = now + between(2s, 5s);
    } else if (!down && now >= nextKill && now < end - 5s) {
      down = schedule() % 2;
      const int signal = schedule() % 3 == 0 ? SIGTERM : SIGKILL;
      const int status = servers[*down].stop(signal);
      if (signal == SIGTERM) {
        ++terms;
        if (status != 0) ++badExits;
      } else {
        ++kills;
      }
      restartAt = now + between(100ms, 800ms);
    }
  }
  for (std::thread& t : drivers) t.join();
  if (down) {
    ASSERT_TRUE(servers[*down].start());
  }

  // Every journal line is written before its answer, so the journals are complete now.
  SoakClient::Totals all;
  Network::Stats network;
  std::vector<std::string> tokensOk;
  for (auto& c : clients) {
    all += c->totals();
    const std::vector<std::string> tokens = c->recordTokensOk();
    tokensOk.insert(tokensOk.end(), tokens.begin(), tokens.end());
    const Network::Stats s = c->networkStats();
    network.replayed += s.replayed;
    network.failovers += s.failovers;
    network.lateReplies += s.lateReplies;
  }
  const std::map<std::string, int> executions =
      journaled({servers[0].journal(), servers[1].journal()});
  uint64_t executedTwice = 0, okNotJournaled = 0;
  for (const auto& [token, n] : executions) executedTwice += n > 1;
  for (const std::string& token : tokensOk) okNotJournaled += executions.count(token) == 0;

  for (auto& c : clients) c->stop();
  clients.clear();
  connector.reset();
  factory.reset();

  // Slopes after the first third: warm-up excluded.
  auto settledSlope = [&](const std::vector<std::pair<double, double>>& samples) {
    std::vector<std::pair<double, double>> settled;
    for (const auto& p : samples) {
      if (p.first * 60 >= seconds / 3.0) settled.push_back(p);
    }
    return slope(settled);
  };
  const double rssSlope = settledSlope(rss);
  const double heapSlope = settledSlope(heap);
  figures.add("calls", static_cast<int64_t>(all.issued()));
  figures.add("calls_lost", static_cast<int64_t>(all.issued() - all.answered));
  figures.add("extra_outcomes", static_cast<int64_t>(all.extraOutcomes));
  figures.add("mismatched_answers", static_cast<int64_t>(all.mismatched));
  figures.add("echo_ok", static_cast<int64_t>(all.echoesOk));
  figures.add("echo_failed", static_cast<int64_t>(all.echoes - all.echoesOk));
  figures.add("records", static_cast<int64_t>(all.records));
  figures.add("records_ok", static_cast<int64_t>(all.recordsOk));
  figures.add("records_executed_twice", static_cast<int64_t>(executedTwice));
  figures.add("records_ok_not_journaled", static_cast<int64_t>(okNotJournaled));
  std::string errors;
  for (const auto& [code, n] : all.errors)
    errors += (errors.empty() ? "" : ",") + code + ":" + std::to_string(n);
  figures.add("errors", errors.empty() ? "none" : errors);
  figures.add("mib_sent", static_cast<int64_t>(all.bytesSent >> 20));
  figures.add("sigkills", kills);
  figures.add("sigterms", terms);
  figures.add("restarts", restarts);
  figures.add("replayed", static_cast<int64_t>(network.replayed));
  figures.add("failovers", static_cast<int64_t>(network.failovers));
  figures.add("late_replies", static_cast<int64_t>(network.lateReplies));
  figures.add("rss_first_kib", static_cast<int64_t>(rss.empty() ? 0 : rss.front().second));
  figures.add("rss_last_kib", static_cast<int64_t>(rss.empty() ? 0 : rss.back().second));
  figures.add("rss_slope_kib_per_min", static_cast<int64_t>(rssSlope));
  figures.add("heap_slope_kib_per_min", static_cast<int64_t>(heapSlope));
  // KiB at each fifth of the run
  auto byFifth = [](const std::vector<std::pair<double, double>>& samples) {
    std::string path;
    for (size_t i = 1; i <= 5 && !samples.empty(); ++i) {
      path += (path.empty() ? "" : ",") +
              std::to_string(static_cast<int64_t>(samples[i * (samples.size() - 1) / 5].second));
    }
    return path;
  };
  figures.add("rss_kib_by_fifth", byFifth(rss));
  figures.add("heap_kib_by_fifth", byFifth(heap));
  figures.add("steady_fds", std::to_string(steadyFdsMin) + ".." + std::to_string(steadyFdsMax));
  figures.add("steady_threads",
              std::to_string(steadyThreadsMin) + ".." + std::to_string(steadyThreadsMax));
  figures.add("fds_before_after",
              std::to_string(fdsBefore) + "/" + std::to_string(openDescriptors()));
  figures.add("threads_before_after",
              std::to_string(threadsBefore) + "/" + std::to_string(threads()));

  EXPECT_GT(kills + terms, 0) << "the schedule never took a server down";
  EXPECT_EQ(all.issued(), all.answered) << "calls lost without an error";
  EXPECT_EQ(all.extraOutcomes, 0u);
  EXPECT_EQ(all.mismatched, 0u);
  EXPECT_EQ(executedTwice, 0u) << "a non-idempotent call ran twice";
  EXPECT_EQ(okNotJournaled, 0u) << "a record answered Ok was never executed";
  EXPECT_EQ(badExits, 0) << "a server did not drain and exit 0 on SIGTERM";
  // One server is always up and echo calls are replayed: failures are rare (a call whose
  // deadline passed while it waited for a failover).
  EXPECT_GE(all.echoesOk * 100, all.echoes * 99) << errors;
  EXPECT_LE(steadyFdsMax - steadyFdsMin, 4) << "descriptors grew while connected to both";
  EXPECT_LE(steadyThreadsMax - steadyThreadsMin, 2) << "threads grew while connected to both";
  EXPECT_EQ(openDescriptors(), fdsBefore) << "descriptors left after the clients stopped";
  EXPECT_EQ(threads(), threadsBefore) << "threads left after the clients stopped";
  // What is judged is the heap in use: the resident size also follows how glibc's malloc keeps
  // the pages of freed 1 MiB payloads (its mmap threshold rises after the first is freed, and
  // later ones fragment the arenas of the threads that free them), which swings by tens of MiB
  // with no byte kept. Shorter runs are still warming up (ZeroMQ buffers for 1 MiB payloads):
  // their slopes are reported, not judged.
  if (seconds >= kSecondsToJudgeMemory) {
    EXPECT_LT(heapSlope, 4096) << "the heap in use grows " << heapSlope << " KiB/min";
  }
}

}  // namespace
}  // namespace switchboard
