// Checksums and key digests (xxHash XXH3, from libxxhash-dev).
//
// - checksum64(): XXH3-64 of a byte range; stored with every record and verified on every read.
// - StreamChecksum: the same value computed over a scatter-gather list, piece by piece.
// - KeyDigest: XXH3-128 of a key; the in-memory indexes are keyed by it.
// All functions are pure and thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace mch {

inline uint64_t checksum64(const void* data, size_t len) { return XXH3_64bits(data, len); }

class StreamChecksum {
 public:
  StreamChecksum() { XXH3_64bits_reset(&state_); }
  void update(const void* data, size_t len) { XXH3_64bits_update(&state_, data, len); }
  uint64_t digest() const { return XXH3_64bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

struct KeyDigest {
  uint64_t lo = 0;
  uint64_t hi = 0;

  // The all-zero digest marks an empty index slot, so it is never produced for a key.
  static KeyDigest of(std::string_view key) {
    XXH128_hash_t h = XXH3_128bits(key.data(), key.size());
    KeyDigest d{h.low64, h.high64};
    if (d.lo == 0 && d.hi == 0) d.lo = 1;
    return d;
  }
  bool empty() const { return lo == 0 && hi == 0; }
  bool operator==(const KeyDigest& o) const { return lo == o.lo && hi == o.hi; }
  bool operator!=(const KeyDigest& o) const { return !(*this == o); }
};

}  // namespace mch
