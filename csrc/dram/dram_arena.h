// DramArena: one shared-memory mapping (a memfd) that holds every DRAM-tier value. Clients in
// other processes map the same memfd (the node passes the fd over its Unix socket), so bytes
// move with one memcpy between a client's buffer and the arena.
//
// Backing: 2 MiB hugetlb pages when the system has enough reserved, else shmem pages with
// transparent hugepages advised; page_kind() says which ("hugetlb", "thp" or "4k").
// Immutable after construction (a background thread pre-faults the pages); any thread may
// read its fields.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

namespace mch {

class DramArena {
 public:
  DramArena(uint64_t size, bool try_hugepages);  // throws EngineError
  ~DramArena();
  DramArena(const DramArena&) = delete;
  DramArena& operator=(const DramArena&) = delete;

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_; }
  const char* page_kind() const { return page_kind_; }

 private:
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  const char* page_kind_ = "4k";
  std::thread populate_;  // pre-faults a shmem arena after construction
  std::atomic<bool> stop_populate_{false};
};

}  // namespace mch
