// PrefixLruPolicy: see prefix_lru_policy.h.
#include "dram/prefix_lru_policy.h"

namespace mch {

int64_t PrefixLruPolicy::victim(const std::function<bool(uint32_t)>& can_evict) {
  int64_t best = -1;
  uint32_t best_depth = 0;
  int seen = 0;
  for (uint32_t s = order_.back(); s != kNoSlot && seen < kWindow; s = order_.prev(s)) {
    if (!can_evict(s)) continue;
    seen++;
    uint32_t d = table_.depth(s);
    if (best < 0 || d > best_depth) {  // strictly deeper wins; ties keep the colder one
      best = s;
      best_depth = d;
    }
  }
  return best;
}

}  // namespace mch
