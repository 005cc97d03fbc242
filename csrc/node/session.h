// Session: the node's state for one client connection: its stream, whether it said HELLO and
// which protocol version it agreed, the tokens it holds (put reservations, get pins), and the
// reusable buffers of its requests. A token a session did not get is never passed to the store,
// and close() gives back everything the client still held, so a dead client leaks nothing.
//
// Used by the session's own thread only, except the atomics the accept thread reads to choose a
// connection to close at the cap (`done`, `greeted`, `idle_since_ns`, `holding`, `evicted`) and
// stream->shutdown() (called by NodeServer::stop or at the cap to wake it).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "common/open_hash_map.h"
#include "node/protocol.h"
#include "tiering/tiered_store.h"
#include "transport/frame_reader.h"
#include "transport/stream.h"

namespace mch {

// A multiset of tokens (token -> count) on an OpenHashMap: no allocation per insert once warm.
// Token 0 is never issued by the store (slot generations start at 1), so it marks a free slot.
class TokenTable {
 public:
  void add(uint64_t t) {
    if (t == 0) return;
    map_.get_or_insert(t)++;
    total_++;
  }
  // Takes one count of t; false if t is not held.
  bool take(uint64_t t) {
    uint32_t* n = t ? map_.find(t) : nullptr;
    if (!n) return false;
    total_--;
    if (--*n == 0) map_.erase(t);
    return true;
  }
  uint64_t total() const { return total_; }
  // Appends every held token (once per count) to out and empties the table.
  void drain(std::vector<uint64_t>* out) {
    map_.for_each([out](uint64_t t, uint32_t n) { out->insert(out->end(), n, t); });
    map_.clear();
    total_ = 0;
  }

 private:
  struct Traits {
    static size_t hash(uint64_t t) {  // murmur3 finaliser: tokens are (generation, slot) pairs
      t ^= t >> 33;
      t *= 0xff51afd7ed558ccdull;
      t ^= t >> 33;
      return static_cast<size_t>(t);
    }
    static bool empty(uint64_t t) { return t == 0; }
  };
  OpenHashMap<uint64_t, uint32_t, Traits> map_{256, 50};
  uint64_t total_ = 0;  // sum of counts
};

struct Session {
  // rx_initial: the frame buffer's size (it grows for a large frame and shrinks back).
  explicit Session(std::unique_ptr<Stream> s, size_t rx_initial = 64 * 1024)
      : stream(std::move(s)), pid(stream->peer_pid()), accepted(Clock::now()), rx(rx_initial) {}

  // Nanoseconds on the steady clock, for the atomics below.
  static int64_t now_ns() { return Clock::now().time_since_epoch().count(); }
  // Between requests: waiting since now, holding `held` tokens.
  void mark_idle(uint64_t held) {
    holding.store(held);
    idle_since_ns.store(now_ns());
  }

  std::unique_ptr<Stream> stream;
  const int32_t pid;
  const Clock::time_point accepted;
  std::thread th;
  std::atomic<bool> done{false};
  std::atomic<bool> greeted{false};       // said HELLO
  std::atomic<int64_t> idle_since_ns{0};  // waiting for a request since; 0 while one is handled
  std::atomic<uint64_t> holding{0};       // reservations + pins held between requests
  std::atomic<bool> evicted{false};       // closed by the node to make room for a new client

  bool hello = false;
  uint16_t version = 0;
  TokenTable reservations, pins;
  TokenTable locations;  // NVMe regions pinned for the client's direct reads (GET_LOCATE)
  FrameReader rx;
  proto::Writer w;
  // Per-request scratch, reused so a warm session allocates nothing per key.
  proto::KeyList keys;
  std::vector<uint64_t> sizes, tokens;
  std::vector<uint32_t> depths;
  std::vector<uint8_t> oks;
  std::vector<int32_t> res;
  std::vector<int64_t> owned;  // per commit token: index into `tokens`, or -1 (not ours)
  std::vector<PutTicket> put_t;
  std::vector<GetTicket> get_t;
  std::vector<TieredStore::Location> locs;
};

// Gives back what a session's client still held when its connection ended: aborts its put
// reservations and releases its pins. *reservations and *pins get how many.
inline void release_held(Session& s, TieredStore& store, uint64_t* reservations, uint64_t* pins) {
  std::vector<uint64_t> toks;
  s.reservations.drain(&toks);
  *reservations = toks.size();
  if (!toks.empty()) store.abort_puts(toks);
  toks.clear();
  s.pins.drain(&toks);
  *pins = toks.size();
  if (!toks.empty()) store.get_unpin(toks);
}

}  // namespace mch
