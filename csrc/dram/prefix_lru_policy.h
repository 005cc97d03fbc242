// PrefixLruPolicy ("prefix_lru"): LRU, but among the coldest pages (a window at the cold end) the
// deepest page of its prefix chain goes first: a page is useful only if every earlier page of its
// chain hits, so deep pages are worth less than shallow ones of equal coldness.
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include "dram/lru_policy.h"

namespace mch {

class PrefixLruPolicy : public LruPolicy {
 public:
  static constexpr int kWindow = 16;  // how many of the coldest pages count as "equally cold"
  explicit PrefixLruPolicy(SlotTable& t) : LruPolicy(t) {}
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override;
};

}  // namespace mch
