// EvictionPolicy: which DRAM slot to give up when a size class is full. One instance per size
// class; slots are identified by the DramTier's slot ids.
//
//   lru         least recently used first.
//   s3fifo      S3-FIFO (small FIFO for new pages, main FIFO for pages hit again, ghost list of
//               recently evicted digests): one-hit wonders leave quickly, re-used pages stay.
//   prefix_lru  LRU, but among the coldest pages (a window at the cold end) the deepest page of
//               its prefix chain goes first: a page is useful only if every earlier page of its
//               chain hits, so deep pages are worth less than shallow ones of equal coldness.
//
// Policies keep their per-page state in the DramTier's slot table (SlotTable: list links, a few
// bits, the page's depth and digest), so they allocate nothing per page; only S3-FIFO's ghost
// list of evicted digests is its own.
//
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/keys.h"

namespace mch {

constexpr uint32_t kNoSlot = UINT32_MAX;

// Links of a doubly linked list threaded through the slot table.
struct ListLinks {
  uint32_t prev = kNoSlot, next = kNoSlot;
};

// What a policy may read and write per slot (implemented by DramTier).
class SlotTable {
 public:
  virtual ~SlotTable() = default;
  virtual ListLinks& links(uint32_t slot) = 0;
  virtual uint8_t policy_bits(uint32_t slot) const = 0;  // 4 bits a policy may use
  virtual void set_policy_bits(uint32_t slot, uint8_t bits) = 0;
  virtual uint32_t depth(uint32_t slot) const = 0;  // position in its prefix chain (0 unknown)
  virtual const KeyDigest& digest(uint32_t slot) const = 0;
};

// A doubly linked list of slots (front = newest), its links in the slot table.
class SlotList {
 public:
  explicit SlotList(SlotTable& t) : t_(t) {}
  void push_front(uint32_t s);
  void remove(uint32_t s);
  void move_to_front(uint32_t s) {
    remove(s);
    push_front(s);
  }
  uint32_t back() const { return tail_; }
  uint32_t front() const { return head_; }
  uint32_t prev(uint32_t s) const { return t_.links(s).prev; }  // toward the front
  bool empty() const { return size_ == 0; }
  // Visits from the back (oldest) toward the front until visit returns false; false if it did.
  bool walk_back(const std::function<bool(uint32_t)>& visit) const {
    for (uint32_t s = tail_; s != kNoSlot; s = prev(s))
      if (!visit(s)) return false;
    return true;
  }
  size_t size() const { return size_; }

 private:
  SlotTable& t_;
  uint32_t head_ = kNoSlot, tail_ = kNoSlot;
  size_t size_ = 0;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void insert(uint32_t slot) = 0;
  virtual void access(uint32_t slot) = 0;
  // `evicted`: the slot leaves because of eviction (S3-FIFO remembers it), not removal.
  virtual void remove(uint32_t slot, bool evicted) = 0;
  // A slot for which can_evict(slot) holds, or -1. Does not remove it.
  virtual int64_t victim(const std::function<bool(uint32_t)>& can_evict) = 0;
  // Visits slots from the one to go first toward the newest (an estimate where the policy
  // reorders while choosing) until visit returns false. Changes nothing.
  virtual void walk_coldest(const std::function<bool(uint32_t)>& visit) const = 0;
  virtual size_t size() const = 0;

  // Names: "lru", "s3fifo", "prefix_lru". Throws std::invalid_argument for another name.
  static std::unique_ptr<EvictionPolicy> make(const std::string& name, SlotTable& table);
};

}  // namespace mch
