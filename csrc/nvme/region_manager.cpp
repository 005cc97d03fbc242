// RegionManager: see region_manager.h and record_format.h (trailer, summary).
#include "nvme/region_manager.h"

#include <string.h>

#include <algorithm>
#include <string>

namespace mch {

namespace {
std::string errstr(int64_t rc) { return rc < 0 ? strerror(static_cast<int>(-rc)) : "short write"; }
}  // namespace

RegionManager::RegionManager(Device& dev, bool sync_on_seal, NoteLog& notes, std::atomic<uint64_t>& io_errors)
    : dev_(dev),
      sync_on_seal_(sync_on_seal),
      notes_(notes),
      io_errors_(io_errors),
      regions_(dev.region_count()),
      next_region_seq_(dev.first_region_seq()),
      next_seq_(dev.first_record_seq()) {}

void RegionManager::reset_all() {
  regions_.assign(regions_.size(), RegionState{});
  free_.clear();
  for (uint32_t r = 0; r < regions_.size(); r++) free_.push_back(r);
  sealed_fifo_.clear();
  open_ = -1;
  counted();
}

int64_t RegionManager::take_free() {
  if (free_.empty()) return -1;
  uint32_t r = free_.front();
  free_.pop_front();
  counted();
  return r;
}

int64_t RegionManager::pop_oldest_sealed() {
  if (sealed_fifo_.empty()) return -1;
  uint32_t r = sealed_fifo_.front();
  sealed_fifo_.pop_front();
  counted();
  return r;
}

void RegionManager::release(uint32_t r) {
  regions_[r] = RegionState{};
  free_.push_back(r);
  counted();
}

void RegionManager::push_sealed(uint32_t r) {
  sealed_fifo_.push_back(r);
  counted();
}

bool RegionManager::fits(const RegionState& s, uint64_t rec_bytes) const {
  return s.write_off + rec_bytes + disk::summary_bytes(s.reserved + 1) + kBlock <= dev_.region_size();
}

uint64_t RegionManager::place(uint64_t rec_bytes) {
  RegionState& s = regions_[open_];
  uint64_t off = s.write_off;
  s.write_off += rec_bytes;
  s.reserved++;
  return off;
}

void RegionManager::raise_sequences(uint64_t max_region_seq, uint64_t max_seq) {
  next_region_seq_ = std::max(next_region_seq_, max_region_seq + 1);
  next_seq_ = std::max(next_seq_, max_seq + 1);
}

void RegionManager::seal(IoContext& ctx, uint32_t r) {
  RegionState& s = regions_[r];
  const uint64_t n = s.entries.size();
  const uint64_t sum_bytes = disk::summary_bytes(n);
  AlignedBuffer buf(sum_bytes + kBlock);
  if (n) memcpy(buf.data(), s.entries.data(), n * sizeof(disk::SummaryEntry));
  disk::RegionTrailer t{};
  t.state = disk::kSealed;
  t.region_seq = s.region_seq;
  t.entry_count = n;
  t.summary_offset = dev_.region_size() - kBlock - sum_bytes;
  t.summary_checksum = checksum64(buf.data(), n * sizeof(disk::SummaryEntry));
  disk::seal_trailer(&t);
  memcpy(buf.data() + sum_bytes, &t, sizeof(t));
  int64_t rc = ctx.sync_io(IoOp::kWrite, base(r) + t.summary_offset, buf.data(), buf.size());
  if (rc != static_cast<int64_t>(buf.size())) {
    io_errors_++;
    notes_.warn("sealing region " + std::to_string(r) + " failed (" + errstr(rc) +
               "); its pages stay readable, a restart will scan it");
  }
  int err = sync_on_seal_ ? dev_.sync() : 0;
  if (err) {
    io_errors_++;
    notes_.warn("fdatasync after sealing region " + std::to_string(r) + " failed (" + strerror(err) +
                "); pages written since the last sync may not survive a power loss");
  }
  s.state = RegionState::kSealed;
  s.summary_off = t.summary_offset;
  s.summary_count = n;
  std::vector<disk::SummaryEntry>().swap(s.entries);
  sealed_fifo_.push_back(r);
  counted();
  if (open_ == static_cast<int64_t>(r)) open_ = -1;
}

bool RegionManager::open(IoContext& ctx, uint32_t r) {
  RegionState& s = regions_[r];
  s = RegionState{};
  s.state = RegionState::kOpen;
  s.region_seq = next_region_seq_++;
  disk::RegionTrailer t{};
  t.state = disk::kOpen;
  t.region_seq = s.region_seq;
  disk::seal_trailer(&t);
  memset(ctx.scratch, 0, kBlock);
  memcpy(ctx.scratch, &t, sizeof(t));
  int64_t rc = ctx.sync_io(IoOp::kWrite, base(r) + dev_.region_size() - kBlock, ctx.scratch, kBlock);
  if (rc != static_cast<int64_t>(kBlock)) {
    io_errors_++;
    notes_.warn("cannot open region " + std::to_string(r) + " (" + errstr(rc) + ")");
    release(r);
    return false;
  }
  open_ = r;
  return true;
}

}  // namespace mch
