#include "dram/dram_tier.h"

#include <algorithm>
#include <cstring>

#include "common/aligned_buffer.h"
#include "common/error.h"
#include "common/status.h"
#include "common/text.h"

namespace mch {

static_assert(sizeof(DramTier::Slot) == 40, "the per-slot cost docs/architecture.md states");

namespace {
constexpr uint64_t kMinSlot = 256;

uint64_t bit_ceil(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}
}  // namespace

const DramTier::Options& DramTier::checked(const Options& opt) {
  if (opt.slab_size < kBlock || !is_aligned(opt.slab_size))
    throw EngineError(EngineError::kInvalid, "tiers.dram.slab_size must be a positive multiple of 4 KiB");
  if (opt.slab_size > kMaxSlabSize)
    throw EngineError(EngineError::kInvalid, "tiers.dram.slab_size " + format_bytes(opt.slab_size) +
                                                 " is above the maximum of " + format_bytes(kMaxSlabSize) + "; lower it");
  return opt;
}

DramTier::DramTier(const Options& opt) : opt_(checked(opt)), arena_(opt.capacity, opt.hugepages) {
  if (opt_.slab_size > arena_.size())
    throw EngineError(EngineError::kInvalid, "tiers.dram.slab_size is larger than tiers.dram.capacity; lower it");
  (void)EvictionPolicy::make(opt_.eviction, *this);  // validates the name early
  // Slot ids are 32-bit: the smallest slot grows with arenas of 512 GiB and more.
  min_slot_ = kMinSlot;
  while (arena_.size() / min_slot_ >= (1ull << 31)) min_slot_ *= 2;
  per_page_max_ = static_cast<uint32_t>(opt_.slab_size / std::min<uint64_t>(min_slot_, opt_.slab_size));
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

std::string DramTier::key_of(uint32_t id) const {
  const Page& pg = pages_[id / per_page_max_];
  if (pg.keys.empty()) return {};
  const char* k = pg.keys[id % per_page_max_].get();
  if (!k) return {};
  uint16_t n;
  memcpy(&n, k, sizeof n);
  return std::string(k + sizeof n, n);
}

// Up to 4 KiB: the next power of two from min_slot_; above: a multiple of 4 KiB.
int DramTier::class_for(uint64_t len) {
  uint64_t size = std::max(min_slot_, len <= kBlock ? bit_ceil(std::max<uint64_t>(len, 1)) : align_up(len));
  auto it = class_by_size_.find(size);
  if (it != class_by_size_.end()) return it->second;
  SizeClass c;
  c.slot_size = size;
  c.slots_per_page = static_cast<uint32_t>(opt_.slab_size / size);
  c.policy = EvictionPolicy::make(opt_.eviction, *this);
  classes_.push_back(std::move(c));
  class_by_size_[size] = static_cast<int>(classes_.size() - 1);
  return static_cast<int>(classes_.size() - 1);
}

bool DramTier::assign_free_page(int cls) {
  if (free_pages_.empty()) return false;
  uint32_t p = free_pages_.back();
  free_pages_.pop_back();
  SizeClass& c = classes_[cls];
  Page& pg = pages_[p];
  pg.cls = cls;
  pg.slot_size = c.slot_size;
  pg.slots.assign(c.slots_per_page, Slot{});
  pg.slots.shrink_to_fit();
  if (opt_.keep_keys) pg.keys.resize(c.slots_per_page);
  c.pages.push_back(p);
  for (uint32_t i = c.slots_per_page; i > 0; i--) c.free.push_back(p * per_page_max_ + i - 1);
  return true;
}

// Takes the ready slot `id` out of the index and its policy (counted as evicted); its bytes are
// copied into the victim when the slot is about to be re-cut.
DramTier::Victim DramTier::evict(uint32_t id, bool copy_bytes) {
  Slot& s = slots_at(id);
  Victim v;
  v.key = key_of(id);
  v.digest = s.digest;
  v.len = s.len;
  v.hits = s.flags & 1;
  v.clean = s.flags & kCleanFlag;
  if (copy_bytes) {
    v.copy = AlignedBuffer(align_up(std::max<uint64_t>(s.len, 1)));
    memcpy(v.copy.data(), data(id), s.len);
  }
  forget_clean(id);
  classes_[pages_[id / per_page_max_].cls].policy->remove(id, true);
  index_.erase(s.digest);
  value_bytes_ -= s.len;
  return v;
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
    bool movable = std::none_of(pages_[p].slots.begin(), pages_[p].slots.end(), [](const Slot& s) {
      return s.state == kWriting || s.state == kOrphan || s.pins > 0;
    });
    if (!movable) continue;
    for (uint32_t i = 0; i < pages_[p].slots.size(); i++) {
      if (pages_[p].slots[i].state != kReady) continue;
      victims->push_back(evict(p * per_page_max_ + i, true));
      dropped_++;
    }
    std::vector<uint32_t> keep;
    for (uint32_t id : d.free)
      if (id / per_page_max_ != p) keep.push_back(id);
    d.free.swap(keep);
    d.pages.erase(d.pages.begin() + static_cast<long>(pi));
    for (uint32_t i = 0; i < pages_[p].keys.size(); i++) drop_key(p * per_page_max_ + i);
    pages_[p] = Page{};
    free_pages_.push_back(p);
    return assign_free_page(cls);
  }
  return false;
}

int64_t DramTier::reserve(uint64_t len, std::vector<Victim>* victims, bool clean_only) {
  if (len > opt_.slab_size) return status_code(Status::kValueTooLarge);
  int cls = class_for(len);
  SizeClass& c = classes_[cls];
  if (c.free.empty() && !assign_free_page(cls)) {
    int64_t v = clean_only ? coldest_clean(c) : c.policy->victim([&](uint32_t id) {
      const Slot& s = slots_at(id);
      return s.state == kReady && s.pins == 0;
    });
    if (v < 0 && (clean_only || !steal_page(cls, victims))) return status_code(Status::kNoSpace);
    if (v >= 0) {
      victims->push_back(evict(static_cast<uint32_t>(v), false));
      evictions_++;
      c.free.push_back(static_cast<uint32_t>(v));
    }
  }
  uint32_t id = c.free.back();
  c.free.pop_back();
  Slot& s = slots_at(id);
  s.state = kWriting;
  if (++s.gen == 0) s.gen = 1;  // tokens (gen << 32 | slot) are never 0
  s.pins = 0;
  s.flags = 0;
  return id;
}

// A clean, ready, unpinned slot among the coldest quarter of class c (at least 8, at most
// kCleanScan slots), or -1: a clean page further toward the hot end, such as one just promoted,
// is not taken (it is still hot, and the walk would grow with the tier); the demoter cleans the
// cold end instead.
int64_t DramTier::coldest_clean(const SizeClass& c) const {
  if (c.clean == 0) return -1;
  const uint64_t limit = std::min<uint64_t>(kCleanScan, std::max<uint64_t>(8, c.policy->size() / 4));
  int64_t found = -1;
  uint64_t seen = 0;
  c.policy->walk_coldest([&](uint32_t id) {
    const Slot& s = slots_at(id);
    if (s.state == kReady && s.pins == 0 && (s.flags & kCleanFlag)) found = id;
    return found < 0 && ++seen < limit;
  });
  return found;
}

void DramTier::mark_clean(uint32_t id) {
  Slot& s = slots_at(id);
  if (s.state != kReady || (s.flags & kCleanFlag)) return;
  s.flags |= kCleanFlag;
  classes_[pages_[id / per_page_max_].cls].clean++;
}

void DramTier::forget_clean(uint32_t id) {
  Slot& s = slots_at(id);
  if (!(s.flags & kCleanFlag)) return;
  s.flags &= static_cast<uint8_t>(~kCleanFlag);
  classes_[pages_[id / per_page_max_].cls].clean--;
}

uint64_t DramTier::clean_bytes() const {
  uint64_t b = free_pages_.size() * opt_.slab_size;
  for (const SizeClass& c : classes_) b += (c.free.size() + c.clean) * c.slot_size;
  return b;
}

void DramTier::for_each_cold_dirty(const std::function<bool(uint32_t)>& visit) const {
  for (const SizeClass& c : classes_) {
    bool more = true;
    c.policy->walk_coldest([&](uint32_t id) {
      const Slot& s = slots_at(id);
      if (s.state == kReady && s.pins == 0 && !(s.flags & kCleanFlag)) more = visit(id);
      return more;
    });
    if (!more) return;
  }
}

void DramTier::prepare(uint32_t id, std::string_view key, const KeyDigest& d, uint64_t len, uint32_t depth) {
  Slot& s = slots_at(id);
  s.digest = d;
  s.len = static_cast<uint32_t>(len);
  s.depth = static_cast<uint16_t>(std::min<uint32_t>(depth, UINT16_MAX));
  Page& pg = pages_[id / per_page_max_];
  if (pg.keys.empty()) return;
  drop_key(id);
  uint16_t n = static_cast<uint16_t>(std::min(key.size(), kMaxKeyLen));
  std::unique_ptr<char[]>& k = pg.keys[id % per_page_max_];
  k.reset(new char[sizeof n + n]);
  memcpy(k.get(), &n, sizeof n);
  memcpy(k.get() + sizeof n, key.data(), n);
  key_bytes_ += sizeof n + n;
}

void DramTier::drop_key(uint32_t id) {
  Page& pg = pages_[id / per_page_max_];
  if (pg.keys.empty() || !pg.keys[id % per_page_max_]) return;
  uint16_t n;
  memcpy(&n, pg.keys[id % per_page_max_].get(), sizeof n);
  key_bytes_ -= sizeof n + n;
  pg.keys[id % per_page_max_].reset();
}

void DramTier::publish(uint32_t id) {
  Slot& s = slots_at(id);
  erase(s.digest);
  s.state = kReady;
  index_.insert(s.digest, id);
  value_bytes_ += s.len;
  classes_[pages_[id / per_page_max_].cls].policy->insert(id);
}

void DramTier::release(uint32_t id) {
  Slot& s = slots_at(id);
  s.state = kFree;
  s.pins = 0;
  drop_key(id);
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
  slots_at(id).flags |= 1;
  classes_[pages_[id / per_page_max_].cls].policy->access(id);
}

bool DramTier::erase(const KeyDigest& d) {
  int64_t found = index_.find(d);
  if (found < 0) return false;
  uint32_t id = static_cast<uint32_t>(found);
  index_.erase(d);
  Slot& s = slots_at(id);
  forget_clean(id);
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
  all.reserve(index_.size());
  index_.for_each([&](uint32_t id) { all.push_back(slots_at(id).digest); });
  for (const auto& d : all) erase(d);
}

bool DramTier::erase_prefix(std::string_view prefix, std::vector<KeyDigest>* erased) {
  if (!opt_.keep_keys) return false;
  const size_t first = erased->size();
  index_.for_each([&](uint32_t id) {
    const char* k = pages_[id / per_page_max_].keys[id % per_page_max_].get();
    uint16_t n = 0;
    if (k) memcpy(&n, k, sizeof n);
    if (k && n >= prefix.size() && memcmp(k + sizeof n, prefix.data(), prefix.size()) == 0)
      erased->push_back(slots_at(id).digest);
  });
  for (size_t i = first; i < erased->size(); i++) erase((*erased)[i]);
  return true;
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
  s.metadata_bytes = index_.memory_bytes() + pages_.capacity() * sizeof(Page) + key_bytes_;
  for (const SizeClass& c : classes_)  // slot tables (and key pointers) of the pages in use
    s.metadata_bytes += c.pages.size() * c.slots_per_page * (sizeof(Slot) + (opt_.keep_keys ? sizeof(void*) : 0));
  return s;
}

}  // namespace mch
