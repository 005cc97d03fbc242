// LruPolicy ("lru"): least recently used first, one list threaded through the slot table.
// PrefixLruPolicy ("prefix_lru") reuses its order.
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include "dram/eviction_policy.h"

namespace mch {

class LruPolicy : public EvictionPolicy {
 public:
  explicit LruPolicy(SlotTable& t) : table_(t), order_(t) {}
  void insert(uint32_t slot) override { order_.push_front(slot); }
  void access(uint32_t slot) override { order_.move_to_front(slot); }
  void remove(uint32_t slot, bool) override { order_.remove(slot); }
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override;
  size_t size() const override { return order_.size(); }
  void walk_coldest(const std::function<bool(uint32_t)>& visit) const override { order_.walk_back(visit); }

 protected:
  SlotTable& table_;
  SlotList order_;  // front = most recently used
};

}  // namespace mch
