// NvmeOptions: the settings of one NVMe engine (tiers.nvme in the YAML config).
#pragma once
#include <cstdint>
#include <string>

namespace mch {

struct NvmeOptions {
  std::string path;
  uint64_t capacity = 4ull << 30;      // bytes given to regions (0 = whole block device)
  uint64_t region_size = 64ull << 20;  // multiple of 4 KiB
  int queue_depth = 64;                // records in flight per call
  bool direct_io = true;               // O_DIRECT
  std::string io_backend = "auto";     // auto | io_uring | threads
  bool sync_on_seal = true;            // fdatasync after writing a region's summary
  bool reinsertion = true;             // re-append hit pages when their region is reclaimed
  int max_parallel_calls = 8;          // IoContexts (calls that do I/O at the same time)
};

}  // namespace mch
