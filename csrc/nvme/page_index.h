// PageIndex: key digest -> location of the newest record of that key: an OpenHashMap
// (common/open_hash_map.h) with 40-byte slots kept at most 75% full.
//
// Not thread-safe: the NVMe engine guards it with its index mutex.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/keys.h"
#include "common/open_hash_map.h"

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

  // Inserts or replaces. Returns true if the key was new.
  bool put(const KeyDigest& d, const PageLocation& loc) { return map_.put(d, loc); }
  // Returns the slot's location or nullptr (pointer valid until the next put/erase).
  PageLocation* find(const KeyDigest& d) { return map_.find(d); }
  bool erase(const KeyDigest& d) { return map_.erase(d); }
  void clear() { map_.clear(); }
  // Digests of every page located in `region` (a full scan; for the rare slow path).
  std::vector<KeyDigest> keys_in_region(uint32_t region) const {
    std::vector<KeyDigest> out;
    map_.for_each([&](const KeyDigest& d, const PageLocation& loc) {
      if (loc.region == region) out.push_back(d);
    });
    return out;
  }

  // Every digest indexed (a full scan).
  std::vector<KeyDigest> digests() const {
    std::vector<KeyDigest> out;
    out.reserve(map_.size());
    map_.for_each([&](const KeyDigest& d, const PageLocation&) { out.push_back(d); });
    return out;
  }

  size_t size() const { return map_.size(); }
  size_t memory_bytes() const { return map_.memory_bytes(); }

 private:
  struct Traits {
    static size_t hash(const KeyDigest& d) { return static_cast<size_t>(d.lo); }
    static bool empty(const KeyDigest& d) { return d.empty(); }
  };
  using Map = OpenHashMap<KeyDigest, PageLocation, Traits>;
  static_assert(sizeof(Map::Slot) == 40, "index slot should stay 40 bytes");
  Map map_{16, 75};
};

}  // namespace mch
