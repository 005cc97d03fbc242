// Keys: the length limit, the validity check every entry point applies, and the 128-bit key
// digest the in-memory indexes are keyed by (XXH3-128), with its hash for std containers.
// All functions are pure and thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/checksum.h"
#include "common/status.h"

namespace mch {

// Longest key accepted anywhere (the NVMe record header block holds it with the header).
constexpr size_t kMaxKeyLen = 2048;

// kOk, kInvalidParams (empty) or kKeyTooLong.
inline Status check_key(std::string_view key) {
  if (key.empty()) return Status::kInvalidParams;
  if (key.size() > kMaxKeyLen) return Status::kKeyTooLong;
  return Status::kOk;
}
// check_key() as the integer a batch call stores.
inline int32_t key_code(std::string_view key) { return status_code(check_key(key)); }

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

// The digest is already uniformly distributed: its low word is the hash.
struct DigestHash {
  size_t operator()(const KeyDigest& d) const { return static_cast<size_t>(d.lo); }
};

}  // namespace mch
