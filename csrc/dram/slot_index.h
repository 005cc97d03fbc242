// SlotIndex: the DRAM tier's index, key digest -> slot id, in 8 bytes per table entry: the low
// 32 bits of the digest (which also place the entry) and the slot id. A lookup that matches
// those 32 bits confirms the whole 128-bit digest against the slot itself (the slot table keeps
// it), so the index stores no digest of its own. Open addressing, linear probing, backward-shift
// deletion (no tombstones), at most 75% full: 11 to 21 bytes per indexed page.
//
// DigestOf: a callable slot id -> const KeyDigest& (the DramTier's slot table).
// Not thread-safe: the owner (TieredStore, through DramTier) locks around it.
#pragma once
#include <cstdint>
#include <vector>

#include "common/keys.h"
#include "common/open_hash_map.h"

namespace mch {

template <class DigestOf>
class SlotIndex {
 public:
  explicit SlotIndex(DigestOf digest_of) : digest_of_(digest_of) { clear(); }

  // The slot holding d, or -1.
  int64_t find(const KeyDigest& d) const {
    const uint32_t tag = static_cast<uint32_t>(d.lo);
    for (size_t i = tag & mask();; i = next(i)) {
      const Entry& e = table_[i];
      if (e.slot1 == 0) return -1;
      if (e.tag == tag && digest_of_(e.slot1 - 1) == d) return e.slot1 - 1;
    }
  }
  // Adds d -> slot; d must not be indexed yet.
  void insert(const KeyDigest& d, uint32_t slot) {
    if ((size_ + 1) * 4 > table_.size() * 3) rehash(table_.size() * 2);
    place(Entry{static_cast<uint32_t>(d.lo), slot + 1});
    size_++;
  }
  bool erase(const KeyDigest& d) {
    int64_t s = find(d);
    if (s < 0) return false;
    size_t i = static_cast<uint32_t>(d.lo) & mask();
    while (table_[i].slot1 != static_cast<uint32_t>(s) + 1) i = next(i);
    backward_shift_erase(
        table_, i, [](const Entry& e) { return size_t(e.tag); }, [](const Entry& e) { return e.slot1 == 0; });
    size_--;
    return true;
  }
  void clear() {
    table_.assign(kInitial, Entry{});
    size_ = 0;
  }
  // f(slot) for every indexed slot.
  template <class F>
  void for_each(F&& f) const {
    for (const Entry& e : table_)
      if (e.slot1) f(e.slot1 - 1);
  }
  size_t size() const { return size_; }
  size_t memory_bytes() const { return table_.capacity() * sizeof(Entry); }

 private:
  struct Entry {
    uint32_t tag = 0;
    uint32_t slot1 = 0;  // slot id + 1; 0: free
  };
  static constexpr size_t kInitial = 1024;
  size_t mask() const { return table_.size() - 1; }
  size_t next(size_t i) const { return (i + 1) & mask(); }
  void place(Entry e) {
    size_t i = e.tag & mask();
    while (table_[i].slot1 != 0) i = next(i);
    table_[i] = e;
  }
  void rehash(size_t capacity) {
    std::vector<Entry> old(capacity);
    old.swap(table_);
    for (const Entry& e : old)
      if (e.slot1) place(e);
  }

  DigestOf digest_of_;
  std::vector<Entry> table_;
  size_t size_ = 0;
};

}  // namespace mch
