// RegionManager: the region table of the NVMe log. Every region is free, open (records being
// appended; at most one) or sealed (summary + trailer written, in FIFO order for eviction).
// It places records in the open region, hands out sequence numbers, opens and seals regions
// (writing their trailers), and reports the oldest sealed region for reclaim.
//
// Not thread-safe: the engine calls it with its write mutex held (recovery runs before any
// other call), except free_count() and sealed_count(), which any thread may read at any time
// (stats() does, without the write mutex). I/O goes through the IoContext the caller passes.
#pragma once
#include <atomic>
#include <cstdint>
#include <deque>
#include <vector>

#include "common/note_log.h"
#include "nvme/device.h"
#include "nvme/io_context.h"
#include "nvme/record_format.h"

namespace mch {

struct RegionState {
  enum State { kFree, kOpen, kSealed } state = kFree;
  uint64_t region_seq = 0;
  uint64_t write_off = 0;                   // open: next record offset
  uint64_t reserved = 0;                    // open: records placed (incl. in flight)
  std::vector<disk::SummaryEntry> entries;  // open: records completed
  uint64_t summary_off = 0, summary_count = 0;  // sealed
};

class RegionManager {
 public:
  RegionManager(Device& dev, bool sync_on_seal, NoteLog& notes, std::atomic<uint64_t>& io_errors);

  // Every region free (after remove_all), sequences kept.
  void reset_all();
  RegionState& at(uint32_t r) { return regions_[r]; }
  uint64_t region_count() const { return regions_.size(); }
  int64_t open_region() const { return open_; }
  // The open region has room for a record of rec_bytes (plus its summary entry).
  bool open_fits(uint64_t rec_bytes) const { return open_ >= 0 && fits(regions_[open_], rec_bytes); }
  size_t free_count() const { return free_n_.load(std::memory_order_relaxed); }
  size_t sealed_count() const { return sealed_n_.load(std::memory_order_relaxed); }

  // A free region, or -1.
  int64_t take_free();
  // Removes and returns the oldest sealed region, or -1.
  int64_t pop_oldest_sealed();
  void release(uint32_t r);      // -> free
  void push_sealed(uint32_t r);  // appends to the FIFO (recovery)

  // Opens region r as the open region (writes its open trailer). False on an I/O error (r is
  // then free again).
  bool open(IoContext& ctx, uint32_t r);
  // Writes r's summary and sealed trailer, and moves r to the FIFO's young end.
  void seal(IoContext& ctx, uint32_t r);

  // Reserves rec_bytes in the open region (open_fits() must hold); returns the record offset.
  uint64_t place(uint64_t rec_bytes);
  uint64_t next_seq() { return next_seq_++; }
  // Sequence numbers stay above every one seen on disk.
  void raise_sequences(uint64_t max_region_seq, uint64_t max_seq);
  uint64_t base(uint32_t r) const { return dev_.region_base(r); }
  uint64_t region_size() const { return dev_.region_size(); }

 private:
  bool fits(const RegionState& s, uint64_t rec_bytes) const;
  void counted() {  // publishes the list sizes for free_count() / sealed_count()
    free_n_.store(free_.size(), std::memory_order_relaxed);
    sealed_n_.store(sealed_fifo_.size(), std::memory_order_relaxed);
  }

  Device& dev_;
  const bool sync_on_seal_;
  NoteLog& notes_;
  std::atomic<uint64_t>& io_errors_;
  std::vector<RegionState> regions_;
  std::deque<uint32_t> free_;
  std::deque<uint32_t> sealed_fifo_;  // oldest first
  std::atomic<size_t> free_n_{0}, sealed_n_{0};
  int64_t open_ = -1;
  uint64_t next_region_seq_;
  uint64_t next_seq_;
};

}  // namespace mch
