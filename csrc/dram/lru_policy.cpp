// LruPolicy: see lru_policy.h.
#include "dram/lru_policy.h"

namespace mch {

int64_t LruPolicy::victim(const std::function<bool(uint32_t)>& can_evict) {
  for (uint32_t s = order_.back(); s != kNoSlot; s = order_.prev(s))
    if (can_evict(s)) return s;
  return -1;
}

}  // namespace mch
