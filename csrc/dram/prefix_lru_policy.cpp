// PrefixLruPolicy: see prefix_lru_policy.h.
#include "dram/prefix_lru_policy.h"

namespace mch {

int64_t PrefixLruPolicy::victim(const std::function<bool(uint32_t)>& can_evict) {
  int64_t best = -1;
  uint32_t best_depth = 0;
  int seen = 0;
  for (auto it = order_.rbegin(); it != order_.rend() && seen < kWindow; ++it) {
    if (!can_evict(*it)) continue;
    seen++;
    uint32_t d = pos_[*it].depth;
    if (best < 0 || d > best_depth) {  // strictly deeper wins; ties keep the colder one
      best = *it;
      best_depth = d;
    }
  }
  return best;
}

}  // namespace mch
