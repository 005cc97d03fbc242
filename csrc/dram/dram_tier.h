// DramTier: the DRAM tier's bookkeeping over a DramArena: a slab allocator (the arena is cut
// into slab pages; each page serves one size class of fixed-size slots, values rounded up to
// 4 KiB), the index (key digest -> slot; lookups compare digests only, the full key is kept
// because a demoted page is written to NVMe under it) and one EvictionPolicy per size class.
//
// Slot life: kFree -> reserve() -> kWriting -> publish() -> kReady -> (evicted | erased) -> kFree.
// A pinned slot (pins > 0) is never evicted or reused; erasing a pinned slot makes it an
// orphan that is freed by its last unpin.
//
// Not thread-safe: TieredStore holds its mutex around every call. Bytes in the arena are
// written and read by callers outside that mutex, protected by the slot states above.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/keys.h"
#include "dram/dram_arena.h"
#include "dram/eviction_policy.h"

namespace mch {

class DramTier {
 public:
  // Slot lengths are 32-bit and slot ids are (slab page, slot) packed into 32 bits, so a slab
  // holds at most kMaxSlabSize bytes and the arena at most 2^32 slots of 4 KiB.
  static constexpr uint64_t kMaxSlabSize = 2ull << 30;
  static constexpr uint64_t kMaxCapacity = 16ull << 40;

  struct Options {
    uint64_t capacity = 1ull << 30;
    uint64_t slab_size = 32ull << 20;
    std::string eviction = "lru";
    bool hugepages = true;
  };
  enum State : uint8_t { kFree, kWriting, kReady, kOrphan };
  struct Slot {
    State state = kFree;
    uint32_t gen = 0;    // bumped on every reserve; tokens carry it
    uint32_t len = 0;
    uint32_t depth = 0;
    uint32_t pins = 0;
    uint32_t hits = 0;
    KeyDigest digest;
    std::string key;
  };
  // An entry evicted by reserve(). Its bytes are either still in the slot reserve() returned
  // (same size class: nobody else writes there until the caller does) or, for entries dropped
  // to move a slab page to another class, in `copy`.
  struct Victim {
    std::string key;
    KeyDigest digest;
    uint32_t len = 0;
    uint32_t hits = 0;
    AlignedBuffer copy;  // empty when the bytes are in the reserved slot
  };

  explicit DramTier(const Options& opt);  // throws EngineError
  // Throws EngineError (kInvalid, naming the setting) for options the tier cannot honour.
  static const Options& checked(const Options& opt);

  // Ready slot holding `d`, or -1.
  int64_t find(const KeyDigest& d) const;
  // A kWriting slot for `len` bytes, or a negative Status. Entries evicted to make room are
  // appended to *victims: one of the same size class (bytes still in the returned slot), or those
  // of a slab page moved from another class (bytes copied out).
  int64_t reserve(uint64_t len, std::vector<Victim>* victims);
  // kWriting -> kReady and indexed; an older entry of the same key is replaced.
  void publish(uint32_t slot, const std::string& key, const KeyDigest& d, uint32_t len, uint32_t depth);
  void abort(uint32_t slot);  // kWriting -> kFree
  void pin(uint32_t slot) { slots_at(slot).pins++; }
  void unpin(uint32_t slot);
  void touch(uint32_t slot);  // a hit: policy access, hit count
  bool erase(const KeyDigest& d);
  void clear();

  Slot& slot(uint32_t id) { return slots_at(id); }
  bool valid_slot(uint32_t id) const;
  uint64_t offset(uint32_t id) const;
  uint8_t* data(uint32_t id) const { return arena_.base() + offset(id); }
  const DramArena& arena() const { return arena_; }
  uint64_t max_value() const { return opt_.slab_size; }

  struct Stats {
    uint64_t entries = 0, value_bytes = 0, slab_pages = 0, slab_pages_free = 0, size_classes = 0;
    uint64_t evictions = 0, dropped_for_rebalance = 0;
  };
  Stats stats() const;

 private:
  struct SizeClass {
    uint64_t slot_size = 0;
    uint32_t slots_per_page = 0;
    std::vector<uint32_t> pages;
    std::vector<uint32_t> free;  // free slot ids
    std::unique_ptr<EvictionPolicy> policy;
  };
  Slot& slots_at(uint32_t id) { return pages_[id / per_page_max_].slots[id % per_page_max_]; }
  const Slot& slots_at(uint32_t id) const { return pages_[id / per_page_max_].slots[id % per_page_max_]; }
  int class_for(uint64_t len);
  bool assign_free_page(int cls);
  bool steal_page(int cls, std::vector<Victim>* victims);
  void release(uint32_t id);  // -> kFree, back on its class's free list

  struct Page {
    int cls = -1;
    uint64_t slot_size = 0;  // copy of the class's, so offset() never reads classes_
    std::vector<Slot> slots;
  };

  Options opt_;
  DramArena arena_;
  uint32_t per_page_max_;  // slot ids are page * per_page_max_ + index
  std::vector<Page> pages_;
  std::vector<uint32_t> free_pages_;
  std::vector<SizeClass> classes_;
  std::unordered_map<uint64_t, int> class_by_size_;
  std::unordered_map<KeyDigest, uint32_t, DigestHash> index_;
  uint64_t value_bytes_ = 0;
  uint64_t evictions_ = 0, dropped_ = 0;
};

}  // namespace mch
