// MemoryMap: see memory_map.h.
#include "transport/rdma/memory_map.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>

namespace mch::rdma {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void prefault(void* addr, uint64_t len) {
  if (len == 0) return;
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t start = reinterpret_cast<uintptr_t>(addr) & ~static_cast<uintptr_t>(page - 1);
  uint64_t span = len + (reinterpret_cast<uintptr_t>(addr) - start);
  if (madvise(reinterpret_cast<void*>(start), span, MADV_POPULATE_WRITE) == 0) return;
  // Older kernels: read one byte per page (a read fault maps it; registration then pins it).
  volatile const uint8_t* p = static_cast<const uint8_t*>(addr);
  uint8_t sink = 0;
  for (uint64_t off = 0; off < len; off += static_cast<uint64_t>(page)) sink ^= p[off];
  (void)sink;
}

MemoryMap::~MemoryMap() {
  std::unique_lock<std::shared_mutex> lk(mu_);
  drop(regions_);
}

void MemoryMap::drop(std::vector<Region>& regs) {
  for (Region& r : regs) api_.dereg_mr(r.mr);
  regs.clear();
}

int MemoryMap::add(void* addr, uint64_t len, int access, std::string* err) {
  uint64_t a = reinterpret_cast<uint64_t>(addr);
  if (!addr || len == 0 || a + len < a) {
    *err = "cannot register an empty or wrapping range";
    return EINVAL;
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  for (const Region& r : regions_) {
    if (a < r.addr + r.len && r.addr < a + len) {
      *err = "the range overlaps memory registered already";
      return EEXIST;
    }
  }
  prefault(addr, len);
  std::vector<Region> added;
  for (uint64_t off = 0; off < len; off += max_mr_) {
    uint64_t n = std::min(max_mr_, len - off);
    Region r{a + off, n, 0, 0, nullptr, a};
    r.mr = api_.reg_mr(pd_, reinterpret_cast<void*>(a + off), n, access, &r.lkey, &r.rkey);
    if (!r.mr) {
      int e = errno ? errno : ENOMEM;
      *err = "registering " + std::to_string(n) + " bytes failed: " + strerror(e) +
             (e == ENOMEM || e == EPERM ? " (raise the locked-memory limit: ulimit -l unlimited)" : "");
      drop(added);
      return e;
    }
    added.push_back(r);
  }
  regions_.insert(regions_.end(), added.begin(), added.end());
  std::sort(regions_.begin(), regions_.end(), [](const Region& x, const Region& y) { return x.addr < y.addr; });
  return 0;
}

bool MemoryMap::remove(void* addr) {
  uint64_t a = reinterpret_cast<uint64_t>(addr);
  std::unique_lock<std::shared_mutex> lk(mu_);
  std::vector<Region> gone, keep;
  for (Region& r : regions_) (r.owner == a ? gone : keep).push_back(r);
  if (gone.empty()) return false;
  drop(gone);
  regions_.swap(keep);
  return true;
}

bool MemoryMap::lookup(uint64_t addr, uint64_t len, std::vector<MemoryPiece>* out) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  size_t before = out->size();
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uint64_t a, const Region& r) { return a < r.addr; });
  if (it == regions_.begin() && len) return false;
  if (len) --it;
  while (len > 0) {
    if (it == regions_.end() || addr < it->addr || addr >= it->addr + it->len) {
      out->resize(before);
      return false;
    }
    uint64_t n = std::min(len, it->addr + it->len - addr);
    out->push_back(MemoryPiece{addr, n, it->lkey, it->rkey});
    addr += n;
    len -= n;
    ++it;
  }
  return true;
}

std::vector<MemoryPiece> MemoryMap::regions() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  std::vector<MemoryPiece> out;
  for (const Region& r : regions_) out.push_back(MemoryPiece{r.addr, r.len, r.lkey, r.rkey});
  return out;
}

uint64_t MemoryMap::bytes() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  uint64_t n = 0;
  for (const Region& r : regions_) n += r.len;
  return n;
}

size_t MemoryMap::region_count() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return regions_.size();
}

}  // namespace mch::rdma
