// NvmeEngine: the engine that composes the NVMe parts. Read nvme_engine.h (what it owns, who
// may call) and record_format.h (the bytes on disk) first.
#include "nvme/nvme_engine.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "common/text.h"
#include "nvme/recovery.h"
#include "nvme/value_reader.h"

namespace mch {

using disk::kBlock;

namespace {

constexpr int64_t kPinned = 1;  // pin_for_read: the page is pinned and must be read

std::string errstr(int64_t neg_errno) { return strerror(static_cast<int>(-neg_errno)); }

// Validates a scatter-gather list and returns its total length, or a negative Status.
int64_t check_sg(const SgList& segs) {
  if (segs.size() > NvmeEngine::kMaxSegments) return status_code(Status::kInvalidParams);
  bool null_ptr = false;
  uint64_t total = sg_bytes(segs, &null_ptr);
  return null_ptr ? status_code(Status::kInvalidParams) : static_cast<int64_t>(total);
}

disk::SummaryEntry summary_entry(const disk::RecordHeader& h, uint32_t block) {
  disk::SummaryEntry e{};
  e.digest_lo = h.digest_lo;
  e.digest_hi = h.digest_hi;
  e.block = block;
  e.flags = h.flags;
  e.value_len = h.value_len;
  e.value_checksum = h.value_checksum;
  e.seq = h.seq;
  return e;
}

}  // namespace

struct NvmeEngine::PutItem {
  const std::string* key;
  KeyDigest digest;
  const SgList* segs;
  uint64_t len;
  int32_t* result;
  bool reinsert;
  bool tombstone = false;  // a removal record: a header block and no value
};

namespace {
const SgList kNoValue;  // the value of a tombstone
}  // namespace

// ---- construction ---------------------------------------------------------------------------

NvmeEngine::NvmeEngine(const NvmeOptions& opt) : opt_(opt) {
  validate_options();
  max_value_ = disk::max_value_in_region(opt_.region_size);
  dev_ = std::make_unique<Device>(opt_);
  dev_->set_faults(&faults_);
  opt_.capacity = dev_->capacity();
  ctxs_ = std::make_unique<IoContextPool>(dev_->fd(), opt_.queue_depth, opt_.max_parallel_calls, opt_.io_backend,
                                          notes_, &faults_);
  reinsertion_ = ReinsertionPolicy::make(opt_.reinsertion);
  regions_ = std::make_unique<RegionManager>(*dev_, opt_.sync_on_seal, notes_, ctr_.io_errors);
  readers_.assign(dev_->region_count(), 0);
  recover_from_disk();
  backend_name_ = ctxs_->backend();  // fixed from here on (the first context exists)
  fixed_buffers_ = ctxs_->fixed_buffers();
}

NvmeEngine::~NvmeEngine() {
  try {
    close();
  } catch (...) {
  }
}

void NvmeEngine::validate_options() {
  if (opt_.path.empty()) throw EngineError(EngineError::kInvalid, "tiers.nvme.path is empty");
  if (opt_.region_size < (1u << 20) || !disk::is_aligned(opt_.region_size))
    throw EngineError(EngineError::kInvalid, "tiers.nvme.region_size must be a multiple of 4 KiB and at least 1 MiB");
  if (opt_.region_size > disk::kMaxRegionSize)
    throw EngineError(EngineError::kInvalid, "tiers.nvme.region_size " + format_bytes(opt_.region_size) +
                                                 " is above the maximum of " + format_bytes(disk::kMaxRegionSize) +
                                                 "; lower it (64 MiB is a good default)");
  if (opt_.queue_depth < 1 || opt_.queue_depth > 4096)
    throw EngineError(EngineError::kInvalid, "tiers.nvme.queue_depth must be between 1 and 4096");
  if (opt_.max_parallel_calls < 1) opt_.max_parallel_calls = 1;
}

void NvmeEngine::recover_from_disk() {
  IoContextPool::Lease ctx(*ctxs_, "recovery");
  if (!ctx) throw EngineError(EngineError::kIo, "tiers.nvme: cannot set up an I/O queue (" + ctx.error() + ")");
  RecoveryResult r = recover(*ctx, *dev_, *regions_, index_);
  rewrite_orphan_tombstones(*ctx, r);
  value_bytes_ = r.value_bytes;
  recovered_entries_ = r.entries;
  recovered_scanned_ = r.regions_scanned;
  recovery_seconds_ = r.seconds;
  if (r.records_seen == 0 && r.regions_scanned == 0) return;
  char line[256];
  snprintf(line, sizeof(line), "recovered %zu pages (%s) from %zu regions in %.3f s (%llu scanned)", index_.size(),
           format_bytes(value_bytes_).c_str(), regions_->sealed_count(), recovery_seconds_,
           static_cast<unsigned long long>(recovered_scanned_));
  notes_.add(line);
}

// Removals that recovery found only in free regions (their trailer was lost) are written again
// into the log, then the first block of each of those regions is cleared: from now on the removal
// lives in a trusted region and the free region is not scanned again. Runs in the constructor.
void NvmeEngine::rewrite_orphan_tombstones(IoContext& ctx, const RecoveryResult& r) {
  std::vector<std::string> keys;
  for (const auto& o : r.orphan_tombstones) keys.push_back(o.key);
  std::vector<int32_t> res(keys.size());
  write_tombstones(ctx, keys, res.data());
  const size_t written = static_cast<size_t>(std::count(res.begin(), res.end(), status_code(Status::kOk)));
  if (written < r.orphan_tombstones.size() || !synced("recovery")) {
    notes_.warn("could not write again " + std::to_string(r.orphan_tombstones.size() - written) +
                " removals found in damaged regions; they hold for this run only");
    return;  // keep the untrusted regions as they are: the next start finds the removals again
  }
  if (written)
    notes_.warn("wrote again " + std::to_string(written) + " removals whose region trailer was lost");
  std::vector<uint32_t> still_free;  // the rewrite may have opened one of them: leave that one alone
  for (uint32_t u : r.untrusted_regions)
    if (regions_->at(u).state == RegionState::kFree) still_free.push_back(u);
  clear_first_blocks(ctx, still_free);
  synced("recovery");
}

// Zeroes the first block of each region in rs (a free region whose first block is not a record
// is never scanned at start). False if a write failed.
bool NvmeEngine::clear_first_blocks(IoContext& ctx, const std::vector<uint32_t>& rs) {
  bool ok = true;
  memset(ctx.scratch, 0, kBlock);
  for (uint32_t r : rs) ok &= ctx.sync_io(IoOp::kWrite, dev_->region_base(r), ctx.scratch, kBlock) == static_cast<int64_t>(kBlock);
  return ok;
}

// ---- writer path ----------------------------------------------------------------------------

void NvmeEngine::index_record(const KeyDigest& d, const PageLocation& loc) {
  std::lock_guard<std::mutex> lk(index_mu_);
  PageLocation* old = index_.find(d);
  if (old) {
    value_bytes_ -= old->value_len;
    *old = loc;
  } else {
    index_.put(d, loc);
  }
  value_bytes_ += loc.value_len;
}

void NvmeEngine::put_done(IoContext& ctx, const IoCompletion& c, std::vector<PutItem>& items) {
  IoContext::Slot& s = ctx.slots[c.tag];
  PutItem& it = items[s.item];
  int64_t res = c.result;
  int err = 0, ms = 0;
  if (faults_.fire(FaultInjector::kWrite, &err)) res = -err;
  if (faults_.fire(FaultInjector::kStall, nullptr, &ms)) usleep(static_cast<useconds_t>(ms) * 1000);
  if (res == s.expect) {
    regions_->at(s.loc.region).entries.push_back(s.entry);
    if (!it.tombstone) index_record(s.digest, s.loc);
    *it.result = status_code(Status::kOk);
    if (it.reinsert) {
      ctr_.reinserted_pages++;
    } else if (!it.tombstone) {
      ctr_.puts++;
      ctr_.put_bytes += it.len;
    }
  } else {
    *it.result = status_code(Status::kIoError);
    ctr_.put_errors++;
    if (++ctr_.io_errors <= 3)
      notes_.warn("write of a " + format_bytes(it.len) + " page failed: " + (res < 0 ? errstr(res) : "short write") +
                 " (the put returns IO_ERROR; the engine goes on)");
  }
  ctx.give_slot(static_cast<int>(c.tag));
}

// Stages one record (header + value) in a slot and submits its write. False (and the result
// set) when the value's layout cannot be written in one I/O.
bool NvmeEngine::submit_put(IoContext& ctx, PutItem& it, size_t i, std::vector<PutItem>& items) {
  const int si = ctx.take_slot();
  IoContext::Slot& s = ctx.slots[si];
  s.item = i;
  s.iov.clear();
  s.iov.push_back({s.header, kBlock});
  if (!ctx.prepare_value(s, *it.segs, it.len)) {
    *it.result = status_code(Status::kInvalidParams);
    ctx.give_slot(si);
    return false;
  }
  for (const auto& c : s.copies) memcpy(c.bounce, c.user, c.len);
  if (s.bounce_total > s.bounce_used)  // deterministic padding
    memset(s.bounce_base + s.bounce_used, 0, s.bounce_total - s.bounce_used);

  const uint32_t r = static_cast<uint32_t>(regions_->open_region());
  disk::RecordHeader h{};
  h.flags = it.tombstone ? disk::kTombstone : 0;
  h.key_len = static_cast<uint32_t>(it.key->size());
  h.value_len = it.len;
  h.region_seq = regions_->at(r).region_seq;
  h.seq = regions_->next_seq();
  h.digest_lo = it.digest.lo;
  h.digest_hi = it.digest.hi;
  h.value_checksum = it.tombstone ? checksum64(nullptr, 0) : sg_checksum(*it.segs, it.len);
  disk::encode_header(s.header, h, it.key->data());

  const uint64_t rec = disk::record_bytes(it.len);
  const uint64_t off = regions_->place(rec);
  s.expect = static_cast<int64_t>(rec);
  s.digest = it.digest;
  s.loc = PageLocation{h.value_checksum, static_cast<uint32_t>(it.len), r, static_cast<uint32_t>(off / kBlock), 0};
  s.entry = summary_entry(h, s.loc.block);

  IoRequest req;
  req.op = IoOp::kWrite;
  req.offset = dev_->region_base(r) + off;
  req.iov = s.iov.data();
  req.iovcnt = static_cast<int>(s.iov.size());
  req.tag = static_cast<uint64_t>(si);
  ctx.submit(req, [&](const IoCompletion& c) { put_done(ctx, c, items); });
  return true;
}

void NvmeEngine::put_records(IoContext& ctx, std::vector<PutItem>& items) {
  auto done = [&](const IoCompletion& c) { put_done(ctx, c, items); };
  auto drain = [&] {
    while (ctx.q->inflight() > 0) ctx.reap(1, done);
  };
  for (size_t i = 0; i < items.size(); i++) {
    PutItem& it = items[i];
    const uint64_t rec = disk::record_bytes(it.len);
    if (!regions_->open_fits(rec)) {
      drain();  // a region switch needs every write to the old region finished
      // Reinsertions never reclaim: they fill the region just opened for them.
      Status room = it.reinsert ? (regions_->open_fits(rec) ? Status::kOk : Status::kNoSpace) : ensure_room(ctx, rec);
      if (room != Status::kOk) {
        *it.result = status_code(room);
        continue;
      }
    }
    while (ctx.free_slots.empty()) ctx.reap(1, done);
    if (yield_to_reads_ && reads_active() > 0 && ctx.q->inflight() > 0) {
      ctr_.writes_yielded++;  // reads first: one background write in the queue at most
      while (reads_active() > 0 && ctx.q->inflight() > 0) ctx.reap(1, done);
    }
    submit_put(ctx, it, i, items);
  }
  drain();
}

// kOk when the open region has room for rec_bytes (opening one, reclaiming the oldest if none is
// free); kNoSpace when nothing can be reclaimed; kIoError when a region could not be opened.
Status NvmeEngine::ensure_room(IoContext& ctx, uint64_t rec_bytes) {
  if (regions_->open_fits(rec_bytes)) return Status::kOk;
  if (regions_->open_region() >= 0) regions_->seal(ctx, static_cast<uint32_t>(regions_->open_region()));
  std::vector<HotRecord> hot;
  int64_t r = regions_->take_free();
  if (r < 0 && (r = reclaim_oldest(ctx, &hot)) < 0) return Status::kNoSpace;
  if (!regions_->open(ctx, static_cast<uint32_t>(r))) return Status::kIoError;
  reinsert(ctx, hot);
  return regions_->open_fits(rec_bytes) ? Status::kOk : Status::kNoSpace;
}

void NvmeEngine::reinsert(IoContext& ctx, std::vector<HotRecord>& hot) {
  if (hot.empty()) return;
  std::vector<SgList> segs(hot.size());
  std::vector<int32_t> res(hot.size());
  std::vector<PutItem> items;
  for (size_t i = 0; i < hot.size(); i++) {
    segs[i] = {Segment{hot[i].data.data() + kBlock, hot[i].value_len}};
    items.push_back(PutItem{&hot[i].key, KeyDigest::of(hot[i].key), &segs[i], hot[i].value_len, &res[i], true});
  }
  put_records(ctx, items);
}

// Reclaims the oldest sealed region: its hot pages are read into *hot (for reinsertion), every
// page of it leaves the index, and readers still copying from it are waited for.
int64_t NvmeEngine::reclaim_oldest(IoContext& ctx, std::vector<HotRecord>* hot) {
  const int64_t r = regions_->pop_oldest_sealed();
  if (r < 0) return -1;
  const uint32_t region = static_cast<uint32_t>(r);
  bool summary_ok = false;
  std::vector<disk::SummaryEntry> entries = read_summary(ctx, region, &summary_ok);
  if (summary_ok) read_hot(ctx, region, pick_hot(region, entries), hot);
  drop_region(region, entries, summary_ok, hot->size());
  ctr_.evicted_regions++;
  regions_->at(region) = RegionState{};
  return r;
}

// The region's summary from disk: the pages it holds (so the index needs no per-region lists).
std::vector<disk::SummaryEntry> NvmeEngine::read_summary(IoContext& ctx, uint32_t r, bool* ok) {
  const RegionState& s = regions_->at(r);
  std::vector<disk::SummaryEntry> entries(s.summary_count);
  *ok = true;
  if (s.summary_count == 0) return entries;
  const uint64_t bytes = disk::summary_bytes(s.summary_count);
  AlignedBuffer buf(bytes);
  *ok = ctx.sync_io(IoOp::kRead, dev_->region_base(r) + s.summary_off, buf.data(), bytes) ==
        static_cast<int64_t>(bytes);
  if (*ok) memcpy(entries.data(), buf.data(), s.summary_count * sizeof(disk::SummaryEntry));
  return entries;
}

std::vector<std::pair<KeyDigest, PageLocation>> NvmeEngine::pick_hot(uint32_t r,
                                                                     const std::vector<disk::SummaryEntry>& entries) {
  std::vector<std::pair<KeyDigest, PageLocation>> keep;
  std::lock_guard<std::mutex> lk(index_mu_);
  reinsertion_->begin(opt_.region_size);
  for (const auto& e : entries) {
    KeyDigest d{e.digest_lo, e.digest_hi};
    PageLocation* loc = index_.find(d);
    if (loc && loc->region == r && loc->block == e.block &&
        reinsertion_->keep(*loc, disk::record_bytes(loc->value_len)))
      keep.push_back({d, *loc});
  }
  return keep;
}

// Reads the kept pages (header + value) while they are still indexed and intact.
void NvmeEngine::read_hot(IoContext& ctx, uint32_t r, const std::vector<std::pair<KeyDigest, PageLocation>>& keep,
                          std::vector<HotRecord>* hot) {
  for (const auto& [d, loc] : keep) {
    uint64_t rb = disk::record_bytes(loc.value_len);
    AlignedBuffer buf(rb);
    if (ctx.sync_io(IoOp::kRead, dev_->region_base(r) + uint64_t(loc.block) * kBlock, buf.data(), rb) !=
        static_cast<int64_t>(rb))
      continue;
    disk::RecordHeader h;
    if (!disk::decode_header(buf.data(), &h) || h.value_len != loc.value_len ||
        checksum64(buf.data() + kBlock, loc.value_len) != loc.value_checksum)
      continue;
    std::string key(reinterpret_cast<const char*>(buf.data() + sizeof(disk::RecordHeader)), h.key_len);
    hot->push_back(HotRecord{std::move(key), std::move(buf), loc.value_len});
  }
}

// Drops every page of region r from the index and waits for readers still copying from it.
void NvmeEngine::drop_region(uint32_t r, const std::vector<disk::SummaryEntry>& entries, bool summary_ok,
                             size_t kept) {
  std::unique_lock<std::mutex> lk(index_mu_);
  std::vector<KeyDigest> victims;
  if (summary_ok) {
    for (const auto& e : entries) {
      KeyDigest d{e.digest_lo, e.digest_hi};
      PageLocation* loc = index_.find(d);
      if (loc && loc->region == r && loc->block == e.block) victims.push_back(d);
    }
  } else {  // summary unreadable: find the region's pages the slow way
    victims = index_.keys_in_region(r);
  }
  for (const auto& d : victims) {
    value_bytes_ -= index_.find(d)->value_len;
    index_.erase(d);
  }
  ctr_.evicted_pages += victims.size() - std::min(victims.size(), kept);
  unpinned_cv_.wait(lk, [&] { return readers_[r] == 0; });
}

// Writes a tombstone for each key (pipelined, like puts): a restart will not bring back what was
// indexed under it before. results[i]: 0 or a negative Status. write_mu_ held (or the constructor).
void NvmeEngine::write_tombstones(IoContext& ctx, const std::vector<std::string>& keys, int32_t* results) {
  std::vector<PutItem> items;
  items.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); i++)
    items.push_back(PutItem{&keys[i], KeyDigest::of(keys[i]), &kNoValue, 0, &results[i], false, true});
  put_records(ctx, items);
}

// fdatasync; a failure is counted and logged (naming `what`). True when it succeeded.
bool NvmeEngine::synced(const char* what) {
  int err = dev_->sync();
  if (err == 0) return true;
  ctr_.io_errors++;
  notes_.warn(std::string("fdatasync during ") + what + " failed (" + strerror(err) +
              "); what was written since the last sync may not survive a power loss");
  return false;
}

// ---- public API -----------------------------------------------------------------------------

// Validates each key and value; a key given twice in one batch is written once, with its last
// value. Returns the items to write (results of the others are set).
std::vector<NvmeEngine::PutItem> NvmeEngine::put_items(const std::vector<std::string>& keys,
                                                        const std::vector<SgList>& values, int32_t* results) {
  const size_t n = keys.size();
  std::vector<KeyDigest> digests(n);
  std::vector<size_t> order(n), last(n);
  for (size_t i = 0; i < n; i++) {
    digests[i] = KeyDigest::of(keys[i]);
    order[i] = last[i] = i;
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return digests[a].lo != digests[b].lo ? digests[a].lo < digests[b].lo : a < b;
  });
  for (size_t k = 0; k + 1 < n; k++)
    if (digests[order[k]] == digests[order[k + 1]]) last[order[k]] = order[k + 1];
  std::vector<PutItem> items;
  items.reserve(n);
  for (size_t i = 0; i < n; i++) {
    int32_t st = key_code(keys[i]);
    int64_t len = st == status_code(Status::kOk) ? check_sg(values[i]) : st;
    if (len >= 0 && static_cast<uint64_t>(len) > max_value_) len = status_code(Status::kValueTooLarge);
    if (len < 0 || last[i] != i) {  // invalid, or superseded later in this batch
      results[i] = len < 0 ? static_cast<int32_t>(len) : status_code(Status::kOk);
      continue;
    }
    items.push_back(PutItem{&keys[i], digests[i], &values[i], static_cast<uint64_t>(len), &results[i], false});
  }
  return items;
}

// kKeepExisting: items whose key is indexed already report 0 and are not written.
void NvmeEngine::drop_existing(std::vector<PutItem>* items) {
  std::lock_guard<std::mutex> lk(index_mu_);
  size_t kept = 0;
  for (PutItem& it : *items) {
    if (index_.find(it.digest)) {
      *it.result = status_code(Status::kOk);
      continue;
    }
    (*items)[kept++] = it;
  }
  items->resize(kept);
}

void NvmeEngine::batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                           int32_t* results, PutMode mode, WritePriority prio) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return std::fill(results, results + keys.size(), status_code(Status::kClosed));
  std::vector<PutItem> items = put_items(keys, values, results);
  if (mode == PutMode::kKeepExisting) drop_existing(&items);
  if (items.empty()) return;
  std::lock_guard<std::mutex> wl(write_mu_);
  IoContextPool::Lease ctx(*ctxs_, "a put");
  if (!ctx) {
    for (auto& it : items) *it.result = status_code(Status::kIoError);
    return;
  }
  yield_to_reads_ = prio == WritePriority::kBackground;
  put_records(*ctx, items);
  yield_to_reads_ = false;
}

void NvmeEngine::unpin(uint32_t region) {
  std::lock_guard<std::mutex> lk(index_mu_);
  if (--readers_[region] == 0) unpinned_cv_.notify_all();
}

// Looks `key` up and pins its region. Returns kPinned (read it), 0 (an empty value: done) or
// the negative Status to report.
int64_t NvmeEngine::pin_for_read(const std::string& key, const SgList& buf, KeyDigest* d, PageLocation* loc) {
  int32_t st = key_code(key);
  int64_t cap = st == status_code(Status::kOk) ? check_sg(buf) : st;
  if (cap < 0) return cap;
  *d = KeyDigest::of(key);
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    PageLocation* p = index_.find(*d);
    if (!p) {
      ctr_.misses++;
      return status_code(Status::kNotFound);
    }
    p->flags |= PageIndex::kHit;
    *loc = *p;
    readers_[loc->region]++;
  }
  if (static_cast<uint64_t>(cap) < loc->value_len || loc->value_len == 0) {
    unpin(loc->region);
    if (loc->value_len == 0) ctr_.hits++;
    return loc->value_len == 0 ? 0 : status_code(Status::kBufferTooSmall);
  }
  return kPinned;
}

void NvmeEngine::forget_corrupt(const KeyDigest& d, const PageLocation& loc) {
  std::lock_guard<std::mutex> lk(index_mu_);
  PageLocation* cur = index_.find(d);
  if (cur && cur->region == loc.region && cur->block == loc.block) {
    value_bytes_ -= cur->value_len;
    index_.erase(d);
  }
}

// Accounts for one read of a pinned page (read_values' result r) and unpins its region.
void NvmeEngine::read_done(const KeyDigest& d, const PageLocation& loc, int64_t r) {
  if (r == status_code(Status::kNotFound)) {  // never hand out wrong bytes: a miss, forgotten
    ctr_.checksum_failures++;
    ctr_.misses++;
    forget_corrupt(d, loc);
  } else if (r == status_code(Status::kIoError)) {
    ctr_.io_errors++;
  } else if (r >= 0) {
    ctr_.hits++;
    ctr_.get_bytes += static_cast<uint64_t>(r);
  }
  unpin(loc.region);
}

uint64_t NvmeEngine::value_offset(const PageLocation& loc) const {
  return dev_->region_base(loc.region) + uint64_t(loc.block) * kBlock + kBlock;
}

void NvmeEngine::batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                           int64_t* results) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return std::fill(results, results + keys.size(), int64_t{status_code(Status::kClosed)});
  IoContextPool::Lease lease(*ctxs_, "a get");
  if (!lease) return std::fill(results, results + keys.size(), int64_t{status_code(Status::kIoError)});
  std::vector<ValueRead> reads;
  std::vector<std::pair<KeyDigest, PageLocation>> pinned;  // per read
  std::vector<size_t> which;                               // per read: its key
  for (size_t i = 0; i < keys.size(); i++) {
    KeyDigest d;
    PageLocation loc;
    results[i] = pin_for_read(keys[i], buffers[i], &d, &loc);
    if (results[i] != kPinned) continue;
    reads.push_back(ValueRead{value_offset(loc), loc.value_len, loc.value_checksum, &buffers[i]});
    pinned.push_back({d, loc});
    which.push_back(i);
  }
  reads_active_++;
  read_values(*lease, reads, [&](size_t j, int64_t r) {
    results[which[j]] = r;
    read_done(pinned[j].first, pinned[j].second, r);
  });
  reads_active_--;
  ctr_.gets += keys.size();
}

// Where key's value lies, for a reader with its own descriptor of the file (read_fd()); pins
// its region until unpin_location(loc->region). Counts a hit as a get does.
int64_t NvmeEngine::pin_location(const std::string& key, ValueLocation* out) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return status_code(Status::kClosed);
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  std::lock_guard<std::mutex> lk(index_mu_);
  ctr_.gets++;
  PageLocation* p = index_.find(KeyDigest::of(key));
  if (!p) {
    ctr_.misses++;
    return status_code(Status::kNotFound);
  }
  p->flags |= PageIndex::kHit;
  readers_[p->region]++;
  reads_active_++;  // until unpin_location: the reader's I/O is in flight meanwhile
  *out = ValueLocation{value_offset(*p), p->value_len, p->value_checksum, p->region};
  ctr_.hits++;
  ctr_.get_bytes += p->value_len;
  return p->value_len;
}

void NvmeEngine::unpin_location(uint32_t region) {
  if (region >= readers_.size()) return;
  reads_active_--;
  unpin(region);
}

void NvmeEngine::batch_exists(const std::vector<std::string>& keys, int32_t* results) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return std::fill(results, results + keys.size(), status_code(Status::kClosed));
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
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  std::vector<int32_t> res(1);
  remove_keys({key}, res.data(), nullptr);
  return res[0];
}

// Removes each key: out of the index at once, then a tombstone (all of them pipelined) so a
// restart does not bring it back. results[i]: 0, NOT_FOUND or a negative Status; *removed (if
// given) gets the digests of the keys that were indexed.
void NvmeEngine::remove_keys(const std::vector<std::string>& keys, int32_t* results, std::vector<KeyDigest>* removed) {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return std::fill(results, results + keys.size(), status_code(Status::kClosed));
  std::lock_guard<std::mutex> wl(write_mu_);
  IoContextPool::Lease ctx(*ctxs_, "a remove");
  if (!ctx) return std::fill(results, results + keys.size(), status_code(Status::kIoError));  // nothing changed
  std::vector<std::string> found;
  std::vector<size_t> which;
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    for (size_t i = 0; i < keys.size(); i++) {
      KeyDigest d = KeyDigest::of(keys[i]);
      PageLocation* p = index_.find(d);
      results[i] = p ? status_code(Status::kOk) : status_code(Status::kNotFound);
      if (!p) continue;
      value_bytes_ -= p->value_len;
      index_.erase(d);
      if (removed) removed->push_back(d);
      found.push_back(keys[i]);
      which.push_back(i);
    }
  }
  ctr_.removes += found.size();
  std::vector<int32_t> res(found.size());
  write_tombstones(*ctx, found, res.data());
  size_t failed = 0;
  for (size_t j = 0; j < which.size(); j++)
    if (res[j] != status_code(Status::kOk)) results[which[j]] = status_code(Status::kIoError), failed++;
  if (failed) notes_.warn("could not persist the removal of " + std::to_string(failed) + " keys; they may reappear after a restart");
}

// The keys of the pages indexed now that start with `prefix`. The index keeps digests only: the
// keys are read back from the record headers, kBatch at a time, each page's region pinned while
// its header is read (so reclaim cannot reuse it meanwhile).
std::vector<std::string> NvmeEngine::keys_with_prefix(IoContext& ctx, const std::string& prefix) {
  constexpr size_t kBatch = 256;
  std::vector<KeyDigest> all;
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    all = index_.digests();
  }
  std::vector<std::string> out;
  for (size_t first = 0; first < all.size(); first += kBatch) {
    std::vector<std::pair<KeyDigest, PageLocation>> pinned;
    {
      std::lock_guard<std::mutex> lk(index_mu_);
      for (size_t i = first; i < std::min(all.size(), first + kBatch); i++)
        if (PageLocation* p = index_.find(all[i])) {
          readers_[p->region]++;
          pinned.push_back({all[i], *p});
        }
    }
    std::vector<uint64_t> offsets;
    for (const auto& [d, loc] : pinned) offsets.push_back(value_offset(loc) - kBlock);
    read_blocks(ctx, offsets, [&](size_t i, const uint8_t* block) {
      disk::RecordHeader h;
      if (!block || !disk::decode_header(block, &h) || KeyDigest{h.digest_lo, h.digest_hi} != pinned[i].first) return;
      std::string_view key(reinterpret_cast<const char*>(block + sizeof(h)), h.key_len);
      if (key.compare(0, prefix.size(), prefix) == 0) out.emplace_back(key);
    });
    for (const auto& [d, loc] : pinned) unpin(loc.region);
  }
  return out;
}

int64_t NvmeEngine::remove_prefix(const std::string& prefix, std::vector<KeyDigest>* removed) {
  std::vector<std::string> keys;
  {
    std::shared_lock<std::shared_mutex> life(life_mu_);
    if (closed_) return status_code(Status::kClosed);
    IoContextPool::Lease ctx(*ctxs_, "remove_prefix");
    if (!ctx) return status_code(Status::kIoError);
    keys = keys_with_prefix(*ctx, prefix);
  }
  std::vector<int32_t> res(keys.size());
  const size_t before = removed->size();
  remove_keys(keys, res.data(), removed);
  for (int32_t r : res)
    if (r != status_code(Status::kOk) && r != status_code(Status::kNotFound)) return r;
  return static_cast<int64_t>(removed->size() - before);
}

int32_t NvmeEngine::remove_all() {
  std::shared_lock<std::shared_mutex> life(life_mu_);
  if (closed_) return status_code(Status::kClosed);
  std::lock_guard<std::mutex> wl(write_mu_);
  IoContextPool::Lease ctx(*ctxs_, "remove_all");
  if (!ctx) return status_code(Status::kIoError);  // nothing changed
  {
    std::unique_lock<std::mutex> lk(index_mu_);
    index_.clear();
    value_bytes_ = 0;
    unpinned_cv_.wait(lk, [&] { return std::all_of(readers_.begin(), readers_.end(), [](uint32_t n) { return n == 0; }); });
  }
  // Every used region becomes free: its trailer is zeroed (not trusted at the next start) and so
  // is its first block (not scanned for tombstones either: every record before this is gone).
  int32_t rc = status_code(Status::kOk);
  std::vector<uint32_t> used;
  for (uint32_t r = 0; r < regions_->region_count(); r++)
    if (regions_->at(r).state != RegionState::kFree) used.push_back(r);
  memset(ctx->scratch, 0, kBlock);
  for (uint32_t r : used) {
    uint64_t trailer = dev_->region_base(r) + opt_.region_size - kBlock;
    if (ctx->sync_io(IoOp::kWrite, trailer, ctx->scratch, kBlock) != static_cast<int64_t>(kBlock))
      rc = status_code(Status::kIoError);
  }
  if (!clear_first_blocks(*ctx, used)) rc = status_code(Status::kIoError);
  if (!synced("remove_all")) rc = status_code(Status::kIoError);
  regions_->reset_all();
  return rc;
}

void NvmeEngine::close() {
  std::unique_lock<std::shared_mutex> life(life_mu_);
  if (closed_ || !dev_ || dev_->fd() < 0) return;
  {
    std::lock_guard<std::mutex> wl(write_mu_);
    int64_t open = regions_->open_region();
    if (open >= 0 && !regions_->at(static_cast<uint32_t>(open)).entries.empty()) {
      IoContextPool::Lease ctx(*ctxs_, "sealing the open region at close");
      if (ctx)
        regions_->seal(*ctx, static_cast<uint32_t>(open));
      else
        notes_.warn("could not seal the open region at close; the next start scans it (nothing is lost)");
    }
    synced("close");
  }
  ctxs_.reset();  // queues drain what the kernel still owns first
  dev_->close();
  closed_ = true;
}

// Takes neither life_mu_ nor write_mu_ (both are held across I/O): the figures come from
// atomics, fields fixed at open, and the index under index_mu_ (never held across I/O).
NvmeStats NvmeEngine::stats() {
  NvmeStats s;
  s.io_backend = backend_name_;
  s.direct_io = opt_.direct_io;
  s.fixed_buffers = fixed_buffers_;
  s.capacity = opt_.capacity;
  s.region_size = opt_.region_size;
  s.region_count = readers_.size();
  s.regions_free = regions_->free_count();
  s.regions_sealed = regions_->sealed_count();
  {
    std::lock_guard<std::mutex> lk(index_mu_);
    s.entries = index_.size();
    s.value_bytes = value_bytes_;
    s.index_bytes = index_.memory_bytes();
  }
  s.index_bytes_per_entry = s.entries ? double(s.index_bytes) / double(s.entries) : 0.0;
  const Counters& c = ctr_;
  s.puts = c.puts, s.put_bytes = c.put_bytes, s.put_errors = c.put_errors, s.gets = c.gets, s.hits = c.hits;
  s.misses = c.misses, s.get_bytes = c.get_bytes, s.checksum_failures = c.checksum_failures;
  s.io_errors = c.io_errors, s.evicted_regions = c.evicted_regions, s.evicted_pages = c.evicted_pages;
  s.reinserted_pages = c.reinserted_pages, s.removes = c.removes, s.writes_yielded = c.writes_yielded;
  s.reads_active = static_cast<uint64_t>(std::max(0, reads_active()));
  s.recovery_seconds = recovery_seconds_;
  s.recovered_entries = recovered_entries_;
  s.recovered_regions_scanned = recovered_scanned_;
  return s;
}

}  // namespace mch
