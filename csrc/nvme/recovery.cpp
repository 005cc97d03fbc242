// Recovery: see recovery.h and record_format.h.
#include "nvme/recovery.h"

#include <string.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace mch {

namespace {

constexpr size_t kScanWindow = 8 << 20;  // read size when scanning an open region
using Record = std::pair<uint32_t, disk::SummaryEntry>;  // region, entry
constexpr uint32_t kOrphan = UINT32_MAX;  // Record's region for a tombstone found in a free region

class Recovery {
 public:
  Recovery(IoContext& ctx, const Device& dev, RegionManager& regions, PageIndex& index)
      : ctx_(ctx), dev_(dev), regions_(regions), index_(index), n_(dev.region_count()) {}

  RecoveryResult run() {
    auto t0 = std::chrono::steady_clock::now();
    read_trailers();
    collect();
    collect_orphan_tombstones();
    apply();
    keep_orphans();
    rebuild_fifo();
    res_.entries = index_.size();
    res_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res_;
  }

 private:
  // Reads the block at `off` of every region in `rs` and calls got(i, block) for rs[i] (block
  // is null when the read failed).
  template <class Got>
  void read_block_of_each(const std::vector<uint32_t>& rs, uint64_t off, Got got) {
    std::vector<uint64_t> offsets(rs.size());
    for (size_t i = 0; i < rs.size(); i++) offsets[i] = dev_.region_base(rs[i]) + off;
    read_blocks(ctx_, offsets, got);
  }

  // 1. Every region's trailer.
  void read_trailers() {
    trailers_.assign(n_, disk::RegionTrailer{});
    std::vector<uint32_t> all(n_);
    for (uint32_t r = 0; r < n_; r++) all[r] = r;
    read_block_of_each(all, dev_.region_size() - kBlock, [&](uint64_t i, const uint8_t* b) {
      if (b) memcpy(&trailers_[i], b, sizeof(disk::RegionTrailer));
    });
  }

  // 2. Records: summaries of sealed regions, scans of the others.
  void collect() {
    scanned_.assign(n_, false);
    for (uint32_t r = 0; r < n_; r++) {
      const disk::RegionTrailer& t = trailers_[r];
      if (!disk::trailer_valid(t)) {
        regions_.release(r);
        continue;
      }
      max_region_seq_ = std::max(max_region_seq_, t.region_seq);
      regions_.at(r).region_seq = t.region_seq;
      if (!read_summary(r, t)) {  // open region, or a sealed one whose summary did not verify
        scan_region(r, t.region_seq);
        scanned_[r] = true;
        res_.regions_scanned++;
      }
    }
  }

  bool read_summary(uint32_t r, const disk::RegionTrailer& t) {
    const uint64_t bytes = disk::summary_bytes(t.entry_count);
    if (t.state != disk::kSealed || t.summary_offset + bytes + kBlock != dev_.region_size()) return false;
    AlignedBuffer buf(std::max<uint64_t>(bytes, kBlock));
    if (bytes && ctx_.sync_io(IoOp::kRead, dev_.region_base(r) + t.summary_offset, buf.data(), bytes) !=
                     static_cast<int64_t>(bytes))
      return false;
    if (checksum64(buf.data(), t.entry_count * sizeof(disk::SummaryEntry)) != t.summary_checksum) return false;
    auto* e = reinterpret_cast<const disk::SummaryEntry*>(buf.data());
    for (uint64_t i = 0; i < t.entry_count; i++) all_.push_back({r, e[i]});
    RegionState& s = regions_.at(r);
    s.state = RegionState::kSealed;
    s.summary_off = t.summary_offset;
    s.summary_count = t.entry_count;
    return true;
  }

  void scan_region(uint32_t r, uint64_t region_seq);

  // 2b. A region without a valid trailer is free, but its blocks may still hold tombstones of
  // removals that were acknowledged (its trailer was damaged, or lost in a crash while sealing).
  // Every tombstone found in a free region that was ever written (its first block is a record)
  // is applied with the others: in sequence order a tombstone only deletes older records of its
  // key, so an old one can never delete a newer put. Puts found there are not trusted.
  void collect_orphan_tombstones() {
    std::vector<uint32_t> untrusted;
    for (uint32_t r = 0; r < n_; r++)
      if (!disk::trailer_valid(trailers_[r])) untrusted.push_back(r);
    std::vector<uint32_t> written;
    read_block_of_each(untrusted, 0, [&](uint64_t i, const uint8_t* b) {
      disk::RecordHeader h;
      if (b && disk::decode_header(b, &h)) written.push_back(untrusted[i]);
    });
    for (uint32_t r : written) scan_tombstones(r);
    res_.untrusted_regions = std::move(written);
  }
  void scan_tombstones(uint32_t r);

  // Tombstones of free regions that took effect and still stand are handed to the engine, which
  // writes them again into the log (their region will be reused and overwritten).
  void keep_orphans() {
    for (const auto& [d, key] : orphan_keys_)
      if (effective_.count(d) && !index_.find(d)) res_.orphan_tombstones.push_back({key, d});
  }

  // 3. In sequence order: later puts replace earlier ones, tombstones delete.
  void apply() {
    std::sort(all_.begin(), all_.end(), [](const Record& a, const Record& b) { return a.second.seq < b.second.seq; });
    uint64_t max_seq = 0;
    for (const auto& [r, e] : all_) {
      max_seq = std::max(max_seq, e.seq);
      KeyDigest d{e.digest_lo, e.digest_hi};
      PageLocation* cur = index_.find(d);
      if (cur) res_.value_bytes -= cur->value_len;
      if (e.flags & disk::kTombstone) {
        if (cur && r == kOrphan) effective_.insert(d);
        if (cur) index_.erase(d);
        continue;
      }
      PageLocation loc;
      loc.value_checksum = e.value_checksum;
      loc.value_len = static_cast<uint32_t>(e.value_len);
      loc.region = r;
      loc.block = e.block;
      index_.put(d, loc);
      res_.value_bytes += e.value_len;
    }
    res_.records_seen = all_.size();
    // Sequence numbers of this life already start above every earlier life's (boot_epoch).
    regions_.raise_sequences(max_region_seq_, max_seq);
  }

  // 4. The FIFO, oldest incarnation first; scanned regions are sealed (or freed when empty).
  void rebuild_fifo() {
    std::vector<uint32_t> used;
    for (uint32_t r = 0; r < n_; r++)
      if (disk::trailer_valid(trailers_[r])) used.push_back(r);
    std::sort(used.begin(), used.end(),
              [&](uint32_t a, uint32_t b) { return regions_.at(a).region_seq < regions_.at(b).region_seq; });
    for (uint32_t r : used) {
      if (!scanned_[r])
        regions_.push_sealed(r);
      else if (regions_.at(r).entries.empty())
        regions_.release(r);
      else
        regions_.seal(ctx_, r);
    }
  }

  IoContext& ctx_;
  const Device& dev_;
  RegionManager& regions_;
  PageIndex& index_;
  const uint64_t n_;
  std::vector<disk::RegionTrailer> trailers_;
  std::vector<Record> all_;
  std::vector<bool> scanned_;
  uint64_t max_region_seq_ = 0;
  std::vector<std::pair<KeyDigest, std::string>> orphan_keys_;  // tombstones of free regions
  std::unordered_set<KeyDigest, DigestHash> effective_;         // ... that deleted a record
  RecoveryResult res_;
};

// A window of the region's bytes, read on demand.
class ScanWindow {
 public:
  ScanWindow(IoContext& ctx, uint64_t base, uint64_t limit)
      : ctx_(ctx), base_(base), limit_(limit), buf_(std::min<uint64_t>(kScanWindow, limit)) {}
  // Makes [at, at + need) available; false on a read error.
  bool load(uint64_t at, uint64_t need) {
    if (at >= start_ && at + need <= start_ + len_) return true;
    uint64_t len = std::min(std::max<uint64_t>(buf_.size(), need), limit_ - at);
    if (len > buf_.size()) buf_ = AlignedBuffer(len);
    if (ctx_.sync_io(IoOp::kRead, base_ + at, buf_.data(), len) != static_cast<int64_t>(len)) return false;
    start_ = at;
    len_ = len;
    return true;
  }
  const uint8_t* at(uint64_t off) const { return buf_.data() + (off - start_); }

 private:
  IoContext& ctx_;
  const uint64_t base_, limit_;
  AlignedBuffer buf_;
  uint64_t start_ = 0, len_ = 0;
};

disk::SummaryEntry entry_of(const disk::RecordHeader& h, uint64_t off) {
  disk::SummaryEntry e{};
  e.digest_lo = h.digest_lo;
  e.digest_hi = h.digest_hi;
  e.block = static_cast<uint32_t>(off / kBlock);
  e.flags = h.flags;
  e.value_len = h.value_len;
  e.value_checksum = h.value_checksum;
  e.seq = h.seq;
  return e;
}

// Walks region r from its first block: for each block that decodes as a record header, calls
// visit(header, offset, window), which returns the bytes to advance (0: stop there); blocks that
// do not decode are stepped over. Returns the offset where the walk stopped.
template <class Visit>
uint64_t walk_records(IoContext& ctx, const Device& dev, uint32_t r, Visit visit) {
  const uint64_t limit = dev.region_size() - kBlock;
  ScanWindow win(ctx, dev.region_base(r), limit);
  uint64_t off = 0;
  while (off + kBlock <= limit && win.load(off, kBlock)) {
    disk::RecordHeader h;
    uint64_t step = disk::decode_header(win.at(off), &h) ? visit(h, off, win) : kBlock;
    if (step == 0) break;
    off += step;
  }
  return off;
}

void Recovery::scan_region(uint32_t r, uint64_t region_seq) {
  RegionState& s = regions_.at(r);
  s.entries.clear();
  const uint64_t limit = dev_.region_size() - kBlock;
  uint64_t end = walk_records(ctx_, dev_, r, [&](const disk::RecordHeader& h, uint64_t off, ScanWindow& win) -> uint64_t {
    const uint64_t rb = disk::record_bytes(h.value_len);
    if (h.region_seq != region_seq || off + rb > limit) return kBlock;
    if (!(h.flags & disk::kTombstone)) {
      if (!win.load(off, rb)) return 0;
      if (checksum64(win.at(off) + kBlock, h.value_len) != h.value_checksum) return rb;  // torn: skipped
    }
    s.entries.push_back(entry_of(h, off));
    all_.push_back({r, s.entries.back()});
    return rb;
  });
  s.state = RegionState::kOpen;
  s.write_off = end;
  s.reserved = s.entries.size();
}

void Recovery::scan_tombstones(uint32_t r) {
  const uint64_t limit = dev_.region_size() - kBlock;
  walk_records(ctx_, dev_, r, [&](const disk::RecordHeader& h, uint64_t off, ScanWindow& win) -> uint64_t {
    if (h.flags & disk::kTombstone) {
      all_.push_back({kOrphan, entry_of(h, off)});
      orphan_keys_.push_back({KeyDigest{h.digest_lo, h.digest_hi},
                              std::string(reinterpret_cast<const char*>(win.at(off) + sizeof(h)), h.key_len)});
      return kBlock;
    }
    const uint64_t rb = disk::record_bytes(h.value_len);
    return off + rb <= limit ? rb : kBlock;
  });
}

}  // namespace

RecoveryResult recover(IoContext& ctx, const Device& dev, RegionManager& regions, PageIndex& index) {
  return Recovery(ctx, dev, regions, index).run();
}

}  // namespace mch
