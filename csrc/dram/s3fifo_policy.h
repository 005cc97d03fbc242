// S3FifoPolicy ("s3fifo"): a small FIFO for new pages, a main FIFO for pages hit again, and a
// ghost list of recently evicted digests: one-hit wonders leave quickly, re-used pages stay.
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include <deque>
#include <list>
#include <unordered_map>
#include <unordered_set>

#include "dram/eviction_policy.h"

namespace mch {

class S3FifoPolicy : public EvictionPolicy {
 public:
  void insert(uint32_t slot, const KeyDigest& d, uint32_t depth) override;
  void access(uint32_t slot) override;
  void remove(uint32_t slot, bool evicted) override;
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override;
  size_t size() const override { return meta_.size(); }

 private:
  struct Meta {
    std::list<uint32_t>::iterator it;
    KeyDigest digest;
    uint8_t freq;
    bool in_main;
  };
  void remember(const KeyDigest& d);
  std::list<uint32_t> small_, main_;
  std::unordered_map<uint32_t, Meta> meta_;
  std::unordered_set<KeyDigest, DigestHash> ghost_set_;
  std::deque<KeyDigest> ghost_fifo_;
};

}  // namespace mch
