// S3FifoPolicy: see s3fifo_policy.h.
#include "dram/s3fifo_policy.h"

#include <algorithm>

namespace mch {

void S3FifoPolicy::insert(uint32_t slot) {
  bool ghost = ghost_set_.erase(t_.digest(slot)) > 0;
  (ghost ? main_ : small_).push_front(slot);
  t_.set_policy_bits(slot, ghost ? kInMain : 0);
}

void S3FifoPolicy::access(uint32_t slot) {
  uint8_t f = freq(slot);
  if (f < 3) t_.set_policy_bits(slot, static_cast<uint8_t>((in_main(slot) ? kInMain : 0) | (f + 1)));
}

void S3FifoPolicy::remove(uint32_t slot, bool evicted) {
  bool main = in_main(slot);
  (main ? main_ : small_).remove(slot);
  if (evicted && !main) remember(t_.digest(slot));
  t_.set_policy_bits(slot, 0);
}

int64_t S3FifoPolicy::victim(const std::function<bool(uint32_t)>& can_evict) {
  // Each step either finds a victim or moves one page; bound the walk so pinned pages
  // cannot make it spin forever.
  size_t budget = 4 * size() + 4;
  while (budget-- > 0 && size() > 0) {
    bool from_small = !small_.empty() && (small_.size() * 10 >= size() || main_.empty());
    SlotList& q = from_small ? small_ : main_;
    uint32_t slot = q.back();
    uint8_t f = freq(slot);
    if (from_small && f > 0) {  // re-used while new: promote to main
      small_.remove(slot);
      main_.push_front(slot);
      t_.set_policy_bits(slot, kInMain);
      continue;
    }
    if (!from_small && f > 0) {  // second chance in main
      t_.set_policy_bits(slot, static_cast<uint8_t>(kInMain | (f - 1)));
      main_.move_to_front(slot);
      continue;
    }
    if (can_evict(slot)) return slot;
    q.move_to_front(slot);  // busy (pinned): look further
  }
  return -1;
}

void S3FifoPolicy::remember(const KeyDigest& d) {
  ghost_set_.insert(d);
  ghost_fifo_.push_back(d);
  size_t cap = std::max<size_t>(size(), 64);
  while (ghost_fifo_.size() > cap) {
    ghost_set_.erase(ghost_fifo_.front());
    ghost_fifo_.pop_front();
  }
}

}  // namespace mch
