// Checksums and key digests (xxHash XXH3, from libxxhash-dev).
//
// - checksum64(): XXH3-64 of a byte range; stored with every record and verified on every read.
// - StreamChecksum: the same value computed over a scatter-gather list, piece by piece.
// (KeyDigest, the XXH3-128 of a key, is in keys.h.)
// All functions are pure and thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

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

}  // namespace mch
