// Scatter-gather lists: a value spread over caller buffers (one Segment each), and the three
// operations every layer needs on them: validate/measure, gather into contiguous memory, scatter
// out of it. Pure functions; thread-safe.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/checksum.h"

namespace mch {

// One caller buffer of a scatter-gather list.
struct Segment {
  uint8_t* ptr = nullptr;
  uint64_t len = 0;
};
using SgList = std::vector<Segment>;

// Total bytes of `sg`; *null_ptr becomes true when a non-empty segment has no pointer.
inline uint64_t sg_bytes(const SgList& sg, bool* null_ptr) {
  uint64_t n = 0;
  for (const Segment& s : sg) {
    n += s.len;
    if (s.len > 0 && s.ptr == nullptr) *null_ptr = true;
  }
  return n;
}

// Copies the first `len` bytes of `sg` to `dst`; returns the bytes copied.
inline uint64_t gather(const SgList& sg, uint8_t* dst, uint64_t len) {
  uint64_t done = 0;
  for (const Segment& s : sg) {
    if (done == len) break;
    uint64_t n = std::min(s.len, len - done);
    if (n) memcpy(dst + done, s.ptr, n);
    done += n;
  }
  return done;
}

// Copies `len` bytes from `src` over the segments of `sg`, in order.
inline void scatter(const uint8_t* src, uint64_t len, const SgList& sg) {
  uint64_t done = 0;
  for (const Segment& s : sg) {
    if (done == len) break;
    uint64_t n = std::min(s.len, len - done);
    if (n) memcpy(s.ptr, src + done, n);
    done += n;
  }
}

// XXH3-64 of the first `len` bytes of `sg` (the same value as checksum64 over them).
inline uint64_t sg_checksum(const SgList& sg, uint64_t len) {
  StreamChecksum cs;
  for (const Segment& s : sg) {
    if (len == 0) break;
    uint64_t take = std::min(s.len, len);
    cs.update(s.ptr, take);
    len -= take;
  }
  return cs.digest();
}

}  // namespace mch
