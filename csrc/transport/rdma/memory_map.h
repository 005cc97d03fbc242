// MemoryMap: the memory registered on one RDMA device. A range given to add() is registered as
// memory regions of at most the device's max_mr_size each (a node's arena of 1 TiB on a NIC with
// a 64 GiB limit is 16 regions); lookup() turns any byte range inside registered memory into the
// pieces of it that lie in one region each, with their lkey and rkey (a range that crosses a
// region boundary gives two pieces). Memory is pre-faulted before it is registered (registration
// of untouched memory crawls).
//
// Thread-safe: add/remove take the lock exclusively, lookups share it.
#pragma once
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <vector>

#include "transport/rdma/verbs_api.h"

namespace mch::rdma {

struct MemoryPiece {
  uint64_t addr = 0;
  uint64_t len = 0;
  uint32_t lkey = 0, rkey = 0;
};

class MemoryMap {
 public:
  MemoryMap(const VerbsApi& api, ProtectionDomain* pd, uint64_t max_mr_size)
      : api_(api), pd_(pd), max_mr_(max_mr_size ? max_mr_size : (1ull << 40)) {}
  ~MemoryMap();
  MemoryMap(const MemoryMap&) = delete;
  MemoryMap& operator=(const MemoryMap&) = delete;

  // Registers [addr, addr+len) with `access` (Access bits). 0, or an errno value with *err
  // saying what failed (nothing stays registered then). EEXIST: it overlaps a registered range.
  int add(void* addr, uint64_t len, int access, std::string* err);
  // Deregisters the range add() was given at `addr`. false: none starts there.
  bool remove(void* addr);
  // The pieces of [addr, addr+len) appended to *out; false (out unchanged) when a byte of it is
  // not registered.
  bool lookup(uint64_t addr, uint64_t len, std::vector<MemoryPiece>* out) const;
  // Every region (one piece each), ascending by address.
  std::vector<MemoryPiece> regions() const;
  uint64_t bytes() const;
  size_t region_count() const;
  uint64_t max_mr_size() const { return max_mr_; }

 private:
  struct Region {
    uint64_t addr, len;
    uint32_t lkey, rkey;
    MemoryRegion* mr;
    uint64_t owner;  // the address add() was given
  };
  void drop(std::vector<Region>& regs);

  const VerbsApi& api_;
  ProtectionDomain* pd_;
  const uint64_t max_mr_;
  mutable std::shared_mutex mu_;  // guards regions_
  std::vector<Region> regions_;   // ascending by addr, disjoint
};

// Pre-faults [addr, addr+len) for writing (MADV_POPULATE_WRITE where the kernel has it, else a
// touch per page). Best effort.
void prefault(void* addr, uint64_t len);

}  // namespace mch::rdma
