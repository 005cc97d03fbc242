// Recovery: rebuilds the NVMe engine's region table and page index from the data file at open
// (warm restart). Reads every region trailer (batched), the summaries of sealed regions, and
// scans open regions (or sealed ones whose summary fails its checksum) record by record,
// keeping records whose header and value checksums verify and whose region_seq matches. Free
// regions that were ever written are scanned for tombstones only (a removal must not be undone
// by the loss of the trailer of the region that recorded it). All records are applied in
// sequence order (later puts win, tombstones delete); scanned regions are then sealed so the
// next restart reads summaries only.
//
// Runs once, from the engine's constructor, before any other call: no locking.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nvme/device.h"
#include "nvme/io_context.h"
#include "nvme/page_index.h"
#include "nvme/region_manager.h"

namespace mch {

struct RecoveryResult {
  struct Orphan {
    std::string key;
    KeyDigest digest;
  };
  uint64_t entries = 0;          // pages indexed
  uint64_t value_bytes = 0;      // their bytes
  uint64_t regions_scanned = 0;  // regions read record by record
  uint64_t records_seen = 0;     // records and tombstones applied
  double seconds = 0;
  // Removals recorded only in free regions (whose trailers were lost) that deleted a page: the
  // engine writes them again, then clears the first block of each untrusted region, so the
  // removal outlives the region that held it and the region is not scanned again.
  std::vector<Orphan> orphan_tombstones;
  std::vector<uint32_t> untrusted_regions;  // free regions scanned for tombstones
};

RecoveryResult recover(IoContext& ctx, const Device& dev, RegionManager& regions, PageIndex& index);

}  // namespace mch
