// LruPolicy ("lru"): least recently used first. PrefixLruPolicy ("prefix_lru") reuses its order.
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include <list>
#include <unordered_map>

#include "dram/eviction_policy.h"

namespace mch {

class LruPolicy : public EvictionPolicy {
 public:
  void insert(uint32_t slot, const KeyDigest&, uint32_t depth) override;
  void access(uint32_t slot) override;
  void remove(uint32_t slot, bool evicted) override;
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override;
  size_t size() const override { return pos_.size(); }

 protected:
  struct Pos {
    std::list<uint32_t>::iterator it;
    uint32_t depth;
  };
  std::list<uint32_t> order_;  // front = most recently used
  std::unordered_map<uint32_t, Pos> pos_;
};

}  // namespace mch
