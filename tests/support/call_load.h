// A bounded load of calls for the process suites: `window` sleep(5 ms) calls kept in flight,
// with an action (stop a server) once some have finished. Header-only.
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "messaging/rpc_client.h"
#include "tests/support/test_util.h"

namespace switchboard::testing {

struct CallLoad {
  int calls = 300;
  int window = 32;        // calls in flight at most
  int midwayAfter = 100;  // `midway` runs (once) when this many have finished
  std::function<void()> midway;
};

// Issues `load.calls` sleep(5) calls through `client` and waits for every outcome; each wait is
// bounded by `bound` (a test failure when it passes). Returns the failures by status code name:
// empty when every call was answered Ok.
inline std::map<std::string, int> runCallLoad(const RpcClient& client, const CallLoad& load,
                                              Duration bound = kDefaultWait) {
  // Shared with the callbacks, which may outlive this call if a wait's bound passes.
  struct Tally {
    std::mutex mutex;
    std::condition_variable changed;
    int finished = 0, inFlight = 0;       // guarded by mutex
    std::map<std::string, int> failures;  // by code, guarded by mutex
  };
  auto tally = std::make_shared<Tally>();
  bool midwayDone = false;
  for (int i = 0; i < load.calls; ++i) {
    std::unique_lock<std::mutex> lock(tally->mutex);
    if (!tally->changed.wait_for(lock, bound, [&] { return tally->inFlight < load.window; })) {
      ADD_FAILURE() << "no call of the window finished within the bound";
      return tally->failures;
    }
    if (tally->finished >= load.midwayAfter && !midwayDone) {
      midwayDone = true;
      lock.unlock();
      if (load.midway) load.midway();
      lock.lock();
    }
    ++tally->inFlight;
    lock.unlock();
    client.callAsync("sleep", Array{Value(5)}, [tally](Result<Value> outcome) {
      std::lock_guard<std::mutex> guard(tally->mutex);
      if (!outcome) ++tally->failures[std::string(statusCodeName(outcome.status().code()))];
      ++tally->finished;
      --tally->inFlight;
      tally->changed.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(tally->mutex);
  if (!tally->changed.wait_for(lock, bound, [&] { return tally->finished == load.calls; })) {
    ADD_FAILURE() << load.calls - tally->finished << " calls unanswered within the bound";
  }
  return tally->failures;
}

}  // namespace switchboard::testing
