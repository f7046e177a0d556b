// SWITCHBOARD_SANITIZED_ALLOCATOR: defined in an ASan, TSan or MSan build, whose allocator
// reserves terabytes of address space up front and keeps freed memory for a while (ASan's
// quarantine holds 256 MiB by default), so address-space caps and resident sizes do not mean
// there what they mean in a plain build. Header-only.
#pragma once

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SWITCHBOARD_SANITIZED_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define SWITCHBOARD_SANITIZED_ALLOCATOR 1
#endif
#endif
