// NvmeEngine: the local NVMe tier. Stores values under string keys in a log of fixed-size
// regions on a preallocated file or block device (format: record_format.h), with an in-memory
// PageIndex, region-FIFO eviction with reinsertion, and warm restart from region summaries.
//
// Composes, the way CacheLib's Navy cuts a block cache:
//   Device            (device.h)            the file: open, flock, superblock, boot epoch
//   IoContextPool     (io_context.h)        per-call I/O queues (io_uring | threads) + staging
//   RegionManager     (region_manager.h)    free / open / sealed regions, placement, sealing
//   recover()         (recovery.h)          the index and region table from disk, at open
//   ReinsertionPolicy (reinsertion_policy.h) which pages of a reclaimed region are kept
//   plan_value_io()   (value_io.h)          how a value's segments map onto aligned I/O
//   PageIndex         (page_index.h)        digest -> newest record location
//
// Threading: every public method may be called from any thread, concurrently. Puts are
// serialised by write_mu_ (one append path, which owns the RegionManager); gets and exists run
// in parallel with it and with each other, each on its own IoContext. index_mu_ guards the
// index and the per-region reader pins. No method calls back into Python; the bindings release
// the GIL around each call.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/counters.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/note_log.h"
#include "common/put_waves.h"
#include "common/sg_list.h"
#include "common/status.h"
#include "nvme/device.h"
#include "nvme/fault_injector.h"
#include "nvme/io_context.h"
#include "nvme/options.h"
#include "nvme/page_index.h"
#include "nvme/recovery.h"
#include "nvme/region_manager.h"
#include "nvme/reinsertion_policy.h"

namespace mch {

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
  uint64_t reads_active = 0, writes_yielded = 0;  // reads before writes (issue 15)
  double recovery_seconds = 0;
  uint64_t recovered_entries = 0, recovered_regions_scanned = 0;

  // The one field list (common/counters.h): NvmeEngine.stats() in Python, the "nvme" section of
  // TieredStore::stats_json() and the Prometheus series all come from it.
  template <class V>
  void visit(V& v) const {
    v.info("io_backend", io_backend);
    v.flag("direct_io", direct_io);
    v.flag("fixed_buffers", fixed_buffers);
    for (auto [k, x] : Fields{{"capacity", capacity}, {"region_size", region_size}, {"region_count", region_count},
                        {"regions_free", regions_free}, {"regions_sealed", regions_sealed}, {"entries", entries},
                        {"value_bytes", value_bytes}, {"index_bytes", index_bytes}})
      v.gauge(k, x);
    v.gauge("index_bytes_per_entry", index_bytes_per_entry);
    for (auto [k, x] : Fields{{"puts", puts}, {"put_bytes", put_bytes}, {"put_errors", put_errors}, {"gets", gets},
                        {"hits", hits}, {"misses", misses}, {"get_bytes", get_bytes},
                        {"checksum_failures", checksum_failures}, {"io_errors", io_errors},
                        {"evicted_regions", evicted_regions}, {"evicted_pages", evicted_pages},
                        {"reinserted_pages", reinserted_pages}, {"removes", removes},
                        {"writes_yielded", writes_yielded}})
      v.counter(k, x);
    v.gauge("reads_active", reads_active);
    v.gauge("recovery_seconds", recovery_seconds);
    v.gauge("recovered_entries", recovered_entries);
    v.gauge("recovered_regions_scanned", recovered_regions_scanned);
  }
};

// Background writes (a demoter's) yield to reads: while any read is in flight (a batch_get, or
// a location pinned for a reader of its own) they keep at most one write in the device queue, so
// a read queues behind one write at most. Foreground writes (a put waiting on them) do not yield.
enum class WritePriority { kForeground, kBackground };

class NvmeEngine {
 public:
  static constexpr size_t kMaxSegments = 500;  // per key (two iovecs each at most)

  explicit NvmeEngine(const NvmeOptions& opt);  // opens or creates; throws EngineError
  ~NvmeEngine();
  NvmeEngine(const NvmeEngine&) = delete;
  NvmeEngine& operator=(const NvmeEngine&) = delete;

  // results[i] = 0 or a negative Status. kKeepExisting: a key already indexed is left as it is
  // (result 0, nothing written).
  void batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values, int32_t* results,
                 PutMode mode = PutMode::kReplace, WritePriority prio = WritePriority::kForeground);
  // Reads in flight now (batch_get calls reading, locations pinned for readers).
  int reads_active() const { return reads_active_.load(std::memory_order_relaxed); }
  // results[i] = bytes read or a negative Status (kNotFound for a miss or a corrupt record).
  void batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results);
  // results[i] = 1 present, 0 absent, negative Status on error.
  void batch_exists(const std::vector<std::string>& keys, int32_t* results);
  // Where a value lies, for a reader with its own descriptor of the file (read_fd(); a node
  // client reading a page straight into its memory). pin_location returns the value's length
  // (or a negative Status) and keeps its region from being reclaimed until unpin_location.
  struct ValueLocation {
    uint64_t offset = 0;  // file offset of the value (block aligned)
    uint64_t len = 0;
    uint64_t checksum = 0;  // XXH3-64 of the value, to verify after reading
    uint32_t region = 0;
  };
  int64_t pin_location(const std::string& key, ValueLocation* out);
  void unpin_location(uint32_t region);
  // A read-only descriptor of the data file (O_DIRECT when direct_io), owned by the engine.
  int read_fd() const { return dev_ ? dev_->read_fd() : -1; }
  // Value length, or a negative Status.
  int64_t value_size(const std::string& key);
  int32_t remove(const std::string& key);
  // Removes each key (results[i]: 0, NOT_FOUND or a negative Status), tombstones written
  // pipelined; *removed (may be null) gets the digests of the keys that were stored.
  void remove_keys(const std::vector<std::string>& keys, int32_t* results, std::vector<KeyDigest>* removed);
  // Removes every key that starts with `prefix` (read back from the record headers: the index
  // keeps digests only), like remove(). Returns how many, or a negative Status; their digests
  // are appended to *removed.
  int64_t remove_prefix(const std::string& prefix, std::vector<KeyDigest>* removed);
  int32_t remove_all();
  // Seals the open region and closes the file. Later calls return kClosed.
  void close();

  NvmeStats stats();
  uint64_t max_value_size() const { return max_value_; }
  // Lines worth logging once (backend fallbacks, recovery summary). Cleared when taken.
  std::vector<Note> take_notes() { return notes_.take(); }
  // Test hook: the next n write completions are treated as device errors (-EIO).
  void inject_write_errors(int n) { faults_.arm(FaultInjector::kWrite, n); }
  // Test hook: the next `times` operations of kind k fail with err (or stall for ms).
  void inject_faults(FaultInjector::Kind k, int times, int err, int ms) { faults_.arm(k, times, err, ms); }

 private:
  struct PutItem;
  struct HotRecord {
    std::string key;
    AlignedBuffer data;  // header block + the value, block-padded
    uint64_t value_len;
  };

  void validate_options();
  bool synced(const char* what);
  void recover_from_disk();
  void rewrite_orphan_tombstones(IoContext& ctx, const RecoveryResult& r);
  bool clear_first_blocks(IoContext& ctx, const std::vector<uint32_t>& rs);
  std::vector<PutItem> put_items(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                                 int32_t* results);
  void drop_existing(std::vector<PutItem>* items);

  // --- writer path (write_mu_ held) ---
  void put_records(IoContext& ctx, std::vector<PutItem>& items);
  bool submit_put(IoContext& ctx, PutItem& it, size_t i, std::vector<PutItem>& items);
  void put_done(IoContext& ctx, const IoCompletion& c, std::vector<PutItem>& items);
  void index_record(const KeyDigest& d, const PageLocation& loc);
  Status ensure_room(IoContext& ctx, uint64_t rec_bytes);
  int64_t reclaim_oldest(IoContext& ctx, std::vector<HotRecord>* hot);
  std::vector<disk::SummaryEntry> read_summary(IoContext& ctx, uint32_t r, bool* ok);
  std::vector<std::pair<KeyDigest, PageLocation>> pick_hot(uint32_t r, const std::vector<disk::SummaryEntry>& entries);
  void read_hot(IoContext& ctx, uint32_t r, const std::vector<std::pair<KeyDigest, PageLocation>>& keep,
                std::vector<HotRecord>* hot);
  void drop_region(uint32_t r, const std::vector<disk::SummaryEntry>& entries, bool summary_ok, size_t kept);
  void reinsert(IoContext& ctx, std::vector<HotRecord>& hot);
  void write_tombstones(IoContext& ctx, const std::vector<std::string>& keys, int32_t* results);
  std::vector<std::string> keys_with_prefix(IoContext& ctx, const std::string& prefix);

  // --- reader path ---
  int64_t pin_for_read(const std::string& key, const SgList& buf, KeyDigest* d, PageLocation* loc);
  uint64_t value_offset(const PageLocation& loc) const;
  void read_done(const KeyDigest& d, const PageLocation& loc, int64_t r);
  void forget_corrupt(const KeyDigest& d, const PageLocation& loc);
  void unpin(uint32_t region);

  NvmeOptions opt_;
  uint64_t max_value_ = 0;
  NoteLog notes_;
  FaultInjector faults_;  // test hooks; outlives the device and the queues that consult it
  std::unique_ptr<Device> dev_;
  std::unique_ptr<IoContextPool> ctxs_;
  std::unique_ptr<ReinsertionPolicy> reinsertion_;

  // Lifetime: calls hold it shared; close() takes it exclusively.
  std::shared_mutex life_mu_;
  bool closed_ = false;
  // What stats() reports about the I/O backend: fixed once the engine is open.
  std::string backend_name_;
  bool fixed_buffers_ = false;

  // Writer state, guarded by write_mu_: the region table (placement, sealing, sequences).
  std::mutex write_mu_;
  std::unique_ptr<RegionManager> regions_;
  bool yield_to_reads_ = false;  // the put in progress is a background one

  std::atomic<int> reads_active_{0};  // see reads_active()

  // Index state, guarded by index_mu_: the page index and per-region reader pins.
  std::mutex index_mu_;
  std::condition_variable unpinned_cv_;
  PageIndex index_;
  std::vector<uint32_t> readers_;
  uint64_t value_bytes_ = 0;

  struct Counters {
    std::atomic<uint64_t> puts{0}, put_bytes{0}, put_errors{0}, gets{0}, hits{0}, misses{0}, get_bytes{0},
        checksum_failures{0}, io_errors{0}, evicted_regions{0}, evicted_pages{0}, reinserted_pages{0}, removes{0},
        writes_yielded{0};
  } ctr_;
  double recovery_seconds_ = 0;
  uint64_t recovered_entries_ = 0, recovered_scanned_ = 0;
};

}  // namespace mch
