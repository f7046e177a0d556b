// The libFuzzer entry point of one fuzz executable: SWITCHBOARD_FUZZ_TARGET names the target of
// targets.h it calls (tests/meson.build builds one executable per target).
#include <cstddef>
#include <cstdint>

#include "targets.h"

#ifndef SWITCHBOARD_FUZZ_TARGET
#error "define SWITCHBOARD_FUZZ_TARGET as one of the functions of targets.h"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  switchboard::fuzz::SWITCHBOARD_FUZZ_TARGET(data, size);
  return 0;
}
