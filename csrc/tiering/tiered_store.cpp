// TieredStore implementation: read tiered_store.h (contract) and dram/dram_tier.h (slot states).
#include "tiering/tiered_store.h"

#include <algorithm>
#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <mutex>
#include <thread>

#include "dram/dram_tier.h"
#include "tiering/removal_fence.h"
#include "nvme/nvme_engine.h"
#include "common/keys.h"
#include "common/sg_list.h"
#include "common/text.h"
#include "nvme/record_format.h"

namespace mch {

namespace {
uint64_t make_token(uint32_t slot, uint32_t gen) { return (uint64_t(gen) << 32) | slot; }
uint32_t token_slot(uint64_t t) { return static_cast<uint32_t>(t); }
uint32_t token_gen(uint64_t t) { return static_cast<uint32_t>(t >> 32); }

}  // namespace

struct TieredStore::Impl {
  TieredOptions opt;
  std::mutex mu;  // guards dram (all of its state) and closed
  std::unique_ptr<DramTier> dram;
  std::unique_ptr<NvmeEngine> nvme;  // internally synchronised
  bool closed = false;
  // Pages evicted from DRAM whose demotion to NVMe is in flight (guarded by mu): they still
  // count as present, and a get of one waits for its demotion instead of missing.
  std::unordered_map<KeyDigest, int, DigestHash> demoting;
  // Pages being copied from NVMe into DRAM (guarded by mu): a get of one waits for it to land.
  std::unordered_map<KeyDigest, int, DigestHash> promoting;
  std::condition_variable settled_cv;  // signalled when a demotion, promotion or NVMe write finishes
  // Removals in progress and the NVMe writes of pages leaving DRAM (guarded by mu; see
  // removal_fence.h): a removed page never comes back from a copy that was in flight.
  RemovalFence fence;

  // Background promotion of prefetched keys: prefetch_workers threads, a bounded queue of
  // (keys, step) jobs (guarded by pf_mu).
  struct PrefetchJob {
    std::vector<std::string> keys;
    size_t step;
  };
  std::mutex pf_mu;
  std::condition_variable pf_cv;
  std::deque<PrefetchJob> pf_queue;
  bool pf_stop = false;
  std::vector<std::thread> prefetchers;

  // The background demoter (clean reserve; tiered_store.h). Its wake-ups and demoter_stop are
  // guarded by mu; clean_target is fixed at construction.
  std::condition_variable demote_cv;
  bool demoter_stop = false;
  bool clean_wanted = false;  // a clean-only reservation found no clean page at the cold end
  uint64_t clean_target = 0;  // bytes
  uint64_t promoting_bytes = 0;  // slots promotions have taken and are filling: they land clean
  std::thread demoter;
  // The reserve's level as the demoter sees it (caller holds mu): free and clean slots, and the
  // slots being filled from NVMe, which are clean again when their read lands.
  uint64_t clean_level() const { return dram->clean_bytes() + promoting_bytes; }

  struct Counters {
    std::atomic<uint64_t> puts{0}, put_bytes{0}, skipped_existing{0}, gets{0}, dram_hits{0}, nvme_hits{0},
        misses{0}, get_bytes{0}, demoted{0}, demote_failures{0}, not_admitted{0}, promoted{0},
        written_through{0}, prefetch_queued{0}, prefetch_done{0}, direct_reads{0},
        reads_waited_for_write{0}, demoter_batches{0}, demoter_pages{0}, demoter_backoffs{0},
        demoter_writing{0};  // a gauge: pages of the batch the demoter is writing now
  } ctr;

  explicit Impl(const TieredOptions& o) : opt(o) {
    if (opt.admission != "always" && opt.admission != "never" && opt.admission != "second_hit")
      throw EngineError(EngineError::kInvalid,
                        "tiers.dram.admission must be always, never or second_hit, not '" + opt.admission + "'");
    if (opt.has_nvme && opt.slab_size <= DramTier::kMaxSlabSize &&
        opt.slab_size > disk::max_value_in_region(opt.nvme.region_size))
      throw EngineError(EngineError::kInvalid,
                        "tiers.dram.slab_size " + format_bytes(opt.slab_size) + " holds pages larger than a region of " +
                            format_bytes(opt.nvme.region_size) + " (tiers.nvme.region_size) can store (at most " +
                            format_bytes(disk::max_value_in_region(opt.nvme.region_size)) +
                            "), so such pages would be dropped when they leave DRAM; lower tiers.dram.slab_size or "
                            "raise tiers.nvme.region_size");
    DramTier::Options d;
    d.capacity = opt.dram_capacity;
    d.slab_size = opt.slab_size;
    d.eviction = opt.eviction;
    d.hugepages = opt.hugepages;
    d.keep_keys = opt.has_nvme || opt.keep_keys;  // a demoted page is written under its key
    try {
      dram.reset(new DramTier(d));
    } catch (const std::invalid_argument& e) {
      throw EngineError(EngineError::kInvalid, std::string("tiers.dram.eviction: ") + e.what());
    }
    if (opt.has_nvme) nvme.reset(new NvmeEngine(opt.nvme));
    if (opt.prefetch_workers < 1 || opt.prefetch_workers > 64)
      throw EngineError(EngineError::kInvalid, "prefetch.concurrency must be 1 to 64, not " +
                                                   std::to_string(opt.prefetch_workers));
    for (int i = 0; i < opt.prefetch_workers; i++) prefetchers.emplace_back([this] { prefetch_loop(); });
    if (keeps_reserve()) {
      clean_target = static_cast<uint64_t>(opt.clean_reserve * static_cast<double>(dram->arena().size()));
      demoter = std::thread([this] { demote_loop(); });
    }
  }

  ~Impl() {
    stop_prefetcher();
    stop_demoter();
  }

  // Whether a clean reserve is kept: an NVMe tier to write to, a share, and victims that would
  // be written (with admission "never" no victim costs a write anyway).
  bool keeps_reserve() const { return nvme && opt.clean_reserve > 0 && opt.admission != "never"; }

  void stop_demoter() {
    {
      std::lock_guard<std::mutex> lk(mu);
      demoter_stop = true;
    }
    demote_cv.notify_all();
    if (demoter.joinable()) demoter.join();
  }
  void demote_loop();
  struct CleanBatch;
  bool pick_cold_dirty(CleanBatch* b);
  void write_clean(CleanBatch& b);

  void stop_prefetcher() {
    {
      std::lock_guard<std::mutex> lk(pf_mu);
      pf_stop = true;
    }
    pf_cv.notify_all();
    for (auto& t : prefetchers)
      if (t.joinable()) t.join();
  }


  bool admit(const DramTier::Victim& v) const {
    if (opt.admission == "never") return false;
    if (opt.admission == "second_hit") return v.hits > 0;
    return true;
  }

  // An evicted entry waiting to be demoted, and the slot holding its bytes (kNone when the
  // bytes were copied out into the victim).
  struct Pending {
    static constexpr uint32_t kNone = UINT32_MAX;
    DramTier::Victim v;
    uint32_t slot;
  };
  // The victims of one call, and the fence ticket of their NVMe write (0: nothing to write).
  struct Demotion {
    std::vector<Pending> items;
    uint64_t ticket = 0;
  };

  // Calls dram->reserve and records its victims as pending demotion. Caller holds mu.
  int64_t reserve_locked(uint64_t len, Demotion* pending, bool clean_only) {
    std::vector<DramTier::Victim> victims;
    int64_t s = dram->reserve(len, &victims, clean_only);
    if (keeps_reserve() && clean_level() < clean_target) demote_cv.notify_one();
    for (auto& v : victims) {
      if (nvme && !v.clean && admit(v)) {
        demoting[v.digest]++;
        if (!pending->ticket) pending->ticket = fence.begin_transfer();
      }
      uint32_t where = v.copy.data() ? Pending::kNone : static_cast<uint32_t>(s);
      pending->items.push_back(Pending{std::move(v), where});
    }
    return s;
  }

  // Writes evicted entries to NVMe (before their slots are reused), then marks them settled.
  void demote(Demotion& demotion) {
    std::vector<Pending>& pending = demotion.items;
    if (pending.empty()) return;
    std::vector<std::string> keys;
    std::vector<SgList> sg;
    std::vector<KeyDigest> settled;
    for (auto& p : pending) {
      if (p.v.clean) continue;  // on NVMe already
      if (!nvme || !admit(p.v)) {
        ctr.not_admitted++;
        continue;
      }
      settled.push_back(p.v.digest);
      uint8_t* bytes = p.slot == Pending::kNone ? p.v.copy.data() : dram->data(p.slot);
      keys.push_back(p.v.key);
      sg.push_back({Segment{bytes, p.v.len}});
    }
    if (!keys.empty()) {
      // Pages already on NVMe (written through, or promoted from there) need no second copy.
      std::vector<int32_t> have(keys.size());
      nvme->batch_exists(keys, have.data());
      std::vector<std::string> k2;
      std::vector<SgList> s2;
      for (size_t i = 0; i < keys.size(); i++)
        if (have[i] != 1) {
          k2.push_back(std::move(keys[i]));
          s2.push_back(std::move(sg[i]));
        }
      if (!k2.empty()) {
        std::vector<int32_t> res(k2.size());
        nvme->batch_put(k2, s2, res.data());
        for (int32_t r : res) (r == status_code(Status::kOk) ? ctr.demoted : ctr.demote_failures)++;
      }
    }
    if (settled.empty()) return;
    {
      std::lock_guard<std::mutex> lk(mu);
      for (const auto& d : settled) settle(demoting, d);
      fence.end_transfer(demotion.ticket);
    }
    settled_cv.notify_all();
  }

  // Whether the key has a value in some tier (or on its way there). Caller holds mu; the NVMe
  // lookup is an index lookup (no I/O).
  bool stored(const KeyDigest& d, const std::string& key) {
    return dram->find(d) >= 0 || demoting.count(d) || (nvme && nvme->value_size(key) >= 0);
  }

  // A slot for `len` bytes (caller holds mu). With a clean reserve, gets (for_read) take only a
  // clean slot at the cold end and otherwise read NVMe directly (kNoSpace); they do not ask the
  // demoter for more, since a slot it cleans for a promotion is a write paid for a read. Puts and
  // prefetches ask it, and meanwhile fall back to a dirty victim, whose write they wait for.
  int64_t reserve_slot(uint64_t len, Demotion* pending, bool for_read) {
    const bool clean_only = keeps_reserve();
    int64_t s = reserve_locked(len, pending, clean_only);
    if (s == status_code(Status::kNoSpace) && clean_only && !for_read) {
      clean_wanted = true;  // the demoter cleans the cold end now, whatever the level says
      demote_cv.notify_one();
      s = reserve_locked(len, pending, false);
    }
    return s;
  }

  struct WriteThrough;
  void publish_committed(uint32_t s, WriteThrough* wt);
  void write_through(WriteThrough& wt);
  void replace(const std::vector<uint64_t>& tokens, const std::vector<size_t>& replacing, int32_t* results,
               WriteThrough* wt);

  // Step 2 of a removal (removal_fence.h), mu held through lk: the fence must already cover the
  // keys and they must be out of DRAM; waits for the transfers that started before.
  void wait_transfers_in_flight(std::unique_lock<std::mutex>& lk) {
    const uint64_t horizon = fence.now();
    settled_cv.wait(lk, [&] { return !fence.transfers_before(horizon); });
  }

  // Waits (mu held via lk) until none of `digests` is being demoted or promoted, at most 10 s.
  void wait_settled(std::unique_lock<std::mutex>& lk, const std::vector<KeyDigest>& digests) {
    settled_cv.wait_for(lk, std::chrono::seconds(10), [&] {
      for (const auto& d : digests)
        if (demoting.count(d) || promoting.count(d)) return false;
      return true;
    });
  }
  static void settle(std::unordered_map<KeyDigest, int, DigestHash>& m, const KeyDigest& d) {
    auto it = m.find(d);
    if (it != m.end() && --it->second == 0) m.erase(it);
  }

  // Gets (pin) whose promotions first write the pages they displace: 0 while a clean reserve holds.
  void count_waits(const Demotion& d, bool pin, size_t n) {
    if (d.ticket && pin) ctr.reads_waited_for_write += n;
  }

  // Copies NVMe-only keys into DRAM slots and publishes them; pinned if `pin`. out[i] gets the
  // ticket for keys[i] (status_code(Status::kNotFound) if it is not on NVMe or could not be promoted).
  void promote(const std::vector<std::string>& keys, bool pin, std::vector<GetTicket>* out) {
    out->assign(keys.size(), GetTicket{});
    if (!nvme || keys.empty()) return;
    std::vector<KeyDigest> ds;
    for (const auto& k : keys) ds.push_back(KeyDigest::of(k));
    {
      std::unique_lock<std::mutex> lk(mu);
      wait_settled(lk, ds);  // a page on its way to NVMe is read once it is there
    }
    std::vector<int64_t> sizes(keys.size());
    for (size_t i = 0; i < keys.size(); i++) sizes[i] = nvme->value_size(keys[i]);
    std::vector<size_t> idx;
    std::vector<uint32_t> slot_of;
    Demotion pending;
    uint64_t ticket = 0;  // this promotion's fence ticket
    {
      std::lock_guard<std::mutex> lk(mu);
      if (closed) return;
      for (size_t i = 0; i < keys.size(); i++) {
        if (sizes[i] < 0 || fence.covers(ds[i], keys[i])) continue;  // absent, or being removed
        if (dram->find(ds[i]) >= 0 || promoting.count(ds[i])) {
          (*out)[i].status = status_code(Status::kNoSpace);  // landed meanwhile (or landing): the caller looks again
          continue;
        }
        // A get (pin) takes only a clean slot and otherwise reads the page directly; a prefetch
        // (a worker of its own, no caller waiting) may displace a dirty page and write it.
        int64_t s = reserve_slot(static_cast<uint64_t>(sizes[i]), &pending, pin);
        if (s < 0) {  // no room in DRAM right now
          (*out)[i].status = status_code(Status::kNoSpace);
          continue;
        }
        promoting[ds[i]]++;
        promoting_bytes += dram->slot_size(static_cast<uint32_t>(s));
        idx.push_back(i);
        slot_of.push_back(static_cast<uint32_t>(s));
      }
      if (!idx.empty()) ticket = fence.begin_transfer();
    }
    count_waits(pending, pin, idx.size());
    demote(pending);
    std::vector<std::string> k;
    std::vector<SgList> sg;
    for (size_t j = 0; j < idx.size(); j++) {
      k.push_back(keys[idx[j]]);
      sg.push_back({Segment{dram->data(slot_of[j]), dram->slot_size(slot_of[j])}});
    }
    std::vector<int64_t> res(k.size());
    if (!k.empty()) nvme->batch_get(k, sg, res.data());
    std::lock_guard<std::mutex> lk(mu);
    for (size_t j = 0; j < idx.size(); j++) {
      uint32_t s = slot_of[j];
      GetTicket& t = (*out)[idx[j]];
      const KeyDigest& d = ds[idx[j]];
      settle(promoting, d);
      promoting_bytes -= dram->slot_size(s);
      if (res[j] != sizes[idx[j]] || fence.covers(d, keys[idx[j]])) {  // unreadable, or removed meanwhile
        dram->abort(s);
        continue;
      }
      dram->prepare(s, keys[idx[j]], d, static_cast<uint64_t>(res[j]), 0);
      dram->publish(s);
      dram->mark_clean(s);  // it came from NVMe
      ctr.promoted++;
      if (pin) {
        dram->pin(s);
        dram->touch(s);
      }
      t.status = res[j];
      t.offset = dram->offset(s);
      t.token = make_token(s, dram->slot(s).gen);
      t.tier = 2;
    }
    fence.end_transfer(ticket);
    settled_cv.notify_all();
  }

  void prefetch_loop() {
    for (;;) {
      PrefetchJob job;
      {
        std::unique_lock<std::mutex> lk(pf_mu);
        pf_cv.wait(lk, [&] { return pf_stop || !pf_queue.empty(); });
        if (pf_stop) return;
        job = std::move(pf_queue.front());
        pf_queue.pop_front();
      }
      // In the order given (prefix order by default) and in small steps, so a get waiting for
      // the first pages of a prefix does not wait for the whole prefix to land.
      const std::vector<std::string>& keys = job.keys;
      const size_t kStep = job.step;
      for (size_t b = 0; b < keys.size(); b += kStep) {
        std::vector<std::string> step(keys.begin() + b, keys.begin() + std::min(keys.size(), b + kStep));
        std::vector<GetTicket> t;
        promote(step, false, &t);
        for (const auto& x : t)
          if (x.status >= 0) ctr.prefetch_done++;
      }
    }
  }
};

// ---- the background demoter (clean reserve) ----

// Cold dirty pages the demoter writes in one batch: pinned (never evicted or reused meanwhile)
// under one fence ticket (a removal or overwrite waits for the write, then removes its copy).
struct TieredStore::Impl::CleanBatch {
  std::vector<uint32_t> slots, gens;
  std::vector<std::string> keys;
  std::vector<SgList> values;
  uint64_t ticket = 0;
};

// Picks up to demote_batch bytes (and at most a quarter of the arena: the batch stays pinned
// while it is written, and puts need unpinned victims) of the coldest dirty pages that admission
// lets onto NVMe. Caller holds mu. False when there is none.
bool TieredStore::Impl::pick_cold_dirty(CleanBatch* b) {
  const uint64_t most = std::max<uint64_t>(1, std::min<uint64_t>(opt.demote_batch, dram->arena().size() / 4));
  uint64_t bytes = 0;
  dram->for_each_cold_dirty([&](uint32_t s) {
    const DramTier::Slot& sl = dram->slot(s);
    DramTier::Victim probe;
    probe.hits = sl.flags & 1;
    if (!admit(probe)) return true;
    b->slots.push_back(s);
    bytes += sl.len;
    return bytes < most;
  });
  if (b->slots.empty()) return false;
  for (uint32_t s : b->slots) {
    dram->pin(s);
    b->gens.push_back(dram->slot(s).gen);
    b->keys.push_back(dram->key_of(s));
    b->values.push_back({Segment{dram->data(s), dram->slot(s).len}});
  }
  b->ticket = fence.begin_transfer();
  return true;
}

// Writes a picked batch (mu not held) as background writes, then marks the pages that are
// still the same values clean and gives them back.
void TieredStore::Impl::write_clean(CleanBatch& b) {
  std::vector<int32_t> have(b.keys.size()), res(b.keys.size(), status_code(Status::kOk));
  nvme->batch_exists(b.keys, have.data());  // already there (an earlier copy of the same value)
  std::vector<std::string> k;
  std::vector<SgList> v;
  std::vector<size_t> at;
  for (size_t i = 0; i < b.keys.size(); i++)
    if (have[i] != 1) k.push_back(b.keys[i]), v.push_back(b.values[i]), at.push_back(i);
  std::vector<int32_t> wrote(k.size());
  ctr.demoter_writing = k.size();
  if (!k.empty()) nvme->batch_put(k, v, wrote.data(), PutMode::kReplace, WritePriority::kBackground);
  ctr.demoter_writing = 0;
  for (size_t j = 0; j < at.size(); j++) res[at[j]] = wrote[j];
  {
    std::lock_guard<std::mutex> lk(mu);
    for (size_t i = 0; i < b.slots.size(); i++) {
      uint32_t s = b.slots[i];
      const DramTier::Slot& sl = dram->slot(s);
      if (res[i] == status_code(Status::kOk) && sl.state == DramTier::kReady && sl.gen == b.gens[i])
        dram->mark_clean(s);
      (res[i] == status_code(Status::kOk) ? ctr.demoter_pages : ctr.demote_failures)++;
      dram->unpin(s);
    }
    fence.end_transfer(b.ticket);
  }
  ctr.demoter_batches++;
  settled_cv.notify_all();
}

// Keeps clean_level() at clean_target: woken by reserve_locked when the level drops below
// it (so its pace follows the rate at which puts and promotions take slots), when a clean-only
// reservation found no clean page at the cold end (clean_wanted: clean pages that are all hot
// count in the level but are not taken), and every 50 ms. While reads are in flight and the
// level is above half the target it backs off (2 ms at a time; not when asked by a reader): the
// disk serves the reads first.
void TieredStore::Impl::demote_loop() {
  std::unique_lock<std::mutex> lk(mu);
  auto wanted = [&] { return clean_wanted || clean_level() < clean_target; };
  while (!demoter_stop) {
    demote_cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return demoter_stop || wanted(); });
    if (demoter_stop || !wanted()) continue;
    const bool asked = clean_wanted;  // readers are waiting for clean slots: no back-off
    clean_wanted = false;
    if (!asked && nvme->reads_active() > 0 && clean_level() >= clean_target / 2) {
      ctr.demoter_backoffs++;
      demote_cv.wait_for(lk, std::chrono::milliseconds(2), [&] { return demoter_stop; });
      continue;
    }
    CleanBatch b;
    if (!pick_cold_dirty(&b)) {  // every dirty page is pinned or not admitted: look again later
      demote_cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return demoter_stop; });
      continue;
    }
    lk.unlock();
    write_clean(b);
    lk.lock();
  }
}

TieredStore::TieredStore(const TieredOptions& opt) : impl_(new Impl(opt)) {}
TieredStore::~TieredStore() {
  try {
    close();
  } catch (...) {
  }
}

void TieredStore::put_reserve(const std::vector<std::string>& keys, const std::vector<uint64_t>& sizes,
                              const std::vector<uint32_t>& depths, std::vector<PutTicket>* out, PutMode mode) {
  Impl& m = *impl_;
  out->assign(keys.size(), PutTicket{});
  std::vector<KeyDigest> digests(keys.size());
  for (size_t i = 0; i < keys.size(); i++) digests[i] = KeyDigest::of(keys[i]);
  Impl::Demotion pending;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    if (m.closed) {
      for (auto& t : *out) t.status = status_code(Status::kClosed);
      return;
    }
    for (size_t i = 0; i < keys.size(); i++) {
      PutTicket& t = (*out)[i];
      t.status = key_code(keys[i]);
      if (t.status != status_code(Status::kOk)) continue;
      if (mode == PutMode::kKeepExisting && m.stored(digests[i], keys[i])) {
        t.status = kAlreadyStored;  // its value stays: nothing to copy
        m.ctr.skipped_existing++;
        continue;
      }
      int64_t s = m.reserve_slot(sizes[i], &pending, false);
      if (s < 0) {
        t.status = static_cast<int32_t>(s);
        continue;
      }
      m.dram->prepare(static_cast<uint32_t>(s), keys[i], digests[i], sizes[i], i < depths.size() ? depths[i] : 0);
      t.offset = m.dram->offset(static_cast<uint32_t>(s));
      t.token = make_token(static_cast<uint32_t>(s), m.dram->slot(static_cast<uint32_t>(s)).gen);
    }
  }
  m.demote(pending);  // before the caller overwrites the victims' slots
}

// Slots published with write-through on: written to NVMe after the mutex is let go (pinned
// meanwhile), under the fence tickets taken when they were published.
struct TieredStore::Impl::WriteThrough {
  std::vector<uint32_t> slots;
  std::vector<uint64_t> tickets;
};

// The committed slot s (kWriting, filled by the caller) becomes the key's value. Caller holds mu.
void TieredStore::Impl::publish_committed(uint32_t s, WriteThrough* wt) {
  dram->publish(s);
  ctr.puts++;
  ctr.put_bytes += dram->slot(s).len;
  if (!opt.write_through || !nvme) return;
  dram->pin(s);
  wt->tickets.push_back(fence.begin_transfer());
  wt->slots.push_back(s);
}

void TieredStore::Impl::write_through(WriteThrough& wt) {
  if (wt.slots.empty()) return;
  std::vector<std::string> keys;
  std::vector<SgList> sg;
  for (uint32_t s : wt.slots) {
    keys.push_back(dram->key_of(s));
    sg.push_back({Segment{dram->data(s), dram->slot(s).len}});
  }
  std::vector<int32_t> res(keys.size());
  nvme->batch_put(keys, sg, res.data());
  {
    std::lock_guard<std::mutex> lk(mu);
    for (size_t i = 0; i < wt.slots.size(); i++) {
      if (res[i] == status_code(Status::kOk)) {
        ctr.written_through++;
        dram->mark_clean(wt.slots[i]);  // still this value: it stayed pinned
      }
      dram->unpin(wt.slots[i]);
    }
    for (uint64_t t : wt.tickets) fence.end_transfer(t);
  }
  settled_cv.notify_all();
}

// Publishes the committed slots. A key with an older copy somewhere (another DRAM entry, a
// transfer in flight, the NVMe tier) is replaced the way a removal removes it (removal_fence.h):
// its old copies are taken out first, so once the put has returned no get can see the old value,
// not after eviction and not after a restart.
void TieredStore::put_commit(const std::vector<uint64_t>& tokens, const std::vector<uint8_t>& ok, int32_t* results) {
  Impl& m = *impl_;
  Impl::WriteThrough wt;
  std::vector<size_t> replacing;  // tokens whose key has an older copy
  {
    std::unique_lock<std::mutex> lk(m.mu);
    for (size_t i = 0; i < tokens.size(); i++) {
      uint32_t s = token_slot(tokens[i]);
      if (!m.dram->valid_slot(s) || m.dram->slot(s).gen != token_gen(tokens[i]) ||
          m.dram->slot(s).state != DramTier::kWriting) {
        results[i] = status_code(Status::kInvalidParams);
        continue;
      }
      DramTier::Slot& slot = m.dram->slot(s);
      if (i < ok.size() && !ok[i]) {
        m.dram->abort(s);
        results[i] = status_code(Status::kIoError);
        continue;
      }
      results[i] = status_code(Status::kOk);
      if (m.stored(slot.digest, m.dram->key_of(s))) {
        m.fence.add(slot.digest);
        m.dram->erase(slot.digest);  // the older DRAM entry; this slot is not indexed yet
        replacing.push_back(i);
        continue;
      }
      m.publish_committed(s, &wt);
    }
    if (!replacing.empty()) m.wait_transfers_in_flight(lk);
  }
  if (!replacing.empty()) m.replace(tokens, replacing, results, &wt);
  m.write_through(wt);
}

// Removes the NVMe copies of the keys of tokens[replacing[j]], then publishes their new values
// (or, if the old copy could not be removed, gives the slot back: the put fails with IO_ERROR).
void TieredStore::Impl::replace(const std::vector<uint64_t>& tokens, const std::vector<size_t>& replacing,
                                int32_t* results, WriteThrough* wt) {
  std::vector<int32_t> removed(replacing.size(), status_code(Status::kNotFound));
  for (size_t j = 0; j < replacing.size() && nvme; j++)
    removed[j] = nvme->remove(dram->key_of(token_slot(tokens[replacing[j]])));
  std::lock_guard<std::mutex> lk(mu);
  for (size_t j = 0; j < replacing.size(); j++) {
    uint32_t s = token_slot(tokens[replacing[j]]);
    fence.drop(dram->slot(s).digest);
    if (removed[j] == status_code(Status::kOk) || removed[j] == status_code(Status::kNotFound)) {
      publish_committed(s, wt);
    } else {
      dram->abort(s);
      results[replacing[j]] = removed[j];
    }
  }
}

void TieredStore::abort_puts(const std::vector<uint64_t>& tokens) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  for (uint64_t t : tokens) {
    uint32_t s = token_slot(t);
    if (impl_->dram->valid_slot(s) && impl_->dram->slot(s).gen == token_gen(t)) impl_->dram->abort(s);
  }
}

// Pins DRAM slot `id` for a reader and fills its ticket. Caller holds m.mu.
static void pin_hit(TieredStore::Impl& m, uint32_t id, GetTicket* t) {
  m.dram->pin(id);
  m.dram->touch(id);
  t->status = m.dram->slot(id).len;
  t->offset = m.dram->offset(id);
  t->token = make_token(id, m.dram->slot(id).gen);
  t->tier = 1;
  m.ctr.dram_hits++;
}

// Pins the DRAM hits among `keys`; returns the indexes of the others in *missing.
static void pin_dram_hits(TieredStore::Impl& m, const std::vector<std::string>& keys,
                          std::vector<GetTicket>* out, std::vector<size_t>* missing) {
  out->assign(keys.size(), GetTicket{});
  std::lock_guard<std::mutex> lk(m.mu);
  if (m.closed) {
    for (auto& t : *out) t.status = status_code(Status::kClosed);
    return;
  }
  for (size_t i = 0; i < keys.size(); i++) {
    GetTicket& t = (*out)[i];
    int32_t st = key_code(keys[i]);
    if (st != status_code(Status::kOk)) {
      t.status = st;
      continue;
    }
    int64_t s = m.dram->find(KeyDigest::of(keys[i]));
    if (s < 0) {
      missing->push_back(i);
      continue;
    }
    pin_hit(m, static_cast<uint32_t>(s), &t);
  }
}

// Promotes keys[missing[j]] from NVMe (pinned) into (*out)[missing[j]]. A key that is on NVMe
// but found no room in DRAM gets status_code(Status::kNoSpace).
static void pin_promoted(TieredStore::Impl& m, const std::vector<std::string>& keys,
                         const std::vector<size_t>& missing_in, std::vector<GetTicket>* out) {
  if (missing_in.empty()) return;
  // Pages that a prefetch (or another get) is promoting right now, or that are on their way to
  // NVMe, are waited for; those that landed in DRAM meanwhile are pinned there.
  std::vector<size_t> missing;
  {
    std::vector<KeyDigest> ds;
    for (size_t i : missing_in) ds.push_back(KeyDigest::of(keys[i]));
    std::unique_lock<std::mutex> lk(m.mu);
    for (const auto& d : ds)
      if (m.demoting.count(d)) m.ctr.reads_waited_for_write++;  // its bytes are on their way to NVMe
    m.wait_settled(lk, ds);
    for (size_t j = 0; j < missing_in.size(); j++) {
      int64_t s = m.dram->find(ds[j]);
      if (s < 0) {
        missing.push_back(missing_in[j]);
        continue;
      }
      pin_hit(m, static_cast<uint32_t>(s), &(*out)[missing_in[j]]);
    }
  }
  if (missing.empty()) return;
  std::vector<std::string> mk;
  for (size_t i : missing) mk.push_back(keys[i]);
  std::vector<GetTicket> pt;
  m.promote(mk, true, &pt);
  for (size_t j = 0; j < missing.size(); j++) {
    (*out)[missing[j]] = pt[j];
    if (pt[j].status >= 0)
      m.ctr.nvme_hits++;
    else if (pt[j].status != status_code(Status::kNoSpace))
      m.ctr.misses++;
  }
}

void TieredStore::get_pin(const std::vector<std::string>& keys, std::vector<GetTicket>* out) {
  std::vector<size_t> missing;
  pin_dram_hits(*impl_, keys, out, &missing);
  impl_->ctr.gets += keys.size();
  // A page on NVMe that found no free DRAM slot keeps status_code(Status::kNoSpace): the client retries it once it
  // has released its other pins.
  pin_promoted(*impl_, keys, missing, out);
}

void TieredStore::get_unpin(const std::vector<uint64_t>& tokens) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  for (uint64_t t : tokens) {
    uint32_t s = token_slot(t);
    if (impl_->dram->valid_slot(s) && impl_->dram->slot(s).gen == token_gen(t)) impl_->dram->unpin(s);
  }
}

// The in-process side of run_put_waves (common/put_waves.h): the caller's own reserve and
// commit, and a copy into the arena.
struct TieredPutOps {
  TieredStore& store;
  const std::vector<std::string>& keys;
  const std::vector<SgList>& values;
  const std::vector<uint32_t>& depths;
  const std::vector<uint64_t>& sizes;
  uint8_t* arena;
  PutMode mode;
  std::vector<std::string> k;
  std::vector<uint64_t> sz;
  std::vector<uint32_t> dp;

  bool reserve(const std::vector<uint32_t>& todo, std::vector<Reservation>* out) {
    k.clear(), sz.clear(), dp.clear();
    for (uint32_t i : todo) {
      k.push_back(keys[i]);
      sz.push_back(sizes[i]);
      dp.push_back(i < depths.size() ? depths[i] : 0);
    }
    store.put_reserve(k, sz, dp, out, mode);
    return true;
  }
  int32_t copy(uint32_t i, const Reservation& r) {
    gather(values[i], arena + r.offset, sizes[i]);
    return status_code(Status::kOk);
  }
  bool commit(const std::vector<uint64_t>& tokens, const std::vector<uint8_t>& oks, const std::vector<uint32_t>&,
              const std::vector<uint32_t>&, std::vector<int32_t>* res) {
    res->assign(tokens.size(), status_code(Status::kOk));
    store.put_commit(tokens, oks, res->data());
    return true;
  }
};

void TieredStore::batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                            const std::vector<uint32_t>& depths, int32_t* results, PutMode mode) {
  std::vector<uint32_t> todo;
  std::vector<uint64_t> sizes(keys.size());
  for (size_t i = 0; i < keys.size(); i++) {
    bool null_ptr = false;
    sizes[i] = sg_bytes(values[i], &null_ptr);
    if (null_ptr)
      results[i] = status_code(Status::kInvalidParams);
    else
      todo.push_back(static_cast<uint32_t>(i));
  }
  TieredPutOps ops{*this, keys, values, depths, sizes, impl_->dram->arena().base(), mode, {}, {}, {}};
  PutWaveScratch scratch;
  run_put_waves(todo, results, ops, scratch);
}

void TieredStore::batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results) {
  Impl& m = *impl_;
  m.ctr.gets += keys.size();
  // Copies pinned values out to the caller and unpins them.
  auto deliver = [&](const std::vector<GetTicket>& t, const std::vector<size_t>& which) {
    std::vector<uint64_t> unpin;
    for (size_t i : which) {
      results[i] = t[i].status;
      if (t[i].status < 0) continue;
      unpin.push_back(t[i].token);
      uint64_t cap = 0;
      bool null_ptr = false;
      for (const Segment& s : buffers[i]) {
        cap += s.len;
        null_ptr |= s.len > 0 && s.ptr == nullptr;
      }
      if (null_ptr) {
        results[i] = status_code(Status::kInvalidParams);
      } else if (cap < static_cast<uint64_t>(t[i].status)) {
        results[i] = status_code(Status::kBufferTooSmall);
      } else {
        scatter(m.dram->arena().base() + t[i].offset, static_cast<uint64_t>(t[i].status), buffers[i]);
        m.ctr.get_bytes += static_cast<uint64_t>(t[i].status);
      }
    }
    if (!unpin.empty()) get_unpin(unpin);
  };
  std::vector<GetTicket> t;
  std::vector<size_t> missing, hits;
  pin_dram_hits(m, keys, &t, &missing);
  std::vector<bool> is_missing(keys.size(), false);
  for (size_t i : missing) is_missing[i] = true;
  for (size_t i = 0; i < keys.size(); i++)
    if (!is_missing[i]) hits.push_back(i);
  deliver(t, hits);  // DRAM hits are released before promotions need room
  if (missing.empty()) return;
  pin_promoted(m, keys, missing, &t);
  deliver(t, missing);
  // Pages on NVMe that found no room in DRAM are read straight into the caller's buffers.
  std::vector<std::string> direct_keys;
  std::vector<SgList> direct_bufs;
  std::vector<size_t> direct_idx;
  for (size_t i : missing)
    if (t[i].status == status_code(Status::kNoSpace)) {
      direct_keys.push_back(keys[i]);
      direct_bufs.push_back(buffers[i]);
      direct_idx.push_back(i);
    }
  if (direct_keys.empty()) return;
  std::vector<int64_t> res(direct_keys.size());
  m.nvme->batch_get(direct_keys, direct_bufs, res.data());
  for (size_t j = 0; j < direct_idx.size(); j++) {
    results[direct_idx[j]] = res[j];
    if (res[j] >= 0) {
      m.ctr.nvme_hits++;
      m.ctr.direct_reads++;
      m.ctr.get_bytes += static_cast<uint64_t>(res[j]);
    } else {
      m.ctr.misses++;
    }
  }
}

void TieredStore::batch_exists(const std::vector<std::string>& keys, int32_t* results) {
  Impl& m = *impl_;
  std::vector<std::string> rest;
  std::vector<size_t> idx;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    for (size_t i = 0; i < keys.size(); i++) {
      int32_t st = key_code(keys[i]);
      if (st != status_code(Status::kOk)) {
        results[i] = st;
        continue;
      }
      KeyDigest d = KeyDigest::of(keys[i]);
      results[i] = m.dram->find(d) >= 0 ? 1 : (m.demoting.count(d) ? 2 : 0);
      if (results[i] == 0 && m.nvme) {
        rest.push_back(keys[i]);
        idx.push_back(i);
      }
    }
  }
  if (rest.empty()) return;
  std::vector<int32_t> r(rest.size());
  m.nvme->batch_exists(rest, r.data());
  for (size_t j = 0; j < idx.size(); j++) results[idx[j]] = r[j] == 1 ? 2 : 0;
}

// Direct reads (tiered_store.h): NVMe pages that are read by the caller, not staged in DRAM.
void TieredStore::locate(const std::vector<std::string>& keys, std::vector<Location>* out) {
  Impl& m = *impl_;
  out->assign(keys.size(), Location{});
  for (size_t i = 0; i < keys.size(); i++) {
    Location& l = (*out)[i];
    {
      std::lock_guard<std::mutex> lk(m.mu);
      if (m.closed || !m.nvme) {
        l.status = status_code(m.closed ? Status::kClosed : Status::kNotFound);
        continue;
      }
      if (m.fence.covers(KeyDigest::of(keys[i]), keys[i])) continue;  // being removed: a miss
    }
    NvmeEngine::ValueLocation v;
    l.status = m.nvme->pin_location(keys[i], &v);
    if (l.status < 0) {
      if (l.status == status_code(Status::kNotFound)) m.ctr.misses++;
      continue;
    }
    l.offset = v.offset, l.checksum = v.checksum, l.token = uint64_t(v.region) + 1;
    m.ctr.nvme_hits++;
    m.ctr.direct_reads++;
    m.ctr.get_bytes += v.len;
  }
}

void TieredStore::release_locations(const std::vector<uint64_t>& tokens) {
  if (!impl_->nvme) return;
  for (uint64_t t : tokens)
    if (t > 0 && t <= UINT32_MAX) impl_->nvme->unpin_location(static_cast<uint32_t>(t - 1));
}

int TieredStore::data_fd() const { return impl_->nvme ? impl_->nvme->read_fd() : -1; }

int64_t TieredStore::value_size(const std::string& key) {
  Impl& m = *impl_;
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  const KeyDigest d = KeyDigest::of(key);
  {
    std::unique_lock<std::mutex> lk(m.mu);
    if (m.closed) return status_code(Status::kClosed);
    m.wait_settled(lk, {d});  // a page on its way to NVMe is sized once it is there
    int64_t s = m.dram->find(d);
    if (s >= 0) return m.dram->slot(static_cast<uint32_t>(s)).len;
  }
  return m.nvme ? m.nvme->value_size(key) : status_code(Status::kNotFound);
}

int32_t TieredStore::prefetch(const std::vector<std::string>& keys, uint32_t step) {
  Impl& m = *impl_;
  if (!m.nvme) return 0;
  std::vector<std::string> todo;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    for (const auto& k : keys)
      if (key_code(k) == status_code(Status::kOk) && m.dram->find(KeyDigest::of(k)) < 0) todo.push_back(k);
  }
  if (todo.empty()) return 0;
  std::vector<int32_t> on(todo.size());
  m.nvme->batch_exists(todo, on.data());
  std::vector<std::string> q;
  for (size_t i = 0; i < todo.size(); i++)
    if (on[i] == 1) q.push_back(std::move(todo[i]));
  if (q.empty()) return 0;
  int32_t n = static_cast<int32_t>(q.size());
  {
    std::lock_guard<std::mutex> lk(m.pf_mu);
    if (m.pf_queue.size() >= 64) return 0;  // saturated: the get will read NVMe itself
    m.pf_queue.push_back(Impl::PrefetchJob{std::move(q), step ? step : kDefaultPrefetchStep});
  }
  m.pf_cv.notify_one();
  m.ctr.prefetch_queued += n;
  return n;
}

// A removal (removal_fence.h): fence the key, take it out of DRAM, wait for the NVMe writes in
// flight (one may carry the page), remove it from NVMe, lift the fence.
int32_t TieredStore::remove(const std::string& key) {
  Impl& m = *impl_;
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  const KeyDigest d = KeyDigest::of(key);
  bool found;
  {
    std::unique_lock<std::mutex> lk(m.mu);
    m.fence.add(d);
    found = m.dram->erase(d);
    m.wait_transfers_in_flight(lk);
  }
  const int32_t not_found = status_code(Status::kNotFound);
  int32_t rc = m.nvme ? m.nvme->remove(key) : not_found;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.fence.drop(d);
  }
  if (rc == not_found) return found ? status_code(Status::kOk) : not_found;
  return rc;  // 0, or the NVMe tier's error (the removal may not survive a restart)
}

// remove() for every key that starts with prefix (a tenant's namespace): DRAM matches by the keys
// its slots keep, NVMe by the keys in its record headers. Returns how many keys were removed.
int64_t TieredStore::remove_prefix(const std::string& prefix) {
  Impl& m = *impl_;
  if (prefix.empty() || prefix.size() > kMaxKeyLen) return status_code(Status::kInvalidParams);
  std::vector<KeyDigest> removed;
  {
    std::unique_lock<std::mutex> lk(m.mu);
    if (m.closed) return status_code(Status::kClosed);
    if (!m.dram->keeps_keys()) return status_code(Status::kUnsupported);
    m.fence.add_prefix(prefix);
    m.dram->erase_prefix(prefix, &removed);
    m.wait_transfers_in_flight(lk);
  }
  int64_t rc = m.nvme ? m.nvme->remove_prefix(prefix, &removed) : 0;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.fence.drop_prefix(prefix);
  }
  if (rc < 0) return rc;
  std::sort(removed.begin(), removed.end(), [](const KeyDigest& a, const KeyDigest& b) {
    return a.lo != b.lo ? a.lo < b.lo : a.hi < b.hi;
  });
  return std::unique(removed.begin(), removed.end()) - removed.begin();  // a page in both tiers counts once
}

// remove() for every key; queued prefetches are dropped too.
int32_t TieredStore::remove_all() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.pf_mu);
    m.pf_queue.clear();
  }
  {
    std::unique_lock<std::mutex> lk(m.mu);
    m.fence.add_all();
    m.dram->clear();
    m.wait_transfers_in_flight(lk);
  }
  int32_t rc = m.nvme ? m.nvme->remove_all() : status_code(Status::kOk);
  std::lock_guard<std::mutex> lk(m.mu);
  m.fence.drop_all();
  return rc;
}

void TieredStore::close() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    if (m.closed) return;
    m.closed = true;
  }
  m.stop_prefetcher();
  m.stop_demoter();
  if (m.nvme) m.nvme->close();
}

int TieredStore::arena_fd() const { return impl_->dram->arena().fd(); }
uint64_t TieredStore::arena_size() const { return impl_->dram->arena().size(); }
uint8_t* TieredStore::arena_base() const { return impl_->dram->arena().base(); }

std::vector<Note> TieredStore::take_notes() {
  std::vector<Note> out;
  if (impl_->nvme)
    for (Note& n : impl_->nvme->take_notes()) out.push_back(Note{n.level, "nvme: " + n.line});
  return out;
}

void TieredStore::inject_nvme_faults(FaultInjector::Kind k, int times, int err, int ms) {
  if (impl_->nvme) impl_->nvme->inject_faults(k, times, err, ms);
}

TieredStats TieredStore::stats() {
  Impl& m = *impl_;
  TieredStats st;
  DramTier::Stats d;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    d = m.dram->stats();
    st.tiering.clean_bytes = m.dram->clean_bytes();
  }
  DramSection& ds = st.dram;
  ds.capacity = m.dram->arena().size(), ds.page_kind = m.dram->arena().page_kind(), ds.slab_size = m.opt.slab_size;
  ds.eviction = m.opt.eviction, ds.entries = d.entries, ds.value_bytes = d.value_bytes, ds.slab_pages = d.slab_pages;
  ds.slab_pages_free = d.slab_pages_free, ds.size_classes = d.size_classes, ds.evictions = d.evictions;
  ds.dropped_for_rebalance = d.dropped_for_rebalance, ds.hits = m.ctr.dram_hits;
  ds.metadata_bytes = d.metadata_bytes;
  const Impl::Counters& c = m.ctr;
  TieringSection& t = st.tiering;
  t.admission = m.opt.admission, t.write_through = m.opt.write_through;
  t.puts = c.puts, t.put_bytes = c.put_bytes, t.skipped_existing = c.skipped_existing, t.gets = c.gets;
  t.dram_hits = c.dram_hits, t.nvme_hits = c.nvme_hits, t.misses = c.misses, t.get_bytes = c.get_bytes;
  t.demoted = c.demoted, t.demote_failures = c.demote_failures, t.not_admitted = c.not_admitted;
  t.promoted = c.promoted, t.written_through = c.written_through, t.prefetch_queued = c.prefetch_queued;
  t.prefetch_done = c.prefetch_done;
  t.direct_reads = c.direct_reads;
  t.reads_waited_for_write = c.reads_waited_for_write, t.demoter_batches = c.demoter_batches;
  t.demoter_pages = c.demoter_pages, t.demoter_backoffs = c.demoter_backoffs, t.demoter_writing = c.demoter_writing;
  t.clean_target_bytes = m.clean_target;
  st.has_nvme = m.nvme != nullptr;
  if (m.nvme) st.nvme = m.nvme->stats();
  return st;
}

std::string TieredStore::stats_json() { return to_json(stats()); }

}  // namespace mch
