#include "nvme/page_index.h"

#include <utility>

namespace mch {

void PageIndex::rehash(size_t capacity) {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  size_ = 0;
  for (const Slot& s : old)
    if (!s.key.empty()) put(s.key, s.loc);
}

bool PageIndex::put(const KeyDigest& d, const PageLocation& loc) {
  if ((size_ + 1) * 4 > slots_.size() * 3) rehash(slots_.size() * 2);
  for (size_t i = home(d);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key.empty()) {
      s.key = d;
      s.loc = loc;
      size_++;
      return true;
    }
    if (s.key == d) {
      s.loc = loc;
      return false;
    }
  }
}

PageLocation* PageIndex::find(const KeyDigest& d) {
  for (size_t i = home(d);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key.empty()) return nullptr;
    if (s.key == d) return &s.loc;
  }
}

bool PageIndex::erase(const KeyDigest& d) {
  size_t i = home(d);
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].key.empty()) return false;
    if (slots_[i].key == d) break;
  }
  // Backward-shift deletion: pull later members of the probe run into the hole so that
  // lookups never need tombstones.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
    Slot& s = slots_[j];
    if (s.key.empty()) break;
    size_t h = home(s.key);
    // s may move into the hole iff its home is not cyclically within (hole, j].
    bool stays = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j);
    if (!stays) {
      slots_[hole] = s;
      hole = j;
    }
  }
  slots_[hole] = Slot{};
  size_--;
  return true;
}

std::vector<KeyDigest> PageIndex::keys_in_region(uint32_t region) const {
  std::vector<KeyDigest> out;
  for (const Slot& s : slots_)
    if (!s.key.empty() && s.loc.region == region) out.push_back(s.key);
  return out;
}

}  // namespace mch
