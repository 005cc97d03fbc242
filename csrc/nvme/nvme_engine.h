// NvmeEngine: the local NVMe tier. Stores values under string keys in a log of fixed-size
// regions on a preallocated file or block device (format: record_format.h), with an in-memory
// PageIndex, region-FIFO eviction with reinsertion of pages read since they were written, and
// warm restart from region summaries.
//
// Owns: the data file (flock-ed: one engine per file), the region table, the page index and a
// pool of IoContexts (an IoQueue each, plus registered staging memory).
//
// Threading: every public method may be called from any thread, concurrently. Puts are
// serialised by write_mu_ (one append path); gets and exists run in parallel with it and with
// each other, each on its own IoContext. No method calls back into Python; the bindings release
// the GIL around each call.
#pragma once
#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/checksum.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/sg_list.h"
#include "nvme/io_queue.h"
#include "nvme/page_index.h"
#include "nvme/record_format.h"
#include "common/status.h"

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

struct NvmeStats {
  std::string io_backend;
  bool direct_io = false;
  bool fixed_buffers = false;
  uint64_t capacity = 0, region_size = 0, region_count = 0;
  uint64_t regions_free = 0, regions_sealed = 0;
  uint64_t entries = 0, value_bytes = 0;
  uint64_t index_bytes = 0;
  double index_bytes_per_entry = 0;
  uint64_t puts = 0, put_bytes = 0, put_errors = 0;
  uint64_t gets = 0, hits = 0, misses = 0, get_bytes = 0;
  uint64_t checksum_failures = 0, io_errors = 0;
  uint64_t evicted_regions = 0, evicted_pages = 0, reinserted_pages = 0;
  uint64_t removes = 0;
  double recovery_seconds = 0;
  uint64_t recovered_entries = 0, recovered_regions_scanned = 0;

  // The figures as one JSON object: the single field list behind NvmeEngine.stats() in Python
  // and the "nvme" section of TieredStore::stats_json().
  std::string to_json() const;
};

class NvmeEngine {
 public:
  static constexpr size_t kMaxSegments = 500;  // per key (two iovecs each at most)

  explicit NvmeEngine(const NvmeOptions& opt);  // opens or creates; throws EngineError
  ~NvmeEngine();
  NvmeEngine(const NvmeEngine&) = delete;
  NvmeEngine& operator=(const NvmeEngine&) = delete;

  // results[i] = 0 or a negative Status.
  void batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                 int32_t* results);
  // results[i] = bytes read or a negative Status (status_code(Status::kNotFound) for a miss or a corrupt record).
  void batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                 int64_t* results);
  // results[i] = 1 present, 0 absent, negative Status on error.
  void batch_exists(const std::vector<std::string>& keys, int32_t* results);
  // Value length, or a negative Status.
  int64_t value_size(const std::string& key);
  int32_t remove(const std::string& key);
  int32_t remove_all();
  // Seals the open region and closes the file. Later calls return status_code(Status::kClosed).
  void close();

  NvmeStats stats();
  uint64_t max_value_size() const { return max_value_; }
  // Lines worth logging once (backend fallbacks, recovery summary). Cleared when taken.
  std::vector<std::string> take_notes();
  // Test hook: the next n write completions are treated as device errors (-EIO).
  void inject_write_errors(int n) { inject_write_errors_.store(n); }

 private:
  struct IoContext;
  struct PutItem;
  struct RegionState {
    enum State { kFree, kOpen, kSealed } state = kFree;
    uint64_t region_seq = 0;
    uint64_t write_off = 0;                 // open: next record offset
    uint64_t reserved = 0;                  // open: records placed (incl. in flight)
    std::vector<disk::SummaryEntry> entries; // open: records completed
    uint64_t summary_off = 0, summary_count = 0;  // sealed
  };
  struct HotRecord {
    std::string key;
    AlignedBuffer data;  // the value, block-padded
    uint64_t value_len;
  };

  // --- open / recovery ---
  void open_file();
  void create_layout();
  void start_new_life(disk::Superblock sb);
  void recover();
  void scan_region(IoContext& ctx, uint32_t r, uint64_t region_seq,
                   std::vector<std::pair<uint32_t, disk::SummaryEntry>>* out);

  // --- contexts ---
  IoContext* acquire_context();
  void release_context(IoContext* c);
  std::unique_ptr<IoContext> make_context();

  // --- writer path (write_mu_ held) ---
  void put_records(IoContext& ctx, std::vector<PutItem>& items);
  bool ensure_room(IoContext& ctx, uint64_t rec_bytes);
  bool fits(const RegionState& s, uint64_t rec_bytes) const;
  void seal_region(IoContext& ctx, uint32_t r);
  bool open_region(IoContext& ctx, uint32_t r);
  int64_t reclaim_oldest(IoContext& ctx, std::vector<HotRecord>* hot);
  bool write_tombstone(IoContext& ctx, const std::string& key, const KeyDigest& d);
  int64_t sync_io(IoContext& ctx, IoOp op, uint64_t off, void* buf, size_t len);

  uint64_t region_base(uint32_t r) const { return disk::kDataOffset + uint64_t(r) * opt_.region_size; }
  void unpin(uint32_t region);
  void note(const std::string& line);

  NvmeOptions opt_;
  int fd_ = -1;
  bool is_blockdev_ = false;
  uint64_t region_count_ = 0;
  uint64_t max_value_ = 0;
  std::string backend_;
  bool fixed_buffers_ = false;
  std::unique_ptr<ThreadPool> pool_;  // threads backend only

  // Lifetime: calls hold it shared; close() takes it exclusively.
  std::shared_mutex life_mu_;
  bool closed_ = false;

  // Writer state, guarded by write_mu_: region table (except readers_), open_, sequences.
  std::mutex write_mu_;
  std::vector<RegionState> regions_;
  std::deque<uint32_t> free_regions_;
  std::deque<uint32_t> sealed_fifo_;  // oldest first
  int64_t open_ = -1;
  uint64_t next_region_seq_ = 1;
  uint64_t next_seq_ = 1;

  // Index state, guarded by index_mu_: the page index and per-region reader pins.
  std::mutex index_mu_;
  std::condition_variable unpinned_cv_;
  PageIndex index_;
  std::vector<uint32_t> readers_;
  uint64_t value_bytes_ = 0;

  // IoContext pool, guarded by ctx_mu_.
  std::mutex ctx_mu_;
  std::condition_variable ctx_cv_;
  std::vector<std::unique_ptr<IoContext>> ctx_all_;
  std::vector<IoContext*> ctx_free_;

  std::mutex notes_mu_;  // guards notes_
  std::vector<std::string> notes_;

  std::atomic<int> inject_write_errors_{0};
  struct Counters {
    std::atomic<uint64_t> puts{0}, put_bytes{0}, put_errors{0}, gets{0}, hits{0}, misses{0},
        get_bytes{0}, checksum_failures{0}, io_errors{0}, evicted_regions{0}, evicted_pages{0},
        reinserted_pages{0}, removes{0};
  } ctr_;
  double recovery_seconds_ = 0;
  uint64_t recovered_entries_ = 0, recovered_scanned_ = 0;
};

}  // namespace mch
