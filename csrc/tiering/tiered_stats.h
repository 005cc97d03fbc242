// TieredStats: the figures of a TieredStore, one field list per section (common/counters.h):
// "dram" (arena, slabs, eviction), "tiering" (hits per tier, demotion, promotion, prefetch)
// and, with an NVMe tier, "nvme" (NvmeStats). A snapshot: a plain value.
#pragma once
#include <cstdint>
#include <string>

#include "common/counters.h"
#include "nvme/nvme_engine.h"

namespace mch {

struct DramSection {
  uint64_t capacity = 0;
  std::string page_kind, eviction;
  uint64_t slab_size = 0, entries = 0, value_bytes = 0, slab_pages = 0, slab_pages_free = 0, size_classes = 0;
  uint64_t evictions = 0, dropped_for_rebalance = 0, hits = 0;
  uint64_t metadata_bytes = 0;  // the tier's bookkeeping in the node's private memory (slots, index, keys)

  template <class V>
  void visit(V& v) const {
    v.gauge("capacity", capacity);
    v.info("page_kind", page_kind);
    v.gauge("slab_size", slab_size);
    v.info("eviction", eviction);
    for (auto [k, x] : Fields{{"entries", entries}, {"value_bytes", value_bytes}, {"slab_pages", slab_pages},
                              {"slab_pages_free", slab_pages_free}, {"size_classes", size_classes},
                              {"metadata_bytes", metadata_bytes}})
      v.gauge(k, x);
    for (auto [k, x] : Fields{{"evictions", evictions}, {"dropped_for_rebalance", dropped_for_rebalance}, {"hits", hits}})
      v.counter(k, x);
  }
};

struct TieringSection {
  std::string admission;
  bool write_through = false;
  uint64_t puts = 0, put_bytes = 0, skipped_existing = 0, gets = 0, dram_hits = 0, nvme_hits = 0, misses = 0,
           get_bytes = 0, demoted = 0, demote_failures = 0, not_admitted = 0, promoted = 0, written_through = 0,
           prefetch_queued = 0, prefetch_done = 0, direct_reads = 0;
  // Clean reserve (tiered_store.h): the level and target in bytes, reads that waited for an
  // NVMe write (0 while the reserve holds), the demoter's batches, pages and back-offs.
  uint64_t clean_bytes = 0, clean_target_bytes = 0, reads_waited_for_write = 0, demoter_batches = 0,
           demoter_pages = 0, demoter_backoffs = 0, demoter_writing = 0;

  template <class V>
  void visit(V& v) const {
    v.info("admission", admission);
    v.flag("write_through", write_through);
    for (auto [k, x] : Fields{{"puts", puts}, {"put_bytes", put_bytes}, {"skipped_existing", skipped_existing},
                              {"gets", gets}, {"dram_hits", dram_hits}, {"nvme_hits", nvme_hits}, {"misses", misses},
                              {"get_bytes", get_bytes}, {"demoted", demoted}, {"demote_failures", demote_failures},
                              {"not_admitted", not_admitted}, {"promoted", promoted},
                              {"written_through", written_through}, {"prefetch_queued", prefetch_queued},
                              {"prefetch_done", prefetch_done}, {"direct_reads", direct_reads},
                              {"reads_waited_for_write", reads_waited_for_write}, {"demoter_batches", demoter_batches},
                              {"demoter_pages", demoter_pages}, {"demoter_backoffs", demoter_backoffs}})
      v.counter(k, x);
    v.gauge("clean_bytes", clean_bytes);
    v.gauge("clean_target_bytes", clean_target_bytes);
    v.gauge("demoter_writing", demoter_writing);
  }
};

struct TieredStats {
  DramSection dram;
  TieringSection tiering;
  bool has_nvme = false;
  NvmeStats nvme;

  template <class V>
  void visit(V& v) const {
    v.section("dram", dram);
    v.section("tiering", tiering);
    if (has_nvme) v.section("nvme", nvme);
  }
};

}  // namespace mch
