// PageIndex: key digest -> location of the newest record of that key, in an open-addressing
// hash table (linear probing, backward-shift deletion, 40 bytes a slot, load <= 0.75).
//
// Not thread-safe: the NVMe engine guards it with its index mutex.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/checksum.h"

namespace mch {

struct PageLocation {
  uint64_t value_checksum = 0;
  uint32_t value_len = 0;
  uint32_t region = 0;
  uint32_t block = 0;  // record offset in the region, in 4 KiB blocks
  uint32_t flags = 0;  // kHit: read since written (reinsertion candidate)
};

class PageIndex {
 public:
  enum Flags : uint32_t { kHit = 1 };

  PageIndex() { clear(); }

  // Inserts or replaces. Returns true if the key was new.
  bool put(const KeyDigest& d, const PageLocation& loc);
  // Returns the slot's location or nullptr (pointer valid until the next put/erase).
  PageLocation* find(const KeyDigest& d);
  bool erase(const KeyDigest& d);
  void clear() {
    slots_.assign(16, Slot{});
    mask_ = 15;
    size_ = 0;
  }
  // Digests of every page located in `region` (a full scan; for the rare slow path).
  std::vector<KeyDigest> keys_in_region(uint32_t region) const;

  size_t size() const { return size_; }
  size_t memory_bytes() const { return slots_.capacity() * sizeof(Slot); }

 private:
  struct Slot {
    KeyDigest key;  // empty() = free slot
    PageLocation loc;
  };
  static_assert(sizeof(Slot) == 40, "index slot should stay 40 bytes");

  size_t home(const KeyDigest& d) const { return static_cast<size_t>(d.lo) & mask_; }
  void rehash(size_t capacity);

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace mch
