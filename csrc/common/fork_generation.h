// fork_generation(): a number bumped in the child of every fork(). Connections inherited from
// the parent share their sockets (and request ids) with it, so a client that opened a
// connection in generation g must not use it when fork_generation() != g. Used by the node
// client and the pool client's peer links.
//
// The counter is global mutable state: it is written only by the pthread_atfork child hook
// (which runs single-threaded in the new child) and read atomically by anyone.
#pragma once
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace mch {

namespace detail {
inline std::atomic<uint64_t> g_fork_generation{0};
inline void on_fork_child() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }
}  // namespace detail

inline uint64_t fork_generation() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, detail::on_fork_child); });
  return detail::g_fork_generation.load(std::memory_order_relaxed);
}

}  // namespace mch
