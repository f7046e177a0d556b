// Replays every input of tests/corpus/<target>/ through its fuzz target (tests/fuzz), so that the
// inputs the fuzzers found keep passing in every build, without libFuzzer or clang.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <string>
#include <vector>

#include "fuzz/targets.h"
#include "tests/support/sanitizers.h"

// Memory: libFuzzer fails an input that makes a target allocate without bound (its rss and
// malloc limits); the replay must fail it too, without exhausting the machine first. A plain
// build caps the address space while it replays (std::bad_alloc, reported as a failure). ASan
// and TSan reserve terabytes of address space up front, so there the sanitizer's allocator
// refuses any single allocation above 256 MiB instead (the binary dies, reporting it).
#ifdef SWITCHBOARD_SANITIZED_ALLOCATOR
// Defaults under the environment's ASAN_OPTIONS / TSAN_OPTIONS (which win flag by flag); with
// abort_on_error a sanitizer's report ends in SIGABRT, so the input is named (see below).
#define SWITCHBOARD_SANITIZER_OPTIONS "max_allocation_size_mb=256:abort_on_error=1"
extern "C" const char* __asan_default_options() { return SWITCHBOARD_SANITIZER_OPTIONS; }
extern "C" const char* __tsan_default_options() { return SWITCHBOARD_SANITIZER_OPTIONS; }
extern "C" const char* __msan_default_options() { return SWITCHBOARD_SANITIZER_OPTIONS; }
#endif

namespace switchboard {
namespace {

namespace fs = std::filesystem;

// The address space a plain build may use while it replays.
constexpr rlim_t kAddressSpaceCap = rlim_t{1} << 30;

struct FuzzTarget {
  const char* name;  // the corpus directory under tests/corpus
  void (*run)(const uint8_t* data, size_t size);
};

// gtest names the parameter of a failed case with this.
void PrintTo(const FuzzTarget& target, std::ostream* os) { *os << target.name; }

const FuzzTarget kTargets[] = {
    {"decode_message", &fuzz::fuzzDecodeMessage},
    {"router_frames", &fuzz::fuzzRouterFrames},
    {"msgpack_stream", &fuzz::fuzzMsgpackStream},
    {"dispatch", &fuzz::fuzzDispatch},
    {"network_replies", &fuzz::fuzzNetworkReplies},
};

// decode_message -> DecodeMessage.
std::string testName(const ::testing::TestParamInfo<FuzzTarget>& target) {
  std::string name;
  bool upper = true;
  for (const char* c = target.param.name; *c != '\0'; ++c) {
    if (*c == '_') {
      upper = true;
    } else {
      name += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(*c))) : *c;
      upper = false;
    }
  }
  return name;
}

// The input being replayed, named on stderr if a target crashes or fails a check (which aborts
// the binary, so gtest cannot report it).
char replaying[4096];

void nameTheInputAndDie(int signal) {
  const char prefix[] = "\nfuzz_corpus_test: died while replaying ";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, prefix, sizeof prefix - 1);
  n = ::write(STDERR_FILENO, replaying, std::strlen(replaying));
  n = ::write(STDERR_FILENO, "\n", 1);
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

constexpr int kFatalSignals[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};

// While it lives: the fatal signals name the input being replayed, and a plain build's address
// space is capped (see the top of the file). Both are restored by the destructor.
class ReplayGuard {
 public:
  ReplayGuard() {
    for (int sig : kFatalSignals) std::signal(sig, nameTheInputAndDie);
#ifndef SWITCHBOARD_SANITIZED_ALLOCATOR
    if (::getrlimit(RLIMIT_AS, &old_) == 0) {
      rlimit capped = old_;
      capped.rlim_cur = std::min(old_.rlim_cur, kAddressSpaceCap);
      capped_ = ::setrlimit(RLIMIT_AS, &capped) == 0;
    }
#endif
  }
  ~ReplayGuard() {
    if (capped_) (void)::setrlimit(RLIMIT_AS, &old_);
    for (int sig : kFatalSignals) std::signal(sig, SIG_DFL);
    replaying[0] = '\0';
  }
  ReplayGuard(const ReplayGuard&) = delete;
  ReplayGuard& operator=(const ReplayGuard&) = delete;

 private:
  rlimit old_{};
  bool capped_ = false;
};

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class FuzzCorpusTest : public ::testing::TestWithParam<FuzzTarget> {};

TEST_P(FuzzCorpusTest, EveryInputPasses) {
  const fs::path dir = fs::path(SWITCHBOARD_SOURCE_ROOT) / "tests" / "corpus" / GetParam().name;
  ASSERT_TRUE(fs::is_directory(dir)) << dir << " is missing";
  std::vector<fs::path> inputs;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) inputs.push_back(entry.path());
  }
  std::sort(inputs.begin(), inputs.end());
  ASSERT_FALSE(inputs.empty()) << dir << " holds no inputs";
  {
    const ReplayGuard guard;
    for (const fs::path& input : inputs) {
      const std::string bytes = readFile(input);
      std::snprintf(replaying, sizeof replaying, "%s", input.c_str());
      try {
        GetParam().run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      } catch (const std::exception& e) {  // std::bad_alloc at the cap, above all
        ADD_FAILURE() << input << " threw " << e.what();
      }
    }
  }
  RecordProperty("inputs", static_cast<int>(inputs.size()));
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpusTest, ::testing::ValuesIn(kTargets), testName);

}  // namespace
}  // namespace switchboard
