// DramTier: the DRAM tier's bookkeeping over a DramArena: a slab allocator (the arena is cut
// into slab pages; each page serves one size class of fixed-size slots), the index (SlotIndex:
// key digest -> slot; lookups compare digests only) and one EvictionPolicy per size class.
//
// Size classes: a value of up to 4 KiB takes the next power of two from min_slot() (256 B on
// arenas below 512 GiB), a larger one a multiple of 4 KiB; KV pages of one model have one size,
// so there is one class and no fragmentation.
//
// Memory per page (docs/architecture.md, "Memory per key"): a 40-byte Slot for every slot of
// every slab page in use (the policy's links and bits live in it), 8 bytes of index per entry at
// most 75% full, and, only when keys are kept (an NVMe tier behind: a demoted page is written
// under its key), the key itself in a heap block of its length + 2.
//
// Slot life: kFree -> reserve() -> kWriting -> prepare()/publish() -> kReady -> (evicted |
// erased) -> kFree. A pinned slot (pins > 0) is never evicted or reused; erasing a pinned slot
// makes it an orphan that is freed by its last unpin.
//
// Clean pages (issue 15): a ready slot whose value is on NVMe already (written there, or
// promoted from there) is marked clean; evicting it needs no write. reserve(..., clean_only)
// takes only free or clean slots, so a reader never waits for a write; clean_bytes() (free room
// included) is the level TieredStore's demoter keeps above its target.
//
// Not thread-safe: TieredStore holds its mutex around every call. Bytes in the arena are
// written and read by callers outside that mutex, protected by the slot states above.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/keys.h"
#include "dram/dram_arena.h"
#include "dram/eviction_policy.h"
#include "dram/slot_index.h"

namespace mch {

class DramTier final : public SlotTable {
 public:
  // Slot lengths are 32-bit, so a slab holds at most kMaxSlabSize bytes.
  static constexpr uint64_t kMaxSlabSize = 2ull << 30;

  struct Options {
    uint64_t capacity = 1ull << 30;
    uint64_t slab_size = 32ull << 20;
    std::string eviction = "lru";
    bool hugepages = true;
    bool keep_keys = true;  // keep each page's key (needed to demote it to NVMe)
  };
  enum State : uint8_t { kFree, kWriting, kReady, kOrphan };
  struct Slot {
    KeyDigest digest;
    uint32_t gen = 0;    // bumped on every reserve; tokens carry it
    uint32_t len = 0;
    uint32_t pins = 0;
    ListLinks links;     // the eviction policy's list
    uint16_t depth = 0;  // position in its prefix chain, saturating (0 unknown)
    State state = kFree;
    uint8_t flags = 0;   // bit 0: read since stored; bit 1: clean (on NVMe); bits 4-7: the eviction policy's
  };
  // An entry evicted by reserve(). Its bytes are either still in the slot reserve() returned
  // (same size class: nobody else writes there until the caller does) or, for entries dropped
  // to move a slab page to another class, in `copy`.
  struct Victim {
    std::string key;  // "" unless keys are kept
    KeyDigest digest;
    uint32_t len = 0;
    uint32_t hits = 0;  // 1 if it was read since stored
    bool clean = false;  // its value is on NVMe already: leaving DRAM needs no write
    AlignedBuffer copy;  // empty when the bytes are in the reserved slot
  };

  explicit DramTier(const Options& opt);  // throws EngineError
  // Throws EngineError (kInvalid, naming the setting) for options the tier cannot honour.
  static const Options& checked(const Options& opt);

  // Ready slot holding `d`, or -1.
  int64_t find(const KeyDigest& d) const { return index_.find(d); }
  // A kWriting slot for `len` bytes, or a negative Status. Entries evicted to make room are
  // appended to *victims: one of the same size class (bytes still in the returned slot), or those
  // of a slab page moved from another class (bytes copied out).
  // clean_only: take a free slot or evict a clean one among the coldest quarter of the class
  // (at most kCleanScan slots; no victim that still needs a write; no slab page is moved):
  // kNoSpace when there is none.
  int64_t reserve(uint64_t len, std::vector<Victim>* victims, bool clean_only = false);
  // Records what a kWriting slot will hold (the key only where keys are kept).
  void prepare(uint32_t slot, std::string_view key, const KeyDigest& d, uint64_t len, uint32_t depth);
  // kWriting -> kReady and indexed; an older entry of the same key is replaced.
  void publish(uint32_t slot);
  void abort(uint32_t slot);  // kWriting -> kFree
  void pin(uint32_t slot) { slots_at(slot).pins++; }
  void unpin(uint32_t slot);
  void touch(uint32_t slot);  // a hit: policy access, hit flag
  bool erase(const KeyDigest& d);
  void clear();
  // Erases every entry whose key starts with `prefix` and appends their digests to *erased.
  // False (nothing erased) when the tier keeps no keys: it cannot tell which entries match.
  bool erase_prefix(std::string_view prefix, std::vector<KeyDigest>* erased);
  bool keeps_keys() const { return opt_.keep_keys; }

  // ---- clean pages ----
  static constexpr uint8_t kCleanFlag = 2;
  static constexpr uint32_t kCleanScan = 256;  // how far from the cold end a clean victim is looked for
  bool is_clean(uint32_t id) const { return slots_at(id).flags & kCleanFlag; }
  void mark_clean(uint32_t id);  // a ready slot whose value is on NVMe now
  // Bytes that can be taken without a write: free slab pages, free slots, clean ready slots.
  uint64_t clean_bytes() const;
  // Visits ready, unpinned, dirty slots from the coldest (eviction order, class by class) until
  // visit returns false.
  void for_each_cold_dirty(const std::function<bool(uint32_t)>& visit) const;

  Slot& slot(uint32_t id) { return slots_at(id); }
  const Slot& slot(uint32_t id) const { return slots_at(id); }
  std::string key_of(uint32_t id) const;  // "" unless keys are kept
  bool valid_slot(uint32_t id) const;
  uint64_t offset(uint32_t id) const;
  uint64_t slot_size(uint32_t id) const { return pages_[id / per_page_max_].slot_size; }
  uint8_t* data(uint32_t id) const { return arena_.base() + offset(id); }
  const DramArena& arena() const { return arena_; }
  uint64_t max_value() const { return opt_.slab_size; }
  uint64_t min_slot() const { return min_slot_; }

  struct Stats {
    uint64_t entries = 0, value_bytes = 0, slab_pages = 0, slab_pages_free = 0, size_classes = 0;
    uint64_t evictions = 0, dropped_for_rebalance = 0, metadata_bytes = 0;
  };
  Stats stats() const;

  // SlotTable (what the eviction policies keep per slot).
  ListLinks& links(uint32_t s) override { return slots_at(s).links; }
  uint8_t policy_bits(uint32_t s) const override { return slots_at(s).flags >> 4; }
  void set_policy_bits(uint32_t s, uint8_t bits) override {
    slots_at(s).flags = static_cast<uint8_t>((slots_at(s).flags & 0x0f) | (bits << 4));
  }
  uint32_t depth(uint32_t s) const override { return slots_at(s).depth; }
  const KeyDigest& digest(uint32_t s) const override { return slots_at(s).digest; }

 private:
  struct SizeClass {
    uint64_t slot_size = 0;
    uint32_t slots_per_page = 0;
    std::vector<uint32_t> pages;
    std::vector<uint32_t> free;  // free slot ids
    std::unique_ptr<EvictionPolicy> policy;
    uint64_t clean = 0;  // clean ready slots
  };
  struct Page {
    int cls = -1;
    uint64_t slot_size = 0;  // copy of the class's, so offset() never reads classes_
    std::vector<Slot> slots;
    std::vector<std::unique_ptr<char[]>> keys;  // per slot: u16 length + bytes (keep_keys only)
  };
  struct DigestOfSlot {
    const DramTier* tier;
    const KeyDigest& operator()(uint32_t id) const { return tier->slots_at(id).digest; }
  };

  Slot& slots_at(uint32_t id) { return pages_[id / per_page_max_].slots[id % per_page_max_]; }
  const Slot& slots_at(uint32_t id) const { return pages_[id / per_page_max_].slots[id % per_page_max_]; }
  int class_for(uint64_t len);
  bool assign_free_page(int cls);
  bool steal_page(int cls, std::vector<Victim>* victims);
  Victim evict(uint32_t id, bool copy_bytes);  // a ready slot out of the index and its policy
  void release(uint32_t id);  // -> kFree, back on its class's free list
  void drop_key(uint32_t id);
  void forget_clean(uint32_t id);  // the slot's value leaves: it no longer counts as clean
  int64_t coldest_clean(const SizeClass& c) const;

  Options opt_;
  DramArena arena_;
  uint64_t min_slot_;
  uint32_t per_page_max_;  // slot ids are page * per_page_max_ + index
  std::vector<Page> pages_;
  std::vector<uint32_t> free_pages_;
  std::vector<SizeClass> classes_;
  std::unordered_map<uint64_t, int> class_by_size_;
  SlotIndex<DigestOfSlot> index_{DigestOfSlot{this}};
  uint64_t value_bytes_ = 0, key_bytes_ = 0;
  uint64_t evictions_ = 0, dropped_ = 0;
};

}  // namespace mch
