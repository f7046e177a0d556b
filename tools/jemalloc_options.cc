// jemalloc's options for the programs linked with it (read at its first allocation).
//
// One arena: a server's threads free much of what other threads allocated (a request taken by
// the receiving thread, answered by a worker). With an arena per thread, each arena kept its own
// freed extents of large messages, and RSS grew with the number of threads that handled them;
// with one, the per-thread caches still serve small allocations without a lock.
extern "C" {
extern const char* malloc_conf;
const char* malloc_conf = "narenas:1";
}
