// S3FifoPolicy: see s3fifo_policy.h.
#include "dram/s3fifo_policy.h"

#include <algorithm>

namespace mch {

void S3FifoPolicy::insert(uint32_t slot, const KeyDigest& d, uint32_t) {
  bool ghost = ghost_set_.erase(d) > 0;
  auto& q = ghost ? main_ : small_;
  q.push_front(slot);
  meta_[slot] = {q.begin(), d, 0, ghost};
}

void S3FifoPolicy::access(uint32_t slot) {
  auto it = meta_.find(slot);
  if (it != meta_.end() && it->second.freq < 3) it->second.freq++;
}

void S3FifoPolicy::remove(uint32_t slot, bool evicted) {
  auto it = meta_.find(slot);
  if (it == meta_.end()) return;
  Meta& m = it->second;
  (m.in_main ? main_ : small_).erase(m.it);
  if (evicted && !m.in_main) remember(m.digest);
  meta_.erase(it);
}

int64_t S3FifoPolicy::victim(const std::function<bool(uint32_t)>& can_evict) {
  // Each step either finds a victim or moves one page; bound the walk so pinned pages
  // cannot make it spin forever.
  size_t budget = 4 * meta_.size() + 4;
  while (budget-- > 0 && !meta_.empty()) {
    bool from_small = !small_.empty() && (small_.size() * 10 >= meta_.size() || main_.empty());
    auto& q = from_small ? small_ : main_;
    uint32_t slot = q.back();
    Meta& m = meta_[slot];
    if (from_small && m.freq > 0) {  // re-used while new: promote to main
      small_.pop_back();
      main_.push_front(slot);
      m.it = main_.begin();
      m.in_main = true;
      m.freq = 0;
      continue;
    }
    if (!from_small && m.freq > 0) {  // second chance in main
      m.freq--;
      main_.splice(main_.begin(), main_, m.it);
      continue;
    }
    if (can_evict(slot)) return slot;
    q.splice(q.begin(), q, m.it);  // busy (pinned): look further
  }
  return -1;
}

void S3FifoPolicy::remember(const KeyDigest& d) {
  ghost_set_.insert(d);
  ghost_fifo_.push_back(d);
  size_t cap = std::max<size_t>(meta_.size(), 64);
  while (ghost_fifo_.size() > cap) {
    ghost_set_.erase(ghost_fifo_.front());
    ghost_fifo_.pop_front();
  }
}

}  // namespace mch
