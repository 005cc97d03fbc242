// S3FifoPolicy ("s3fifo"): a small FIFO for new pages, a main FIFO for pages hit again, and a
// ghost list of recently evicted digests: one-hit wonders leave quickly, re-used pages stay.
// Both FIFOs are threaded through the slot table; a page's hit count (0..3) and which FIFO it is
// in are its policy bits. The ghost list (as long as the cache, at most) is the policy's own.
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include <deque>
#include <unordered_set>

#include "dram/eviction_policy.h"

namespace mch {

class S3FifoPolicy : public EvictionPolicy {
 public:
  explicit S3FifoPolicy(SlotTable& t) : t_(t), small_(t), main_(t) {}
  void insert(uint32_t slot) override;
  void access(uint32_t slot) override;
  void remove(uint32_t slot, bool evicted) override;
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override;
  size_t size() const override { return small_.size() + main_.size(); }
  // The small FIFO first (new pages leave first unless hit again), then the main FIFO.
  void walk_coldest(const std::function<bool(uint32_t)>& visit) const override {
    if (small_.walk_back(visit)) main_.walk_back(visit);
  }

 private:
  static constexpr uint8_t kFreqMask = 3, kInMain = 4;
  uint8_t freq(uint32_t s) const { return t_.policy_bits(s) & kFreqMask; }
  bool in_main(uint32_t s) const { return t_.policy_bits(s) & kInMain; }
  void remember(const KeyDigest& d);

  SlotTable& t_;
  SlotList small_, main_;
  std::unordered_set<KeyDigest, DigestHash> ghost_set_;
  std::deque<KeyDigest> ghost_fifo_;
};

}  // namespace mch
