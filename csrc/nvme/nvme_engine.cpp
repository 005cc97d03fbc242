// NvmeEngine implementation. Read nvme_engine.h (what it owns, who may call) and
// record_format.h (the bytes on disk) first.
#include "nvme/nvme_engine.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common/text.h"

namespace mch {

using disk::kBlock;

namespace {

constexpr size_t kSlotBounce = 32 << 10;   // per-slot registered bounce memory
constexpr size_t kScanWindow = 8 << 20;    // read size when scanning an open region

std::string errstr(int64_t neg_errno) { return strerror(static_cast<int>(-neg_errno)); }

// Validates a scatter-gather list and returns its total length, or a negative Status.
int64_t check_sg(const SgList& segs) {
  if (segs.size() > NvmeEngine::kMaxSegments) return status_code(Status::kInvalidParams);
  uint64_t total = 0;
  for (const Segment& s : segs) {
    if (s.len > 0 && s.ptr == nullptr) return status_code(Status::kInvalidParams);
    total += s.len;
  }
  return static_cast<int64_t>(total);
}


// One piece of a record's I/O: either caller memory used in place (O_DIRECT needs address,
// file offset and length 4 KiB aligned) or a span of bounce memory.
struct Piece {
  bool bounce;
  uint8_t* addr;  // caller memory (bounce == false)
  size_t off;     // offset in bounce memory (bounce == true)
  size_t len;
};
struct BounceCopy {
  size_t off;     // offset in bounce memory
  uint8_t* user;
  size_t len;
};

// Lays out `len` value bytes, held in (put) or destined for (get) `segs`, starting at a
// block-aligned file offset. Aligned runs of caller memory are used in place; everything else
// goes through bounce memory, in runs that start and end on block boundaries. Returns the
// bounce bytes needed (block multiple); *used gets the bytes actually copied.
size_t plan_value_io(const SgList& segs, uint64_t len, std::vector<Piece>* pieces,
                     std::vector<BounceCopy>* copies, size_t* used) {
  size_t bounce = 0;  // bytes of bounce memory consumed so far
  size_t run_begin = 0;
  bool run_open = false;
  uint64_t cursor = 0;  // value offset
  for (const Segment& seg : segs) {
    if (len == 0) break;
    uint8_t* p = seg.ptr;
    uint64_t n = std::min(seg.len, len);
    len -= n;
    while (n > 0) {
      auto addr = reinterpret_cast<uintptr_t>(p);
      bool direct = disk::is_aligned(cursor) && disk::is_aligned(addr) && n >= kBlock;
      size_t take;
      if (direct) {
        if (run_open) {  // cursor is aligned, so the run is a block multiple
          pieces->push_back({true, nullptr, run_begin, bounce - run_begin});
          run_open = false;
        }
        take = n & ~(uint64_t)(kBlock - 1);
        pieces->push_back({false, p, 0, take});
      } else {
        if (!run_open) {
          run_open = true;
          run_begin = bounce;
        }
        // If memory and file offsets agree modulo the block size, stop at the next boundary
        // so the rest of the segment can go in place; otherwise bounce all of it.
        bool co_aligned = ((addr - cursor) & (kBlock - 1)) == 0;
        take = co_aligned ? std::min<uint64_t>(n, kBlock - (cursor & (kBlock - 1))) : n;
        copies->push_back({bounce, p, take});
        bounce += take;
      }
      cursor += take;
      p += take;
      n -= take;
    }
  }
  *used = bounce;
  if (run_open) {
    bounce = disk::align_up(bounce);
    pieces->push_back({true, nullptr, run_begin, bounce - run_begin});
  }
  return bounce;
}

}  // namespace

// ---- IoContext ----------------------------------------------------------------------------

struct NvmeEngine::IoContext {
  struct Copy {
    uint8_t* bounce;
    uint8_t* user;
    size_t len;
  };
  struct Slot {
    uint8_t* header = nullptr;  // kBlock of registered staging
    uint8_t* bounce = nullptr;  // kSlotBounce of registered staging
    AlignedBuffer big;          // when a record needs more bounce memory than that
    std::vector<iovec> iov;
    std::vector<Copy> copies;
    int64_t expect = 0;  // bytes the I/O must move
    size_t item = 0;     // index in the batch
    PageLocation loc;
    KeyDigest digest;
    disk::SummaryEntry entry{};  // writes: what the summary will list
  };

  std::unique_ptr<IoQueue> q;
  AlignedBuffer staging;
  uint8_t* scratch = nullptr;  // one kBlock for control I/O (trailers, tombstones)
  std::vector<Slot> slots;
  std::vector<int> free_slots;
  std::vector<IoCompletion> cqes;
  std::vector<Piece> pieces;         // scratch for planning
  std::vector<BounceCopy> bcopies;   // scratch for planning

  // Fills slot.iov (appending) and slot.copies for a value. Returns false if the layout
  // needs more iovecs than one I/O can take.
  bool prepare_value(Slot& s, const SgList& segs, uint64_t len, size_t* bounce_used,
                     uint8_t** bounce_base, size_t* bounce_total) {
    pieces.clear();
    bcopies.clear();
    size_t total = plan_value_io(segs, len, &pieces, &bcopies, bounce_used);
    if (pieces.size() + s.iov.size() > IOV_MAX) return false;
    uint8_t* base = s.bounce;
    if (total > kSlotBounce) {
      s.big = AlignedBuffer(total);
      base = s.big.data();
    }
    for (const Piece& p : pieces)
      s.iov.push_back({p.bounce ? base + p.off : p.addr, p.len});
    s.copies.clear();
    for (const BounceCopy& c : bcopies) s.copies.push_back({base + c.off, c.user, c.len});
    *bounce_base = base;
    *bounce_total = total;
    return true;
  }

  int take_slot() {
    int i = free_slots.back();
    free_slots.pop_back();
    return i;
  }
  void give_slot(int i) {
    slots[i].big = AlignedBuffer();
    free_slots.push_back(i);
  }
};

struct NvmeEngine::PutItem {
  const std::string* key;
  KeyDigest digest;
  const SgList* segs;
  uint64_t len;
  int32_t* result;
  bool reinsert;
};


// ---- construction, files, recovery --------------------------------------------------------

NvmeEngine::NvmeEngine(const NvmeOptions& opt) : opt_(opt) {
  if (opt_.path.empty()) throw EngineError(EngineError::kInvalid, "tiers.nvme.path is empty");
  if (opt_.region_size < (1u << 20) || !disk::is_aligned(opt_.region_size))
    throw EngineError(EngineError::kInvalid,
                      "tiers.nvme.region_size must be a multiple of 4 KiB and at least 1 MiB");
  if (opt_.queue_depth < 1 || opt_.queue_depth > 4096)
    throw EngineError(EngineError::kInvalid, "tiers.nvme.queue_depth must be between 1 and 4096");
  if (opt_.max_parallel_calls < 1) opt_.max_parallel_calls = 1;
  max_value_ = opt_.region_size - 3 * kBlock;

  open_file();
  try {
    // Choose the I/O backend once; every context uses the same one.
    const std::string& want = opt_.io_backend;
    if (want != "auto" && want != "io_uring" && want != "threads")
      throw EngineError(EngineError::kInvalid,
                        "tiers.nvme.io_backend must be auto, io_uring or threads, not '" + want + "'");
    backend_ = "threads";
    if (want != "threads") {
      try {
        make_uring_queue(fd_, 2, nullptr, 0, nullptr);
        backend_ = "io_uring";
      } catch (const std::exception& e) {
        if (want == "io_uring")
          throw EngineError(EngineError::kInvalid,
                            std::string("tiers.nvme.io_backend is io_uring but io_uring cannot be set up (") +
                                e.what() + "); set io_backend: auto or threads");
        note(std::string("io_uring unavailable (") + e.what() +
             "); using the pread/pwrite thread-pool backend");
      }
    }
    if (backend_ == "threads") pool_.reset(new ThreadPool(std::min(std::max(opt_.queue_depth, 1), 32)));
    recover();
  } catch (...) {
    ctx_free_.clear();
    ctx_all_.clear();
    pool_.reset();
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

NvmeEngine::~NvmeEngine() {
  try {
    close();
  } catch (...) {
  }
}

void NvmeEngine::note(const std::string& line) {
  std::lock_guard<std::mutex> lk(notes_mu_);
  notes_.push_back(line);
}

std::vector<std::string> NvmeEngine::take_notes() {
  std::lock_guard<std::mutex> lk(notes_mu_);
  std::vector<std::string> out;
  out.swap(notes_);
  return out;
}

void NvmeEngine::open_file() {
  const std::string& path = opt_.path;
  int flags = O_RDWR | O_CREAT | O_CLOEXEC | (opt_.direct_io ? O_DIRECT : 0);
  fd_ = ::open(path.c_str(), flags, 0644);
  if (fd_ < 0) {
    int e = errno;
    if (e == EINVAL && opt_.direct_io)
      throw EngineError(EngineError::kInvalid,
                        "tiers.nvme.path '" + path + "': the file system does not support O_DIRECT; "
                        "put the file on a local disk or set tiers.nvme.direct_io: false");
    throw EngineError(EngineError::kInvalid, "tiers.nvme.path '" + path + "' cannot be opened (" +
                                                 strerror(e) + "); choose a writable location");
  }
  auto fail = [&](EngineError::Kind k, const std::string& msg) {
    ::close(fd_);
    fd_ = -1;
    throw EngineError(k, msg);
  };
  // A process that was just killed may hold the lock a few more milliseconds while the kernel
  // tears down its io_uring instances: retry briefly before calling the file busy.
  bool locked = false;
  for (int attempt = 0; attempt < 50 && !locked; attempt++) {
    locked = flock(fd_, LOCK_EX | LOCK_NB) == 0;
    if (!locked) usleep(10000);
  }
  if (!locked)
    fail(EngineError::kInUse, "tiers.nvme.path '" + path +
                                  "' is in use by another mooncake-hicache engine (it holds the file lock); "
                                  "stop that process or point tiers.nvme.path at another file");
  struct stat st;
  if (fstat(fd_, &st) != 0) fail(EngineError::kIo, "fstat '" + path + "': " + strerror(errno));
  is_blockdev_ = S_ISBLK(st.st_mode);
  uint64_t capacity = opt_.capacity;
  if (is_blockdev_) {
    uint64_t dev_bytes = 0;
    if (ioctl(fd_, BLKGETSIZE64, &dev_bytes) != 0)
      fail(EngineError::kIo, "cannot read the size of block device '" + path + "': " + strerror(errno));
    if (dev_bytes <= disk::kDataOffset) fail(EngineError::kInvalid, "block device '" + path + "' is too small");
    if (capacity == 0) capacity = dev_bytes - disk::kDataOffset;
    if (capacity + disk::kDataOffset > dev_bytes)
      fail(EngineError::kInvalid, "tiers.nvme.capacity " + format_bytes(capacity) + " exceeds block device '" +
                                      path + "' (" + format_bytes(dev_bytes) + "); lower it or set 0 for the whole device");
  } else if (!S_ISREG(st.st_mode)) {
    fail(EngineError::kInvalid, "tiers.nvme.path '" + path + "' is neither a regular file nor a block device");
  } else if (capacity == 0) {
    fail(EngineError::kInvalid, "tiers.nvme.capacity 0 (whole device) is only valid for block devices; give a size");
  }
  region_count_ = capacity / opt_.region_size;
  if (region_count_ < 2)
    fail(EngineError::kInvalid, "tiers.nvme.capacity " + format_bytes(capacity) + " holds fewer than two regions of " +
                                    format_bytes(opt_.region_size) + "; raise capacity or lower region_size");
  if (region_count_ > 0xffffffffull) fail(EngineError::kInvalid, "tiers.nvme: too many regions; raise region_size");
  opt_.capacity = region_count_ * opt_.region_size;

  AlignedBuffer block(kBlock);
  ssize_t n = (!is_blockdev_ && st.st_size == 0) ? 0 : pread(fd_, block.data(), kBlock, 0);
  bool blank = n <= 0 || std::all_of(block.data(), block.data() + kBlock, [](uint8_t b) { return b == 0; });
  if (blank) {
    create_layout();
    return;
  }
  disk::Superblock sb;
  memcpy(&sb, block.data(), sizeof(sb));
  if (memcmp(sb.magic, disk::kSuperMagic, 8) != 0)
    fail(EngineError::kFormat, "'" + path + "' exists and is not a mooncake-hicache data file; "
                                   "remove it or choose another tiers.nvme.path");
  if (sb.format_version != disk::kFormatVersion)
    fail(EngineError::kFormat, "'" + path + "' was written by data format version " + std::to_string(sb.format_version) +
                                   ", this build reads version " + std::to_string(disk::kFormatVersion) +
                                   "; remove the file (its cached pages are lost) or use a matching mooncake-hicache");
  if (!disk::superblock_valid(sb))
    fail(EngineError::kFormat, "'" + path + "' has a corrupt superblock; remove the file (its cached pages are lost)");
  if (sb.region_size != opt_.region_size)
    fail(EngineError::kInvalid, "'" + path + "' was created with region_size " + format_bytes(sb.region_size) +
                                    " but tiers.nvme.region_size is " + format_bytes(opt_.region_size) +
                                    "; set it back or remove the file");
  if (sb.region_count != region_count_)
    fail(EngineError::kInvalid, "'" + path + "' was created with capacity " + format_bytes(sb.region_count * sb.region_size) +
                                    " but tiers.nvme.capacity gives " + format_bytes(opt_.capacity) +
                                    "; set it back or remove the file");
  start_new_life(sb);
}

void NvmeEngine::start_new_life(disk::Superblock sb) {
  sb.boot_epoch++;
  disk::seal_superblock(&sb);
  AlignedBuffer block(kBlock);
  memcpy(block.data(), &sb, sizeof(sb));
  if (pwrite(fd_, block.data(), kBlock, 0) != static_cast<ssize_t>(kBlock) || fdatasync(fd_) != 0)
    throw EngineError(EngineError::kIo, "cannot write the superblock of '" + opt_.path + "': " + strerror(errno));
  next_region_seq_ = (sb.boot_epoch << 32) | 1;
  next_seq_ = (sb.boot_epoch << 40) | 1;
}

void NvmeEngine::create_layout() {
  uint64_t file_bytes = disk::kDataOffset + region_count_ * opt_.region_size;
  struct stat st;
  fstat(fd_, &st);
  bool had_data = is_blockdev_ || st.st_size > 0;
  if (!is_blockdev_) {
    int rc = posix_fallocate(fd_, 0, static_cast<off_t>(file_bytes));
    if (rc == ENOSPC) {
      ftruncate(fd_, 0);
      throw EngineError(EngineError::kInvalid, "not enough free space for tiers.nvme.capacity " +
                                                   format_bytes(opt_.capacity) + " at '" + opt_.path +
                                                   "'; lower capacity or free disk space");
    }
    if (rc != 0 && ftruncate(fd_, static_cast<off_t>(file_bytes)) != 0)
      throw EngineError(EngineError::kIo, "cannot size '" + opt_.path + "': " + strerror(errno));
  }
  AlignedBuffer block(kBlock);
  if (had_data) {  // old bytes may hold trailers of an earlier life: invalidate them
    for (uint64_t r = 0; r < region_count_; r++)
      if (pwrite(fd_, block.data(), kBlock, static_cast<off_t>(region_base(r) + opt_.region_size - kBlock)) !=
          static_cast<ssize_t>(kBlock))
        throw EngineError(EngineError::kIo, "cannot initialise '" + opt_.path + "': " + strerror(errno));
  }
  disk::Superblock sb{};
  memcpy(sb.magic, disk::kSuperMagic, 8);
  sb.format_version = disk::kFormatVersion;
  sb.block_size = kBlock;
  sb.region_size = opt_.region_size;
  sb.region_count = region_count_;
  sb.data_offset = disk::kDataOffset;
  sb.created_unix = static_cast<uint64_t>(time(nullptr));
  sb.boot_epoch = 0;
  start_new_life(sb);
}

std::unique_ptr<NvmeEngine::IoContext> NvmeEngine::make_context() {
  std::unique_ptr<IoContext> c(new IoContext);
  const int depth = opt_.queue_depth;
  c->staging = AlignedBuffer(depth * (kBlock + kSlotBounce) + kBlock);
  c->slots.resize(depth);
  for (int i = 0; i < depth; i++) {
    c->slots[i].header = c->staging.data() + i * kBlock;
    c->slots[i].bounce = c->staging.data() + depth * kBlock + i * kSlotBounce;
    c->free_slots.push_back(depth - 1 - i);
  }
  c->scratch = c->staging.data() + depth * (kBlock + kSlotBounce);
  c->cqes.resize(depth);
  if (backend_ == "io_uring") {
    std::string remark;
    c->q = make_uring_queue(fd_, depth, c->staging.data(), c->staging.size(), &remark);
    if (ctx_all_.empty()) {
      fixed_buffers_ = remark.empty();
      if (!remark.empty()) note(remark);
    }
  } else {
    c->q = make_thread_pool_queue(fd_, depth, pool_.get());
  }
  return c;
}

NvmeEngine::IoContext* NvmeEngine::acquire_context() {
  std::unique_lock<std::mutex> lk(ctx_mu_);
  for (;;) {
    if (!ctx_free_.empty()) {
      IoContext* c = ctx_free_.back();
      ctx_free_.pop_back();
      return c;
    }
    if (static_cast<int>(ctx_all_.size()) < opt_.max_parallel_calls) {
      auto c = make_context();
      ctx_all_.push_back(std::move(c));
      return ctx_all_.back().get();
    }
    ctx_cv_.wait(lk);
  }
}

void NvmeEngine::release_context(IoContext* c) {
  {
    std::lock_guard<std::mutex> lk(ctx_mu_);
    ctx_free_.push_back(c);
  }
  ctx_cv_.notify_one();
}

int64_t NvmeEngine::sync_io(IoContext& ctx, IoOp op, uint64_t off, void* buf, size_t len) {
  iovec v{buf, len};
  IoRequest r;
  r.op = op;
  r.offset = off;
  r.iov = &v;
  r.iovcnt = 1;
  return run_sync(*ctx.q, r);
}

void NvmeEngine::recover() {
  auto t0 = std::chrono::steady_clock::now();
  IoContext* ctx = acquire_context();
  struct Lease {
    NvmeEngine* e;
    IoContext* c;
    ~Lease() { e->release_context(c); }
  } lease{this, ctx};

  regions_.assign(region_count_, RegionState{});
  readers_.assign(region_count_, 0);
  std::vector<disk::RegionTrailer> trailers(region_count_);

  // 1. Read every region's trailer, queue_depth reads at a time.
  {
    const uint64_t chunk = 256;
    AlignedBuffer buf(chunk * kBlock);
    std::vector<iovec> iov(chunk);
    for (uint64_t first = 0; first < region_count_; first += chunk) {
      uint64_t n = std::min(chunk, region_count_ - first), next = 0, done = 0;
      while (done < n) {
        while (next < n && ctx->q->inflight() < ctx->q->depth()) {
          iov[next] = {buf.data() + next * kBlock, kBlock};
          IoRequest r;
          r.op = IoOp::kRead;
          r.offset = region_base(first + next) + opt_.region_size - kBlock;
          r.iov = &iov[next];
          r.iovcnt = 1;
          r.tag = next;
          ctx->q->submit(r);
          next++;
        }
        int got = ctx->q->reap(ctx->cqes.data(), static_cast<int>(ctx->cqes.size()), 1);
        for (int i = 0; i < got; i++) {
          uint64_t k = ctx->cqes[i].tag;
          if (ctx->cqes[i].result == static_cast<int64_t>(kBlock))
            memcpy(&trailers[first + k], buf.data() + k * kBlock, sizeof(disk::RegionTrailer));
          else
            memset(&trailers[first + k], 0, sizeof(disk::RegionTrailer));
        }
        done += got;
      }
    }
  }

  // 2. Collect records: summaries of sealed regions, scans of open ones.
  std::vector<std::pair<uint32_t, disk::SummaryEntry>> all;
  std::vector<bool> scanned(region_count_, false);
  uint64_t max_region_seq = 0;
  for (uint32_t r = 0; r < region_count_; r++) {
    const disk::RegionTrailer& t = trailers[r];
    if (!disk::trailer_valid(t)) {
      free_regions_.push_back(r);
      continue;
    }
    max_region_seq = std::max(max_region_seq, t.region_seq);
    RegionState& s = regions_[r];
    s.region_seq = t.region_seq;
    bool summary_ok = false;
    if (t.state == disk::kSealed && t.summary_offset + disk::summary_bytes(t.entry_count) + kBlock == opt_.region_size) {
      uint64_t bytes = disk::summary_bytes(t.entry_count);
      AlignedBuffer buf(std::max<uint64_t>(bytes, kBlock));
      if (bytes == 0 ||
          sync_io(*ctx, IoOp::kRead, region_base(r) + t.summary_offset, buf.data(), bytes) == static_cast<int64_t>(bytes)) {
        if (checksum64(buf.data(), t.entry_count * sizeof(disk::SummaryEntry)) == t.summary_checksum) {
          summary_ok = true;
          auto* e = reinterpret_cast<const disk::SummaryEntry*>(buf.data());
          for (uint64_t i = 0; i < t.entry_count; i++) all.push_back({r, e[i]});
          s.state = RegionState::kSealed;
          s.summary_off = t.summary_offset;
          s.summary_count = t.entry_count;
        }
      }
    }
    if (!summary_ok) {  // open region, or a sealed one whose summary did not verify
      scan_region(*ctx, r, t.region_seq, &all);
      scanned[r] = true;
      recovered_scanned_++;
    }
  }

  // 3. Apply records in sequence order: later puts replace earlier ones, tombstones delete.
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.second.seq < b.second.seq; });
  uint64_t max_seq = 0;
  for (const auto& [r, e] : all) {
    max_seq = std::max(max_seq, e.seq);
    KeyDigest d{e.digest_lo, e.digest_hi};
    PageLocation* cur = index_.find(d);
    if (cur) value_bytes_ -= cur->value_len;
    if (e.flags & disk::kTombstone) {
      if (cur) index_.erase(d);
      continue;
    }
    PageLocation loc;
    loc.value_checksum = e.value_checksum;
    loc.value_len = static_cast<uint32_t>(e.value_len);
    loc.region = r;
    loc.block = e.block;
    index_.put(d, loc);
    value_bytes_ += e.value_len;
  }
  // Sequence numbers of this life already start above every earlier life's (boot_epoch).
  next_region_seq_ = std::max(next_region_seq_, max_region_seq + 1);
  next_seq_ = std::max(next_seq_, max_seq + 1);

  // 4. Rebuild the FIFO (oldest incarnation first); seal scanned regions so the next restart
  //    reads their summaries, and free those that held nothing.
  std::vector<uint32_t> used;
  for (uint32_t r = 0; r < region_count_; r++)
    if (disk::trailer_valid(trailers[r])) used.push_back(r);
  std::sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) { return regions_[a].region_seq < regions_[b].region_seq; });
  for (uint32_t r : used) {
    RegionState& s = regions_[r];
    if (!scanned[r]) {
      sealed_fifo_.push_back(r);
    } else if (s.entries.empty()) {
      s = RegionState{};
      free_regions_.push_back(r);
    } else {
      seal_region(*ctx, r);
    }
  }

  recovered_entries_ = index_.size();
  recovery_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!all.empty() || recovered_scanned_ > 0) {
    char line[256];
    snprintf(line, sizeof(line), "recovered %zu pages (%s) from %zu regions in %.3f s (%llu scanned)",
             index_.size(), format_bytes(value_bytes_).c_str(), sealed_fifo_.size(), recovery_seconds_,
             static_cast<unsigned long long>(recovered_scanned_));
    note(line);
  }
}

void NvmeEngine::scan_region(IoContext& ctx, uint32_t r, uint64_t region_seq,
                             std::vector<std::pair<uint32_t, disk::SummaryEntry>>* out) {
  RegionState& s = regions_[r];
  s.entries.clear();
  const uint64_t limit = opt_.region_size - kBlock;
  AlignedBuffer win(std::min<uint64_t>(kScanWindow, limit));
  uint64_t wstart = 0, wlen = 0;
  // Makes [at, at + need) available in the window; false on a read error.
  auto load = [&](uint64_t at, uint64_t need) {
    if (at >= wstart && at + need <= wstart + wlen) return true;
    uint64_t len = std::min(std::max<uint64_t>(win.size(), need), limit - at);
    if (len > win.size()) win = AlignedBuffer(len);
    if (sync_io(ctx, IoOp::kRead, region_base(r) + at, win.data(), len) != static_cast<int64_t>(len)) return false;
    wstart = at;
    wlen = len;
    return true;
  };
  uint64_t off = 0;
  while (off + kBlock <= limit) {
    if (!load(off, kBlock)) break;
    disk::RecordHeader h;
    if (!disk::decode_header(win.data() + (off - wstart), &h) || h.region_seq != region_seq) {
      off += kBlock;
      continue;
    }
    uint64_t rb = disk::record_bytes(h.value_len);
    if (off + rb > limit) {
      off += kBlock;
      continue;
    }
    bool ok = true;
    if (!(h.flags & disk::kTombstone)) {
      if (!load(off, rb)) break;
      ok = checksum64(win.data() + (off - wstart) + kBlock, h.value_len) == h.value_checksum;
    }
    if (ok) {  // a torn record (valid header, bad value) is skipped
      disk::SummaryEntry e{};
      e.digest_lo = h.digest_lo;
      e.digest_hi = h.digest_hi;
      e.block = static_cast<uint32_t>(off / kBlock);
      e.flags = h.flags;
      e.value_len = h.value_len;
      e.value_checksum = h.value_checksum;
      e.seq = h.seq;
      s.entries.push_back(e);
      out->push_back({r, e});
    }
    off += rb;
  }
  s.state = RegionState::kOpen;
  s.write_off = off;
  s.reserved = s.entries.size();
}

// ---- writer path --------------------------------------------------------------------------

bool NvmeEngine::fits(const RegionState& s, uint64_t rec_bytes) const {
  return s.write_off + rec_bytes + disk::summary_bytes(s.reserved + 1) + kBlock <= opt_.region_size;
}

void NvmeEngine::seal_region(IoContext& ctx, uint32_t r) {
  RegionState& s = regions_[r];
  const uint64_t n = s.entries.size();
  const uint64_t sum_bytes = disk::summary_bytes(n);
  AlignedBuffer buf(sum_bytes + kBlock);
  if (n) memcpy(buf.data(), s.entries.data(), n * sizeof(disk::SummaryEntry));
  disk::RegionTrailer t{};
  t.state = disk::kSealed;
  t.region_seq = s.region_seq;
  t.entry_count = n;
  t.summary_offset = opt_.region_size - kBlock - sum_bytes;
  t.summary_checksum = checksum64(buf.data(), n * sizeof(disk::SummaryEntry));
  disk::seal_trailer(&t);
  memcpy(buf.data() + sum_bytes, &t, sizeof(t));
  int64_t rc = sync_io(ctx, IoOp::kWrite, region_base(r) + t.summary_offset, buf.data(), buf.size());
  if (rc != static_cast<int64_t>(buf.size())) {
    ctr_.io_errors++;
    note("sealing region " + std::to_string(r) + " failed (" + (rc < 0 ? errstr(rc) : "short write") +
         "); its pages stay readable, a restart will scan it");
  }
  if (opt_.sync_on_seal) fdatasync(fd_);
  s.state = RegionState::kSealed;
  s.summary_off = t.summary_offset;
  s.summary_count = n;
  std::vector<disk::SummaryEntry>().swap(s.entries);
  sealed_fifo_.push_back(r);
  if (open_ == static_cast<int64_t>(r)) open_ = -1;
}

bool NvmeEngine::open_region(IoContext& ctx, uint32_t r) {
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
  int64_t rc = sync_io(ctx, IoOp::kWrite, region_base(r) + opt_.region_size - kBlock, ctx.scratch, kBlock);
  if (rc != static_cast<int64_t>(kBlock)) {
    ctr_.io_errors++;
    note("cannot open region " + std::to_string(r) + " (" + (rc < 0 ? errstr(rc) : "short write") + ")");
    s = RegionState{};
    free_regions_.push_back(r);
    return false;
  }
  open_ = r;
  return true;
}

int64_t NvmeEngine::reclaim_oldest(IoContext& ctx, std::vector<HotRecord>* hot) {
  if (sealed_fifo_.empty()) return -1;
  const uint32_t r = sealed_fifo_.front();
  sealed_fifo_.pop_front();
  RegionState& s = regions_[r];

  // Which pages live here: the summary on disk lists them.
  std::vector<disk::SummaryEntry> entries(s.summary_count);
  if (s.summary_count) {
    uint64_t bytes = disk::summary_bytes(s.summary_count);
    AlignedBuffer buf(bytes);
    if (sync_io(ctx, IoOp::kRead, region_base(r) + s.summary_off, buf.data(), bytes) == static_cast<int64_t>(bytes))
      memcpy(entries.data(), buf.data(), s.summary_count * sizeof(disk::SummaryEntry));
    else
      entries.clear();
  }
  std::vector<std::pair<KeyDigest, PageLocation>> keep;  // hot pages to reinsert
  const uint64_t budget = opt_.region_size / 2;
  uint64_t keep_bytes = 0;
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    auto consider = [&](const KeyDigest& d, PageLocation& loc) {
      uint64_t rb = disk::record_bytes(loc.value_len);
      if (opt_.reinsertion && (loc.flags & PageIndex::kHit) && keep_bytes + rb <= budget) {
        keep.push_back({d, loc});
        keep_bytes += rb;
      }
    };
    if (entries.size() == s.summary_count) {
      for (const auto& e : entries) {
        KeyDigest d{e.digest_lo, e.digest_hi};
        PageLocation* loc = index_.find(d);
        if (loc && loc->region == r && loc->block == e.block) consider(d, *loc);
      }
    }
  }
  // Read the hot pages (header + value) while they are still indexed and intact.
  for (auto& [d, loc] : keep) {
    uint64_t rb = disk::record_bytes(loc.value_len);
    AlignedBuffer buf(rb);
    if (sync_io(ctx, IoOp::kRead, region_base(r) + uint64_t(loc.block) * kBlock, buf.data(), rb) != static_cast<int64_t>(rb))
      continue;
    disk::RecordHeader h;
    if (!disk::decode_header(buf.data(), &h) || h.value_len != loc.value_len ||
        checksum64(buf.data() + kBlock, loc.value_len) != loc.value_checksum)
      continue;
    std::string key(reinterpret_cast<const char*>(buf.data() + sizeof(disk::RecordHeader)), h.key_len);
    hot->push_back(HotRecord{std::move(key), std::move(buf), loc.value_len});
  }
  // Drop every page of the region from the index and wait for readers still copying from it.
  {
    std::unique_lock<std::mutex> lk(index_mu_);
    std::vector<KeyDigest> victims;
    if (entries.size() == s.summary_count) {
      for (const auto& e : entries) {
        KeyDigest d{e.digest_lo, e.digest_hi};
        PageLocation* loc = index_.find(d);
        if (loc && loc->region == r && loc->block == e.block) victims.push_back(d);
      }
    } else {  // summary unreadable: find the region's pages the slow way
      victims = index_.keys_in_region(r);
    }
    for (const auto& d : victims) {
      PageLocation* loc = index_.find(d);
      value_bytes_ -= loc->value_len;
      index_.erase(d);
    }
    ctr_.evicted_pages += victims.size() - std::min(victims.size(), hot->size());
    unpinned_cv_.wait(lk, [&] { return readers_[r] == 0; });
  }
  ctr_.evicted_regions++;
  s = RegionState{};
  return r;
}

bool NvmeEngine::ensure_room(IoContext& ctx, uint64_t rec_bytes) {
  if (open_ >= 0 && fits(regions_[open_], rec_bytes)) return true;
  if (open_ >= 0) seal_region(ctx, static_cast<uint32_t>(open_));
  std::vector<HotRecord> hot;
  int64_t r;
  if (!free_regions_.empty()) {
    r = free_regions_.front();
    free_regions_.pop_front();
  } else {
    r = reclaim_oldest(ctx, &hot);
    if (r < 0) return false;
  }
  if (!open_region(ctx, static_cast<uint32_t>(r))) return false;
  if (!hot.empty()) {
    std::vector<SgList> segs(hot.size());
    std::vector<int32_t> res(hot.size());
    std::vector<PutItem> items;
    for (size_t i = 0; i < hot.size(); i++) {
      segs[i] = {Segment{hot[i].data.data() + kBlock, hot[i].value_len}};
      items.push_back(PutItem{&hot[i].key, KeyDigest::of(hot[i].key), &segs[i], hot[i].value_len, &res[i], true});
    }
    put_records(ctx, items);
  }
  return fits(regions_[open_], rec_bytes);
}

void NvmeEngine::put_records(IoContext& ctx, std::vector<PutItem>& items) {
  using Slot = IoContext::Slot;
  auto complete = [&](const IoCompletion& c) {
    Slot& s = ctx.slots[c.tag];
    PutItem& it = items[s.item];
    int64_t res = c.result;
    if (inject_write_errors_.load() > 0 && inject_write_errors_.fetch_sub(1) > 0) res = -EIO;
    if (res == s.expect) {
      regions_[s.loc.region].entries.push_back(s.entry);
      {
        std::lock_guard<std::mutex> lk(index_mu_);
        PageLocation* old = index_.find(s.digest);
        if (old) {
          value_bytes_ -= old->value_len;
          *old = s.loc;
        } else {
          index_.put(s.digest, s.loc);
        }
        value_bytes_ += s.loc.value_len;
      }
      *it.result = status_code(Status::kOk);
      if (it.reinsert) {
        ctr_.reinserted_pages++;
      } else {
        ctr_.puts++;
        ctr_.put_bytes += it.len;
      }
    } else {
      *it.result = status_code(Status::kIoError);
      ctr_.put_errors++;
      ctr_.io_errors++;
      if (ctr_.io_errors.load() <= 3)
        note("write of a " + format_bytes(it.len) + " page failed: " + (res < 0 ? errstr(res) : "short write") +
             " (the put returns IO_ERROR; the engine goes on)");
    }
    ctx.give_slot(static_cast<int>(c.tag));
  };
  auto reap = [&](int min_complete) {
    int n = ctx.q->reap(ctx.cqes.data(), static_cast<int>(ctx.cqes.size()), min_complete);
    for (int i = 0; i < n; i++) complete(ctx.cqes[i]);
  };
  auto drain = [&] {
    while (ctx.q->inflight() > 0) reap(1);
  };

  for (size_t i = 0; i < items.size(); i++) {
    PutItem& it = items[i];
    const uint64_t rec = disk::record_bytes(it.len);
    if (open_ < 0 || !fits(regions_[open_], rec)) {
      drain();  // a region switch needs every write to the old region finished
      if (it.reinsert ? (open_ < 0 || !fits(regions_[open_], rec)) : !ensure_room(ctx, rec)) {
        *it.result = status_code(Status::kNoSpace);
        continue;
      }
    }
    while (ctx.free_slots.empty()) reap(1);
    const int si = ctx.take_slot();
    Slot& s = ctx.slots[si];
    s.item = i;
    s.iov.clear();
    s.iov.push_back({s.header, kBlock});
    size_t used = 0, total = 0;
    uint8_t* bounce = nullptr;
    if (!ctx.prepare_value(s, *it.segs, it.len, &used, &bounce, &total)) {
      *it.result = status_code(Status::kInvalidParams);
      ctx.give_slot(si);
      continue;
    }
    for (const auto& c : s.copies) memcpy(c.bounce, c.user, c.len);
    if (total > used) memset(bounce + used, 0, total - used);  // deterministic padding

    RegionState& R = regions_[open_];
    disk::RecordHeader h{};
    h.key_len = static_cast<uint32_t>(it.key->size());
    h.value_len = it.len;
    h.region_seq = R.region_seq;
    h.seq = next_seq_++;
    h.digest_lo = it.digest.lo;
    h.digest_hi = it.digest.hi;
    h.value_checksum = sg_checksum(*it.segs, it.len);
    disk::encode_header(s.header, h, it.key->data());

    const uint64_t off = R.write_off;
    R.write_off += rec;
    R.reserved++;
    s.expect = static_cast<int64_t>(rec);
    s.digest = it.digest;
    s.loc = PageLocation{h.value_checksum, static_cast<uint32_t>(it.len), static_cast<uint32_t>(open_),
                         static_cast<uint32_t>(off / kBlock), 0};
    s.entry = disk::SummaryEntry{};
    s.entry.digest_lo = it.digest.lo;
    s.entry.digest_hi = it.digest.hi;
    s.entry.block = s.loc.block;
    s.entry.value_len = it.len;
    s.entry.value_checksum = h.value_checksum;
    s.entry.seq = h.seq;

    IoRequest req;
    req.op = IoOp::kWrite;
    req.offset = region_base(static_cast<uint32_t>(open_)) + off;
    req.iov = s.iov.data();
    req.iovcnt = static_cast<int>(s.iov.size());
    req.tag = static_cast<uint64_t>(si);
    ctx.q->submit(req);
    if (ctx.q->inflight() >= 2) reap(0);  // collect what already finished, without waiting
  }
  drain();
}

bool NvmeEngine::write_tombstone(IoContext& ctx, const std::string& key, const KeyDigest& d) {
  if (!ensure_room(ctx, kBlock)) return false;
  RegionState& R = regions_[open_];
  disk::RecordHeader h{};
  h.flags = disk::kTombstone;
  h.key_len = static_cast<uint32_t>(key.size());
  h.region_seq = R.region_seq;
  h.seq = next_seq_++;
  h.digest_lo = d.lo;
  h.digest_hi = d.hi;
  h.value_checksum = checksum64(nullptr, 0);
  disk::encode_header(ctx.scratch, h, key.data());
  uint64_t off = R.write_off;
  R.write_off += kBlock;
  R.reserved++;
  if (sync_io(ctx, IoOp::kWrite, region_base(static_cast<uint32_t>(open_)) + off, ctx.scratch, kBlock) !=
      static_cast<int64_t>(kBlock))
    return false;
  disk::SummaryEntry e{};
  e.digest_lo = d.lo;
  e.digest_hi = d.hi;
  e.block = static_cast<uint32_t>(off / kBlock);
  e.flags = disk::kTombstone;
  e.value_checksum = h.value_checksum;
  e.seq = h.seq;
  R.entries.push_back(e);
  return true;
}

// ---- public API ---------------------------------------------------------------------------

void NvmeEngine::batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                           int32_t* results) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) {
    std::fill(results, results + keys.size(), status_code(Status::kClosed));
    return;
  }
  std::vector<PutItem> items;
  items.reserve(keys.size());
  // A key given twice in one batch is written once, with its last value.
  std::vector<size_t> last(keys.size());
  {
    for (size_t i = 0; i < keys.size(); i++) last[i] = i;
    std::vector<KeyDigest> digests(keys.size());
    for (size_t i = 0; i < keys.size(); i++) digests[i] = KeyDigest::of(keys[i]);
    std::vector<size_t> order(keys.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return digests[a].lo != digests[b].lo ? digests[a].lo < digests[b].lo : a < b;
    });
    for (size_t k = 0; k + 1 < order.size(); k++)
      if (digests[order[k]] == digests[order[k + 1]]) last[order[k]] = order[k + 1];
    for (size_t i = 0; i < keys.size(); i++) {
      int32_t st = key_code(keys[i]);
      int64_t len = st == status_code(Status::kOk) ? check_sg(values[i]) : st;
      if (len < 0) {
        results[i] = static_cast<int32_t>(len);
        continue;
      }
      if (static_cast<uint64_t>(len) > max_value_) {
        results[i] = status_code(Status::kValueTooLarge);
        continue;
      }
      if (last[i] != i) {  // superseded later in this batch
        results[i] = status_code(Status::kOk);
        continue;
      }
      items.push_back(PutItem{&keys[i], digests[i], &values[i], static_cast<uint64_t>(len), &results[i], false});
    }
  }
  if (items.empty()) return;
  std::lock_guard<std::mutex> wl(write_mu_);
  IoContext* ctx;
  try {
    ctx = acquire_context();
  } catch (const std::exception& e) {
    note(std::string("cannot set up an I/O queue: ") + e.what());
    for (auto& it : items) *it.result = status_code(Status::kIoError);
    return;
  }
  put_records(*ctx, items);
  release_context(ctx);
}

void NvmeEngine::unpin(uint32_t region) {
  std::lock_guard<std::mutex> lk(index_mu_);
  if (--readers_[region] == 0) unpinned_cv_.notify_all();
}

void NvmeEngine::batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                           int64_t* results) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) {
    std::fill(results, results + keys.size(), static_cast<int64_t>(status_code(Status::kClosed)));
    return;
  }
  IoContext* ctxp;
  try {
    ctxp = acquire_context();
  } catch (const std::exception& e) {
    note(std::string("cannot set up an I/O queue: ") + e.what());
    std::fill(results, results + keys.size(), static_cast<int64_t>(status_code(Status::kIoError)));
    return;
  }
  IoContext& ctx = *ctxp;
  using Slot = IoContext::Slot;

  auto complete = [&](const IoCompletion& c) {
    Slot& s = ctx.slots[c.tag];
    const SgList& segs = buffers[s.item];
    int64_t& out = results[s.item];
    if (c.result != s.expect) {
      out = status_code(Status::kIoError);
      ctr_.io_errors++;
    } else {
      for (const auto& cp : s.copies) memcpy(cp.user, cp.bounce, cp.len);
      if (sg_checksum(segs, s.loc.value_len) != s.loc.value_checksum) {
        // Never hand out wrong bytes: a corrupt record is a miss, and is forgotten.
        out = status_code(Status::kNotFound);
        ctr_.checksum_failures++;
        ctr_.misses++;
        std::lock_guard<std::mutex> lk(index_mu_);
        PageLocation* cur = index_.find(s.digest);
        if (cur && cur->region == s.loc.region && cur->block == s.loc.block) {
          value_bytes_ -= cur->value_len;
          index_.erase(s.digest);
        }
      } else {
        out = s.loc.value_len;
        ctr_.hits++;
        ctr_.get_bytes += s.loc.value_len;
      }
    }
    unpin(s.loc.region);
    ctx.give_slot(static_cast<int>(c.tag));
  };
  auto reap = [&](int min_complete) {
    int n = ctx.q->reap(ctx.cqes.data(), static_cast<int>(ctx.cqes.size()), min_complete);
    for (int i = 0; i < n; i++) complete(ctx.cqes[i]);
  };

  for (size_t i = 0; i < keys.size(); i++) {
    int32_t st = key_code(keys[i]);
    int64_t cap = st == status_code(Status::kOk) ? check_sg(buffers[i]) : st;
    if (cap < 0) {
      results[i] = cap;
      continue;
    }
    KeyDigest d = KeyDigest::of(keys[i]);
    PageLocation loc;
    {
      std::lock_guard<std::mutex> lk(index_mu_);
      PageLocation* p = index_.find(d);
      if (!p) {
        results[i] = status_code(Status::kNotFound);
        ctr_.misses++;
        continue;
      }
      p->flags |= PageIndex::kHit;
      loc = *p;
      readers_[loc.region]++;
    }
    if (static_cast<uint64_t>(cap) < loc.value_len) {
      results[i] = status_code(Status::kBufferTooSmall);
      unpin(loc.region);
      continue;
    }
    if (loc.value_len == 0) {
      results[i] = 0;
      ctr_.hits++;
      unpin(loc.region);
      continue;
    }
    while (ctx.free_slots.empty()) reap(1);
    const int si = ctx.take_slot();
    Slot& s = ctx.slots[si];
    s.item = i;
    s.loc = loc;
    s.digest = d;
    s.iov.clear();
    size_t used = 0, total = 0;
    uint8_t* bounce = nullptr;
    if (!ctx.prepare_value(s, buffers[i], loc.value_len, &used, &bounce, &total)) {
      results[i] = status_code(Status::kInvalidParams);
      unpin(loc.region);
      ctx.give_slot(si);
      continue;
    }
    s.expect = static_cast<int64_t>(disk::align_up(loc.value_len));
    IoRequest req;
    req.op = IoOp::kRead;
    req.offset = region_base(loc.region) + uint64_t(loc.block) * kBlock + kBlock;
    req.iov = s.iov.data();
    req.iovcnt = static_cast<int>(s.iov.size());
    req.tag = static_cast<uint64_t>(si);
    ctx.q->submit(req);
    if (ctx.q->inflight() >= 2) reap(0);
  }
  while (ctx.q->inflight() > 0) reap(1);
  ctr_.gets += keys.size();
  release_context(ctxp);
}

void NvmeEngine::batch_exists(const std::vector<std::string>& keys, int32_t* results) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) {
    std::fill(results, results + keys.size(), status_code(Status::kClosed));
    return;
  }
  std::vector<KeyDigest> d(keys.size());
  for (size_t i = 0; i < keys.size(); i++) d[i] = KeyDigest::of(keys[i]);
  std::lock_guard<std::mutex> lk(index_mu_);
  for (size_t i = 0; i < keys.size(); i++) {
    int32_t st = key_code(keys[i]);
    results[i] = st != status_code(Status::kOk) ? st : (index_.find(d[i]) ? 1 : 0);
  }
}

int64_t NvmeEngine::value_size(const std::string& key) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return status_code(Status::kClosed);
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  std::lock_guard<std::mutex> lk(index_mu_);
  PageLocation* p = index_.find(KeyDigest::of(key));
  return p ? static_cast<int64_t>(p->value_len) : status_code(Status::kNotFound);
}

int32_t NvmeEngine::remove(const std::string& key) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return status_code(Status::kClosed);
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  KeyDigest d = KeyDigest::of(key);
  std::lock_guard<std::mutex> wl(write_mu_);
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    PageLocation* p = index_.find(d);
    if (!p) return status_code(Status::kNotFound);
    value_bytes_ -= p->value_len;
    index_.erase(d);
  }
  ctr_.removes++;
  IoContext* ctx = acquire_context();
  // The tombstone keeps a restart from bringing the page back.
  bool ok = write_tombstone(*ctx, key, d);
  release_context(ctx);
  if (!ok) {
    note("could not persist the removal of a key; it may reappear after a restart");
    return status_code(Status::kIoError);
  }
  return status_code(Status::kOk);
}

int32_t NvmeEngine::remove_all() {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return status_code(Status::kClosed);
  std::lock_guard<std::mutex> wl(write_mu_);
  {
    std::unique_lock<std::mutex> lk(index_mu_);
    index_.clear();
    value_bytes_ = 0;
    unpinned_cv_.wait(lk, [&] { return std::all_of(readers_.begin(), readers_.end(), [](uint32_t n) { return n == 0; }); });
  }
  IoContext* ctx = acquire_context();
  int32_t rc = status_code(Status::kOk);
  memset(ctx->scratch, 0, kBlock);
  for (uint32_t r = 0; r < region_count_; r++) {
    if (regions_[r].state == RegionState::kFree) continue;
    if (sync_io(*ctx, IoOp::kWrite, region_base(r) + opt_.region_size - kBlock, ctx->scratch, kBlock) !=
        static_cast<int64_t>(kBlock))
      rc = status_code(Status::kIoError);
  }
  release_context(ctx);
  fdatasync(fd_);
  regions_.assign(region_count_, RegionState{});
  free_regions_.clear();
  for (uint32_t r = 0; r < region_count_; r++) free_regions_.push_back(r);
  sealed_fifo_.clear();
  open_ = -1;
  return rc;
}

void NvmeEngine::close() {
  std::unique_lock<std::shared_mutex> life(life_mu_);
  if (closed_ || fd_ < 0) return;
  {
    std::lock_guard<std::mutex> wl(write_mu_);
    if (open_ >= 0 && !regions_[open_].entries.empty()) {
      IoContext* ctx = acquire_context();
      seal_region(*ctx, static_cast<uint32_t>(open_));
      release_context(ctx);
    }
    fdatasync(fd_);
  }
  {
    std::lock_guard<std::mutex> lk(ctx_mu_);
    ctx_free_.clear();
    ctx_all_.clear();
  }
  pool_.reset();
  ::close(fd_);
  fd_ = -1;
  closed_ = true;
}

NvmeStats NvmeEngine::stats() {
  NvmeStats s;
  s.io_backend = backend_;
  s.direct_io = opt_.direct_io;
  s.fixed_buffers = backend_ == "io_uring" && fixed_buffers_;
  s.capacity = opt_.capacity;
  s.region_size = opt_.region_size;
  s.region_count = region_count_;
  {
    std::lock_guard<std::mutex> wl(write_mu_);
    s.regions_free = free_regions_.size();
    s.regions_sealed = sealed_fifo_.size();
  }
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    s.entries = index_.size();
    s.value_bytes = value_bytes_;
    s.index_bytes = index_.memory_bytes();
  }
  s.index_bytes_per_entry = s.entries ? double(s.index_bytes) / double(s.entries) : 0.0;
  s.puts = ctr_.puts;
  s.put_bytes = ctr_.put_bytes;
  s.put_errors = ctr_.put_errors;
  s.gets = ctr_.gets;
  s.hits = ctr_.hits;
  s.misses = ctr_.misses;
  s.get_bytes = ctr_.get_bytes;
  s.checksum_failures = ctr_.checksum_failures;
  s.io_errors = ctr_.io_errors;
  s.evicted_regions = ctr_.evicted_regions;
  s.evicted_pages = ctr_.evicted_pages;
  s.reinserted_pages = ctr_.reinserted_pages;
  s.removes = ctr_.removes;
  s.recovery_seconds = recovery_seconds_;
  s.recovered_entries = recovered_entries_;
  s.recovered_regions_scanned = recovered_scanned_;
  return s;
}

std::string NvmeStats::to_json() const {
  // Doubles always carry a decimal point, so they read back as floats.
  auto num = [](double v) {
    char buf[64];
    snprintf(buf, sizeof(buf), "%.9g", v);
    std::string out(buf);
    if (out.find_first_of(".eE") == std::string::npos) out += ".0";
    return out;
  };
  auto b = [](bool v) { return v ? "true" : "false"; };
  std::string o = "{\"io_backend\":\"" + io_backend + "\",\"direct_io\":" + b(direct_io) +
                  ",\"fixed_buffers\":" + b(fixed_buffers);
  const std::pair<const char*, uint64_t> ints[] = {
      {"capacity", capacity}, {"region_size", region_size}, {"region_count", region_count},
      {"regions_free", regions_free}, {"regions_sealed", regions_sealed}, {"entries", entries},
      {"value_bytes", value_bytes}, {"index_bytes", index_bytes}};
  for (const auto& [k, v] : ints) o += std::string(",\"") + k + "\":" + std::to_string(v);
  o += ",\"index_bytes_per_entry\":" + num(index_bytes_per_entry);
  const std::pair<const char*, uint64_t> counters[] = {
      {"puts", puts}, {"put_bytes", put_bytes}, {"put_errors", put_errors}, {"gets", gets}, {"hits", hits},
      {"misses", misses}, {"get_bytes", get_bytes}, {"checksum_failures", checksum_failures},
      {"io_errors", io_errors}, {"evicted_regions", evicted_regions}, {"evicted_pages", evicted_pages},
      {"reinserted_pages", reinserted_pages}, {"removes", removes}};
  for (const auto& [k, v] : counters) o += std::string(",\"") + k + "\":" + std::to_string(v);
  o += ",\"recovery_seconds\":" + num(recovery_seconds) + ",\"recovered_entries\":" +
       std::to_string(recovered_entries) + ",\"recovered_regions_scanned\":" + std::to_string(recovered_regions_scanned) +
       "}";
  return o;
}

}  // namespace mch
