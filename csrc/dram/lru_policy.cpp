// LruPolicy: see lru_policy.h.
#include "dram/lru_policy.h"

namespace mch {

void LruPolicy::insert(uint32_t slot, const KeyDigest&, uint32_t depth) {
  order_.push_front(slot);
  pos_[slot] = {order_.begin(), depth};
}

void LruPolicy::access(uint32_t slot) {
  auto it = pos_.find(slot);
  if (it != pos_.end()) order_.splice(order_.begin(), order_, it->second.it);
}

void LruPolicy::remove(uint32_t slot, bool) {
  auto it = pos_.find(slot);
  if (it == pos_.end()) return;
  order_.erase(it->second.it);
  pos_.erase(it);
}

int64_t LruPolicy::victim(const std::function<bool(uint32_t)>& can_evict) {
  for (auto it = order_.rbegin(); it != order_.rend(); ++it)
    if (can_evict(*it)) return *it;
  return -1;
}

}  // namespace mch
