#include "dram/dram_arena.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#include "common/error.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

namespace mch {

namespace {
constexpr uint64_t k2M = 2ull << 20;

// The arena's size never changes and no further seal may be added: a client that holds the fd
// can neither shrink it under the node (SIGBUS) nor add a write seal that would make every later
// client's mapping fail.
bool lock_seals(int fd) { return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0; }

bool thp_shmem_advisable() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string s;
  std::getline(f, s);
  return s.find("[advise]") != std::string::npos || s.find("[always]") != std::string::npos ||
         s.find("[within_size]") != std::string::npos;
}
}  // namespace

DramArena::DramArena(uint64_t size, bool try_hugepages) {
  size_ = (size + k2M - 1) / k2M * k2M;
  if (size_ == 0) throw EngineError(EngineError::kInvalid, "tiers.dram.capacity must be positive");
  if (try_hugepages) {
    int fd = memfd_create("mooncake-hicache-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_HUGE_2MB);
    if (fd >= 0) {
      // mmap of a hugetlb memfd reserves the pages up front, so a shortage fails here and not
      // later with SIGBUS.
      void* p = MAP_FAILED;
      if (ftruncate(fd, static_cast<off_t>(size_)) == 0 && lock_seals(fd))
        p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) {
        fd_ = fd;
        base_ = static_cast<uint8_t*>(p);
        page_kind_ = "hugetlb";
        return;
      }
      ::close(fd);
    }
  }
  fd_ = memfd_create("mooncake-hicache-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd_ < 0) throw EngineError(EngineError::kIo, std::string("memfd_create: ") + strerror(errno));
  if (ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
    int e = errno;
    ::close(fd_);
    throw EngineError(EngineError::kInvalid, "cannot size the DRAM arena to " + std::to_string(size_) +
                                                 " bytes (" + strerror(e) + "); lower tiers.dram.capacity");
  }
  if (!lock_seals(fd_)) {
    int e = errno;
    ::close(fd_);
    throw EngineError(EngineError::kIo, std::string("cannot seal the DRAM arena's memfd: ") + strerror(e));
  }
  void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::close(fd_);
    throw EngineError(EngineError::kInvalid, std::string("cannot map the DRAM arena (") + strerror(e) +
                                                 "); lower tiers.dram.capacity");
  }
  base_ = static_cast<uint8_t*>(p);
  if (try_hugepages && thp_shmem_advisable() && madvise(base_, size_, MADV_HUGEPAGE) == 0) page_kind_ = "thp";
  // Fault the pages in ahead of use, in the background: first writes into a cold shmem arena
  // run at a fraction of memcpy speed. A put that gets there first simply faults the page itself.
  populate_ = std::thread([this] {
    const uint64_t chunk = 64ull << 20;
    for (uint64_t off = 0; off < size_ && !stop_populate_.load(); off += chunk)
      madvise(base_ + off, std::min(chunk, size_ - off), MADV_POPULATE_WRITE);
  });
}

DramArena::~DramArena() {
  stop_populate_.store(true);
  if (populate_.joinable()) populate_.join();
  if (base_) munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace mch
