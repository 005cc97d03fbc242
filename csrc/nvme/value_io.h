// Value I/O planning: how a value held in (put) or destined for (get) a caller's scatter-gather
// list maps onto one vectored O_DIRECT I/O that starts at a block-aligned file offset.
//
// O_DIRECT needs address, file offset and length 4 KiB aligned. Aligned runs of caller memory
// are used in place; everything else goes through bounce memory, in runs that start and end on
// block boundaries, with a copy between the bounce span and the caller's bytes.
//
// Pure functions of their arguments (no I/O, no state): unit-testable on plain memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/sg_list.h"

namespace mch {

// One iovec of the I/O: caller memory used in place, or a span of bounce memory.
struct IoPiece {
  bool bounce;
  uint8_t* addr;  // caller memory (bounce == false)
  size_t off;     // offset in bounce memory (bounce == true)
  size_t len;
};

// Bytes to copy between bounce memory and the caller (before a write, after a read).
struct BounceCopy {
  size_t off;  // offset in bounce memory
  uint8_t* user;
  size_t len;
};

struct ValueIoPlan {
  std::vector<IoPiece> pieces;
  std::vector<BounceCopy> copies;
  size_t bounce_bytes = 0;  // bounce memory the pieces span (a block multiple)
  size_t bounce_used = 0;   // of which caller bytes (the rest is padding, zeroed on writes)

  void clear() {
    pieces.clear();
    copies.clear();
    bounce_bytes = bounce_used = 0;
  }
};

// Plans the I/O of the first `len` value bytes of `segs` into *plan (cleared first).
void plan_value_io(const SgList& segs, uint64_t len, ValueIoPlan* plan);

}  // namespace mch
