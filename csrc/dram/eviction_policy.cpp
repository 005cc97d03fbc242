// EvictionPolicy::make (one file per policy: lru_policy, prefix_lru_policy, s3fifo_policy) and
// SlotList, the intrusive list the policies share.
#include "dram/eviction_policy.h"

#include <stdexcept>

#include "dram/lru_policy.h"
#include "dram/prefix_lru_policy.h"
#include "dram/s3fifo_policy.h"

namespace mch {

void SlotList::push_front(uint32_t s) {
  ListLinks& l = t_.links(s);
  l.prev = kNoSlot;
  l.next = head_;
  if (head_ != kNoSlot) t_.links(head_).prev = s;
  head_ = s;
  if (tail_ == kNoSlot) tail_ = s;
  size_++;
}

void SlotList::remove(uint32_t s) {
  ListLinks& l = t_.links(s);
  if (l.prev != kNoSlot) t_.links(l.prev).next = l.next; else head_ = l.next;
  if (l.next != kNoSlot) t_.links(l.next).prev = l.prev; else tail_ = l.prev;
  l = ListLinks{};
  size_--;
}

std::unique_ptr<EvictionPolicy> EvictionPolicy::make(const std::string& name, SlotTable& table) {
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(new LruPolicy(table));
  if (name == "s3fifo") return std::unique_ptr<EvictionPolicy>(new S3FifoPolicy(table));
  if (name == "prefix_lru") return std::unique_ptr<EvictionPolicy>(new PrefixLruPolicy(table));
  throw std::invalid_argument("eviction policy must be lru, s3fifo or prefix_lru, not '" + name + "'");
}

}  // namespace mch
