#include "dram/dram_tier.h"

#include <cstring>

#include "common/aligned_buffer.h"
#include "common/error.h"
#include "common/status.h"
#include "common/text.h"

namespace mch {

const DramTier::Options& DramTier::checked(const Options& opt) {
  if (opt.slab_size < kBlock || !is_aligned(opt.slab_size))
    throw EngineError(EngineError::kInvalid, "tiers.dram.slab_size must be a positive multiple of 4 KiB");
  if (opt.slab_size > kMaxSlabSize)
    throw EngineError(EngineError::kInvalid, "tiers.dram.slab_size " + format_bytes(opt.slab_size) +
                                                 " is above the maximum of " + format_bytes(kMaxSlabSize) + "; lower it");
  if (opt.capacity > kMaxCapacity)
    throw EngineError(EngineError::kInvalid, "tiers.dram.capacity " + format_bytes(opt.capacity) +
                                                 " is above the maximum of " + format_bytes(kMaxCapacity) + "; lower it");
  return opt;
}

DramTier::DramTier(const Options& opt) : opt_(checked(opt)), arena_(opt.capacity, opt.hugepages) {
  if (opt_.slab_size > arena_.size())
    throw EngineError(EngineError::kInvalid, "tiers.dram.slab_size is larger than tiers.dram.capacity; lower it");
  EvictionPolicy::make(opt_.eviction);  // validates the name early
  per_page_max_ = static_cast<uint32_t>(opt_.slab_size / kBlock);
  uint64_t n = arena_.size() / opt_.slab_size;
  pages_.resize(n);
  for (uint64_t p = n; p > 0; p--) free_pages_.push_back(static_cast<uint32_t>(p - 1));
}

bool DramTier::valid_slot(uint32_t id) const {
  uint32_t p = id / per_page_max_, i = id % per_page_max_;
  return p < pages_.size() && i < pages_[p].slots.size();
}

uint64_t DramTier::offset(uint32_t id) const {
  uint32_t p = id / per_page_max_, i = id % per_page_max_;
  return uint64_t(p) * opt_.slab_size + uint64_t(i) * pages_[p].slot_size;
}

int64_t DramTier::find(const KeyDigest& d) const {
  auto it = index_.find(d);
  return it == index_.end() ? -1 : static_cast<int64_t>(it->second);
}

int DramTier::class_for(uint64_t len) {
  uint64_t size = std::max<uint64_t>(align_up(len), kBlock);
  auto it = class_by_size_.find(size);
  if (it != class_by_size_.end()) return it->second;
  SizeClass c;
  c.slot_size = size;
  c.slots_per_page = static_cast<uint32_t>(opt_.slab_size / size);
  c.policy = EvictionPolicy::make(opt_.eviction);
  classes_.push_back(std::move(c));
  class_by_size_[size] = static_cast<int>(classes_.size() - 1);
  return static_cast<int>(classes_.size() - 1);
}

bool DramTier::assign_free_page(int cls) {
  if (free_pages_.empty()) return false;
  uint32_t p = free_pages_.back();
  free_pages_.pop_back();
  SizeClass& c = classes_[cls];
  pages_[p].cls = cls;
  pages_[p].slot_size = c.slot_size;
  pages_[p].slots.assign(c.slots_per_page, Slot{});
  c.pages.push_back(p);
  for (uint32_t i = c.slots_per_page; i > 0; i--) c.free.push_back(p * per_page_max_ + i - 1);
  return true;
}

// Moves one slab page from the class holding the most pages to `cls`; its entries are evicted
// (their bytes copied into the victims, since the page is re-cut at once). Only pages with no
// pinned or in-flight slot qualify.
bool DramTier::steal_page(int cls, std::vector<Victim>* victims) {
  int donor = -1;
  for (size_t k = 0; k < classes_.size(); k++)
    if (static_cast<int>(k) != cls && !classes_[k].pages.empty() &&
        (donor < 0 || classes_[k].pages.size() > classes_[donor].pages.size()))
      donor = static_cast<int>(k);
  if (donor < 0) return false;
  SizeClass& d = classes_[donor];
  for (size_t pi = 0; pi < d.pages.size(); pi++) {
    uint32_t p = d.pages[pi];
    bool movable = true;
    for (const Slot& s : pages_[p].slots)
      if (s.state == kWriting || s.state == kOrphan || s.pins > 0) movable = false;
    if (!movable) continue;
    for (uint32_t i = 0; i < pages_[p].slots.size(); i++) {
      Slot& s = pages_[p].slots[i];
      if (s.state == kReady) {
        Victim v;
        v.key = s.key;
        v.digest = s.digest;
        v.len = s.len;
        v.hits = s.hits;
        v.copy = AlignedBuffer(align_up(std::max<uint64_t>(s.len, 1)));
        memcpy(v.copy.data(), data(p * per_page_max_ + i), s.len);
        victims->push_back(std::move(v));
        d.policy->remove(p * per_page_max_ + i, true);
        index_.erase(s.digest);
        value_bytes_ -= s.len;
        dropped_++;
      }
    }
    std::vector<uint32_t> keep;
    for (uint32_t id : d.free)
      if (id / per_page_max_ != p) keep.push_back(id);
    d.free.swap(keep);
    d.pages.erase(d.pages.begin() + static_cast<long>(pi));
    pages_[p].cls = -1;
    pages_[p].slots.clear();
    free_pages_.push_back(p);
    return assign_free_page(cls);
  }
  return false;
}

int64_t DramTier::reserve(uint64_t len, std::vector<Victim>* victims) {
  if (len > opt_.slab_size) return status_code(Status::kValueTooLarge);
  int cls = class_for(len);
  SizeClass& c = classes_[cls];
  if (c.free.empty() && !assign_free_page(cls)) {
    int64_t v = c.policy->victim([&](uint32_t id) {
      const Slot& s = slots_at(id);
      return s.state == kReady && s.pins == 0;
    });
    if (v >= 0) {
      Slot& s = slots_at(static_cast<uint32_t>(v));
      Victim vic;
      vic.key = s.key;
      vic.digest = s.digest;
      vic.len = s.len;
      vic.hits = s.hits;
      victims->push_back(std::move(vic));
      c.policy->remove(static_cast<uint32_t>(v), true);
      index_.erase(s.digest);
      value_bytes_ -= s.len;
      evictions_++;
      s.state = kWriting;
      if (++s.gen == 0) s.gen = 1;  // tokens (gen << 32 | slot) are never 0
      s.pins = 0;
      s.hits = 0;
      s.key.clear();
      return v;
    }
    if (!steal_page(cls, victims)) return status_code(Status::kNoSpace);
  }
  uint32_t id = c.free.back();
  c.free.pop_back();
  Slot& s = slots_at(id);
  s.state = kWriting;
  if (++s.gen == 0) s.gen = 1;  // tokens (gen << 32 | slot) are never 0
  s.pins = 0;
  s.hits = 0;
  return id;
}

void DramTier::publish(uint32_t id, const std::string& key, const KeyDigest& d, uint32_t len, uint32_t depth) {
  erase(d);
  Slot& s = slots_at(id);
  s.state = kReady;
  s.key = key;
  s.digest = d;
  s.len = len;
  s.depth = depth;
  index_[d] = id;
  value_bytes_ += len;
  classes_[pages_[id / per_page_max_].cls].policy->insert(id, d, depth);
}

void DramTier::release(uint32_t id) {
  Slot& s = slots_at(id);
  s.state = kFree;
  s.key.clear();
  s.pins = 0;
  classes_[pages_[id / per_page_max_].cls].free.push_back(id);
}

void DramTier::abort(uint32_t id) {
  if (slots_at(id).state == kWriting) release(id);
}

void DramTier::unpin(uint32_t id) {
  Slot& s = slots_at(id);
  if (s.pins > 0) s.pins--;
  if (s.pins == 0 && s.state == kOrphan) release(id);
}

void DramTier::touch(uint32_t id) {
  Slot& s = slots_at(id);
  s.hits++;
  classes_[pages_[id / per_page_max_].cls].policy->access(id);
}

bool DramTier::erase(const KeyDigest& d) {
  auto it = index_.find(d);
  if (it == index_.end()) return false;
  uint32_t id = it->second;
  index_.erase(it);
  Slot& s = slots_at(id);
  classes_[pages_[id / per_page_max_].cls].policy->remove(id, false);
  value_bytes_ -= s.len;
  if (s.pins > 0)
    s.state = kOrphan;
  else
    release(id);
  return true;
}

void DramTier::clear() {
  std::vector<KeyDigest> all;
  for (const auto& [d, id] : index_) all.push_back(d);
  for (const auto& d : all) erase(d);
}

DramTier::Stats DramTier::stats() const {
  Stats s;
  s.entries = index_.size();
  s.value_bytes = value_bytes_;
  s.slab_pages = pages_.size();
  s.slab_pages_free = free_pages_.size();
  s.size_classes = classes_.size();
  s.evictions = evictions_;
  s.dropped_for_rebalance = dropped_;
  return s;
}

}  // namespace mch
