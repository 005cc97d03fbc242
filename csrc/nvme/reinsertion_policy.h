// ReinsertionPolicy: which pages of a region being reclaimed are written again at the log's head
// instead of being evicted (CacheLib Navy's reinsertion; region FIFO alone would drop hot pages).
//
//   hits  pages read since they were written (PageIndex::kHit), up to half a region per reclaim
//   none  nothing (tiers.nvme.reinsertion: false)
//
// Called by the engine with its write mutex and index mutex held; stateless between reclaims
// apart from the per-reclaim budget that begin() resets.
#pragma once
#include <cstdint>
#include <memory>

#include "nvme/page_index.h"

namespace mch {

class ReinsertionPolicy {
 public:
  virtual ~ReinsertionPolicy() = default;
  // A new region is being reclaimed.
  virtual void begin(uint64_t region_size) = 0;
  // Whether to keep a page of `record_bytes` located at `loc`.
  virtual bool keep(const PageLocation& loc, uint64_t record_bytes) = 0;

  static std::unique_ptr<ReinsertionPolicy> make(bool reinsert_hits);
};

}  // namespace mch
