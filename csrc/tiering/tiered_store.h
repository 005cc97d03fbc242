// TieredStore: the host's tier stack, DRAM in front of NVMe. The node process serves it to
// clients over shared memory; `mode: in_process` uses it directly.
//
// Owns: a DramTier (shared-memory arena, slab allocator, index, eviction policy) and optionally
// an NvmeEngine. Policies: demotion of DRAM victims to NVMe (admission: always | never |
// second_hit), promotion of NVMe hits into DRAM, optional write-through.
//
// Zero-copy protocol (what the node does for a client in another process):
//   put:  put_reserve() -> client copies each value into arena + offset -> put_commit()
//   get:  get_pin()     -> client copies out of arena + offset          -> get_unpin()
// A reserved slot is invisible to readers until committed; a pinned slot is never evicted or
// rewritten until unpinned. Tickets identify reservations and pins; the node releases the
// tickets of a client that disconnects (abort_puts / get_unpin).
//
// Clean reserve (issue 15, docs/architecture.md "Reads never wait for writes"): with
// clean_reserve > 0 a background demoter thread keeps that share of the arena clean (free, or
// holding pages already on NVMe) by writing the coldest dirty pages to NVMe in batches of up to
// demote_batch bytes, as background writes that yield to reads. Gets then promote only into
// clean slots: when there is none, a get reads the page straight into the caller's buffer
// (in-process) or answers kNoSpace so the node client reads it itself (GET_LOCATE). A get never
// waits for a write; tiering.reads_waited_for_write counts the ones that did. Prefetches (on
// their own workers, no caller waiting) prefer clean slots and may displace a dirty page.
//
// Threading: every method may be called from any thread. DRAM state is guarded by one mutex,
// held for bookkeeping and for one copy: when a slab page moves to another size class its
// entries are copied out under it (DramTier::steal_page). NVMe I/O and the callers' copies into
// and out of the arena run outside it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/note_log.h"
#include "common/put_waves.h"
#include "common/sg_list.h"
#include "common/status.h"
#include "nvme/fault_injector.h"
#include "nvme/options.h"
#include "tiering/tiered_stats.h"

namespace mch {

class DramTier;

struct TieredOptions {
  // DRAM tier
  uint64_t dram_capacity = 1ull << 30;  // bytes of arena (rounded up to 2 MiB)
  uint64_t slab_size = 32ull << 20;     // unit handed to a size class; largest value it can hold
  std::string eviction = "lru";         // lru | s3fifo | prefix_lru
  bool hugepages = true;                // try 2 MiB hugetlb pages for the arena
  bool keep_keys = false;               // keep page keys without an NVMe tier too (remove_prefix)
  // Tiering
  std::string admission = "always";     // which DRAM victims go to NVMe: always | never | second_hit
  bool write_through = false;           // also write every put to NVMe at commit
  double clean_reserve = 0;             // share of the arena the demoter keeps clean (0: off)
  uint64_t demote_batch = 64ull << 20;  // bytes the demoter writes per batch, at most
  int prefetch_workers = 1;             // background threads promoting prefetched pages (>= 1)
  // NVMe tier (absent when has_nvme is false)
  bool has_nvme = false;
  NvmeOptions nvme;
};

// put_reserve's answer per key: status kOk (copy to arena + offset, then commit the token),
// kAlreadyStored (PutMode::kKeepExisting and the key is stored: skip) or a negative Status.
using PutTicket = Reservation;

struct GetTicket {
  int64_t status = status_code(Status::kNotFound);  // value length when found, else a negative Status (status_code(Status::kNoSpace): on
                               // NVMe, but no DRAM slot is free to stage it right now)
  uint64_t offset = 0;         // arena offset of the value
  uint64_t token = 0;          // pass back to get_unpin
  uint8_t tier = 0;            // where it was found: 1 DRAM, 2 NVMe (promoted)
};

class TieredStore {
 public:
  explicit TieredStore(const TieredOptions& opt);  // throws EngineError
  ~TieredStore();

  // ---- zero-copy steps ----
  // depth: the page's position in its prefix chain (0 = unknown); used by prefix_lru.
  // mode (common/put_waves.h): kReplace (the default) or kKeepExisting.
  void put_reserve(const std::vector<std::string>& keys, const std::vector<uint64_t>& sizes,
                   const std::vector<uint32_t>& depths, std::vector<PutTicket>* out,
                   PutMode mode = PutMode::kReplace);
  // ok[i] false aborts ticket i. results[i]: status_code(Status::kOk) or a negative Status.
  // A committed value replaces every older copy of its key (DRAM, NVMe, a transfer in flight)
  // before this returns.
  void put_commit(const std::vector<uint64_t>& tokens, const std::vector<uint8_t>& ok, int32_t* results);
  void abort_puts(const std::vector<uint64_t>& tokens);
  void get_pin(const std::vector<std::string>& keys, std::vector<GetTicket>* out);
  void get_unpin(const std::vector<uint64_t>& tokens);

  // ---- whole operations (reserve/pin + memcpy + commit/unpin, for in-process callers) ----
  void batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                 const std::vector<uint32_t>& depths, int32_t* results, PutMode mode = PutMode::kReplace);
  void batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results);

  // ---- direct reads: an NVMe page read by the caller itself, not staged in DRAM ----
  // What a node answers when it cannot (or, issue 15, should not) stage a page in DRAM: where
  // the value lies in data_fd(), for the client to read straight into its own buffers (one
  // copy: disk to the caller's memory). status: the value's length or a negative Status; the
  // value's region stays pinned (not reclaimed) until release_locations(token).
  struct Location {
    int64_t status = status_code(Status::kNotFound);
    uint64_t offset = 0;    // file offset of the value in data_fd() (block aligned)
    uint64_t checksum = 0;  // XXH3-64 of the value: the reader verifies it
    uint64_t token = 0;
  };
  void locate(const std::vector<std::string>& keys, std::vector<Location>* out);
  void release_locations(const std::vector<uint64_t>& tokens);
  int data_fd() const;  // read-only descriptor of the NVMe data file; -1 without an NVMe tier

  // The value's length, or a negative Status. Only looks at the indexes: it moves no page
  // (no promotion, no eviction) and counts no hit or miss.
  int64_t value_size(const std::string& key);
  // results[i]: where the key is: 1 in DRAM, 2 on NVMe only (a get promotes it; pages on their
  // way to NVMe count as NVMe), 0 absent, negative Status for a bad key. Touches no data.
  void batch_exists(const std::vector<std::string>& keys, int32_t* results);
  // Starts copying NVMe-only pages of `keys` into DRAM in the background, in the order given, in
  // steps of `step` pages (0: kDefaultPrefetchStep); a step's pages land together. Queued lists
  // start in the order they were queued (prefetch_workers steps run at once). Returns how many
  // pages were queued.
  static constexpr uint32_t kDefaultPrefetchStep = 16;
  int32_t prefetch(const std::vector<std::string>& keys, uint32_t step = 0);
  int32_t remove(const std::string& key);
  // Removes every key that starts with prefix, from every tier, as remove() does; returns how
  // many, or a negative Status (UNSUPPORTED when the DRAM tier keeps no keys: tiers.dram.keep_keys).
  int64_t remove_prefix(const std::string& prefix);
  int32_t remove_all();
  void close();  // seals NVMe; DRAM content that was not demoted is dropped

  // The shared-memory arena clients map: a memfd.
  int arena_fd() const;
  uint64_t arena_size() const;
  uint8_t* arena_base() const;

  TieredStats stats();
  // stats() as a JSON object string: {"dram": {...}, "tiering": {...}, "nvme": {...}}.
  std::string stats_json();
  std::vector<Note> take_notes();  // the NVMe tier's, prefixed "nvme: "
  // Test hook: NvmeEngine::inject_faults on the NVMe tier (no-op without one).
  void inject_nvme_faults(FaultInjector::Kind k, int times, int err, int ms);

 struct Impl;  // public so the file-local helpers in tiered_store.cpp can take it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mch
