// EvictionPolicy: which DRAM slot to give up when a size class is full. One instance per size
// class; slots are identified by the DramTier's slot ids.
//
//   lru         least recently used first.
//   s3fifo      S3-FIFO (small FIFO for new pages, main FIFO for pages hit again, ghost list of
//               recently evicted digests): one-hit wonders leave quickly, re-used pages stay.
//   prefix_lru  LRU, but among the coldest pages (a window at the cold end) the deepest page of
//               its prefix chain goes first: a page is useful only if every earlier page of its
//               chain hits, so deep pages are worth less than shallow ones of equal coldness.
//
// Not thread-safe: the owner (TieredStore) holds its mutex around every call.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/keys.h"

namespace mch {

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void insert(uint32_t slot, const KeyDigest& digest, uint32_t depth) = 0;
  virtual void access(uint32_t slot) = 0;
  // `evicted`: the slot leaves because of eviction (S3-FIFO remembers it), not removal.
  virtual void remove(uint32_t slot, bool evicted) = 0;
  // A slot for which can_evict(slot) holds, or -1. Does not remove it.
  virtual int64_t victim(const std::function<bool(uint32_t)>& can_evict) = 0;
  virtual size_t size() const = 0;

  // Names: "lru", "s3fifo", "prefix_lru". Throws std::invalid_argument for another name.
  static std::unique_ptr<EvictionPolicy> make(const std::string& name);
};

}  // namespace mch
