// PoolClient's reads: batch_get, get_value, batch_exists, prefetch (pool_client.h has the flow).
#include <algorithm>

#include "cluster/pool_call.h"
#include "cluster/pool_client.h"
#include "common/keys.h"
#include "common/status.h"

namespace mch::cluster {

using namespace proto;

namespace {

constexpr int64_t kNotFound = status_code(Status::kNotFound);

// Found, or a problem of the caller's buffers: the answer. Anything else: try the next candidate.
bool read_final(int64_t r) {
  return r >= 0 || r == status_code(Status::kBufferTooSmall) || r == status_code(Status::kInvalidParams);
}

template <class T>
std::vector<T> pick(const std::vector<T>& all, const std::vector<uint32_t>& idx) {
  std::vector<T> out;
  out.reserve(idx.size());
  for (uint32_t i : idx) out.push_back(all[i]);
  return out;
}

}  // namespace

// Routes each key still to read to its next available candidate (one request per member; a
// member's share beyond kPeerMaxKeys waits for the next round). false: nothing to send.
bool PoolClient::assign_reads(Call& c, Plan& p, Round& r) {
  bool any = false;
  for (size_t i = 0; i < p.todo.size(); i++) {
    if (!p.todo[i]) continue;
    while (p.pos[i] < p.cands[i].size() && !available(c, p.cands[i][p.pos[i]])) p.pos[i]++;
    if (p.pos[i] == p.cands[i].size()) {
      p.todo[i] = 0;  // every candidate missed or is down: a miss
      continue;
    }
    std::vector<uint32_t>& g = r.groups[p.cands[i][p.pos[i]]];
    if (g.size() >= kPeerMaxKeys) continue;
    g.push_back(static_cast<uint32_t>(i));
    any = true;
  }
  return any;
}

void PoolClient::batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results) {
  if (keys.empty() || refuse_closed(results, keys.size())) return;
  ctr_.gets++;
  Call c = begin_call();
  Plan p(keys.size());
  std::vector<uint64_t> caps(keys.size(), 0);
  auto load = [&c, this](uint16_t t) -> int64_t { return c.is_local(t) ? 0 : peer_of(c, t)->in_flight.load(); };
  Clock::time_point now = Clock::now();
  for (size_t i = 0; i < keys.size(); i++) {
    int32_t st = i < buffers.size() ? key_code(keys[i]) : status_code(Status::kInvalidParams);
    bool null_ptr = false;
    if (st == status_code(Status::kOk)) caps[i] = sg_bytes(buffers[i], &null_ptr);
    if (null_ptr) st = status_code(Status::kInvalidParams);
    results[i] = st == status_code(Status::kOk) ? kNotFound : st;
    if (st != status_code(Status::kOk)) continue;
    p.current[i] = c.view->read_candidates(keys[i], opt_.replicas, opt_.spill_depth, now, load, &p.cands[i]);
    p.todo[i] = 1;
  }
  while (p.any_todo() && Clock::now() < c.deadline) {
    Round r(c.view->targets().size());
    if (!assign_reads(c, p, r)) break;
    ctr_.rounds++;
    get_round(c, r, keys, buffers, caps, p, results);
  }
  for (size_t i = 0; i < keys.size(); i++) ctr_.keys_missed += results[i] == kNotFound;
}

// One round of gets: the remote requests go out, the local node's share is copied meanwhile,
// then the replies land straight in the caller's buffers. Keys answered move out of p.todo;
// the others advance to their next candidate.
void PoolClient::get_round(Call& c, Round& r, const std::vector<std::string>& keys,
                           const std::vector<SgList>& buffers, const std::vector<uint64_t>& caps, Plan& p,
                           int64_t* results) {
  auto answer = [&](uint32_t i, int64_t v) {
    if (!read_final(v)) {
      p.pos[i]++;
      return;
    }
    results[i] = v;
    p.todo[i] = 0;
    if (v < 0) return;
    ctr_.keys_found++;
    ctr_.replica_reads += p.pos[i] > 0;
    ctr_.grace_hits += p.pos[i] >= p.current[i];
  };
  build_remote(
      c, r, buffers, caps,
      [&](Exchange& e, const std::vector<uint32_t>& g) {
        e.build_get(keys, g, caps, [&buffers, &g](uint32_t k, uint64_t) { return &buffers[g[k]]; });
      },
      [&](Exchange& e, const std::vector<uint32_t>& g, const RdmaDescs& d, std::shared_ptr<ClientLane> l,
          std::function<void(Exchange&)> downgrade) { e.build_get_rdma(keys, g, d, std::move(l), std::move(downgrade)); });
  start_remote(c, r);
  for (size_t t = 0; t < r.groups.size(); t++) {
    const std::vector<uint32_t>& g = r.groups[t];
    if (g.empty() || !c.is_local(static_cast<uint16_t>(t))) continue;
    std::vector<int64_t> res(g.size());
    c.local->batch_get(pick(keys, g), pick(buffers, g), res.data());
    ctr_.local_requests++;
    for (size_t k = 0; k < g.size(); k++) {
      ctr_.keys_found_local += res[k] >= 0;
      answer(g[k], res[k]);
    }
  }
  finish_remote(c, r);
  for (size_t t = 0; t < r.ex.size(); t++) {
    const std::vector<uint32_t>& g = r.groups[t];
    if (g.empty() || c.is_local(static_cast<uint16_t>(t))) continue;
    if (!r.ex[t] || !r.ex[t]->ok()) {
      for (uint32_t i : g) p.pos[i]++;  // the member failed: the next replica
      continue;
    }
    const std::vector<int64_t>& st = r.ex[t]->get_status();
    for (size_t k = 0; k < g.size(); k++) {
      uint32_t i = g[k];
      int64_t v = st[k];
      if (v >= 0 && static_cast<uint64_t>(v) > caps[i]) v = status_code(Status::kBufferTooSmall);
      answer(i, v == status_code(Status::kNoSpace) ? kNotFound : v);
    }
  }
  give_back_links(c, r);
}

// ---- single keys ----------------------------------------------------------------------------

int64_t PoolClient::get_value(const std::string& key, const std::function<uint8_t*(size_t)>& alloc) {
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk) || refuse_closed(&st, 1)) return st;
  Call c = begin_call();
  std::vector<uint16_t> cands;
  c.view->read_candidates(key, opt_.replicas, opt_.spill_depth, Clock::now(), [](uint16_t) { return int64_t{0}; },
                          &cands);
  for (uint16_t t : cands) {
    if (Clock::now() >= c.deadline) break;
    if (!available(c, t)) continue;
    int64_t v = c.is_local(t) ? c.local->get_value(key, alloc) : get_value_from(c, t, key, alloc);
    if (read_final(v)) return v;
  }
  return kNotFound;
}

// One PEER_GET of one key; alloc(len) gives the destination (no alloc: the size only).
int64_t PoolClient::get_value_from(Call& c, uint16_t t, const std::string& key,
                                   const std::function<uint8_t*(size_t)>& alloc) {
  Round r(c.view->targets().size());
  std::vector<std::string> one{key};
  std::vector<uint32_t> idx{0};
  std::vector<uint64_t> caps{alloc ? kPeerMaxValue : 0};
  SgList dest;
  bool alloc_failed = false;
  r.ex[t] = std::make_unique<Exchange>();
  r.ex[t]->build_get(one, idx, caps, [&](uint32_t, uint64_t len) -> const SgList* {
    uint8_t* ptr = alloc(static_cast<size_t>(len));
    alloc_failed = ptr == nullptr;
    dest.assign(1, Segment{ptr, len});
    return ptr ? &dest : nullptr;
  });
  start_remote(c, r);
  finish_remote(c, r);
  int64_t v = r.ex[t] && r.ex[t]->ok() ? r.ex[t]->get_status()[0] : kNotFound;
  give_back_links(c, r);
  if (v >= 0 && alloc_failed) return status_code(Status::kInvalidParams);
  return v;
}

int64_t PoolClient::value_size(const std::string& key) { return get_value(key, nullptr); }

// ---- key lists: exists, prefetch -----------------------------------------------------------

// One request per member in r.groups with `op` (EXISTS, PREFETCH, REMOVE) over its keys; the
// local node's share through its client. per_target[t]: the member's answers, in group order
// (PREFETCH: one number); empty when the member failed.
void PoolClient::keys_round(Call& c, Round& r, uint16_t op, const std::vector<std::string>& keys,
                            std::vector<std::vector<int32_t>>* per_target, uint32_t step) {
  per_target->assign(r.groups.size(), {});
  for (size_t t = 0; t < r.groups.size(); t++) {
    if (r.groups[t].empty() || c.is_local(static_cast<uint16_t>(t))) continue;
    r.ex[t] = std::make_unique<Exchange>();
    r.ex[t]->build_keys(op, keys, r.groups[t], step);
  }
  start_remote(c, r);
  for (size_t t = 0; t < r.groups.size(); t++) {
    const std::vector<uint32_t>& g = r.groups[t];
    if (g.empty() || !c.is_local(static_cast<uint16_t>(t))) continue;
    std::vector<int32_t>& out = (*per_target)[t];
    std::vector<std::string> sub = pick(keys, g);
    ctr_.local_requests++;
    if (op == kExists) {
      out.resize(g.size());
      c.local->batch_exists(sub, out.data());
    } else if (op == kPrefetch) {
      out.assign(1, c.local->prefetch(sub, step));
    } else {
      for (const std::string& k : sub) out.push_back(c.local->remove(k));
    }
  }
  finish_remote(c, r);
  for (size_t t = 0; t < r.ex.size(); t++) {
    if (!r.ex[t] || !r.ex[t]->ok()) continue;
    Reader rd = r.ex[t]->reply();
    std::vector<int32_t>& out = (*per_target)[t];
    uint32_t n = op == kPrefetch ? 1 : rd.u32();
    if (n != (op == kPrefetch ? 1 : r.groups[t].size())) continue;
    for (uint32_t k = 0; k < n; k++) out.push_back(rd.i32());
    if (!rd.done()) out.clear();
  }
  give_back_links(c, r);
}

void PoolClient::batch_exists(const std::vector<std::string>& keys, int32_t* results) {
  if (keys.empty() || refuse_closed(results, keys.size())) return;
  ctr_.exists++;
  Call c = begin_call();
  Plan p(keys.size());
  Clock::time_point now = Clock::now();
  for (size_t i = 0; i < keys.size(); i++) {
    int32_t st = key_code(keys[i]);
    results[i] = st == status_code(Status::kOk) ? 0 : st;
    if (st != status_code(Status::kOk)) continue;
    c.view->read_candidates(keys[i], opt_.replicas, opt_.spill_depth, now, [](uint16_t) { return int64_t{0}; },
                            &p.cands[i]);
    p.todo[i] = 1;
  }
  // Every available candidate of a key is asked at once (one round; more only for batches over
  // kPeerMaxKeys per member): present anywhere is present.
  while (p.any_todo() && Clock::now() < c.deadline) {
    Round r(c.view->targets().size());
    bool any = false;
    for (size_t i = 0; i < keys.size(); i++) {
      for (; p.todo[i] && p.pos[i] < p.cands[i].size(); p.pos[i]++) {
        uint16_t t = p.cands[i][p.pos[i]];
        if (!available(c, t)) continue;
        if (r.groups[t].size() >= kPeerMaxKeys) break;
        r.groups[t].push_back(static_cast<uint32_t>(i));
        any = true;
      }
      if (p.pos[i] == p.cands[i].size()) p.todo[i] = 0;
    }
    if (!any) break;
    ctr_.rounds++;
    std::vector<std::vector<int32_t>> per;
    keys_round(c, r, kExists, keys, &per);
    for (size_t t = 0; t < per.size(); t++)
      for (size_t k = 0; k < per[t].size(); k++) note_holder(per[t][k], c.is_local(static_cast<uint16_t>(t)),
                                                             &results[r.groups[t][k]]);
  }
}

// A member's EXISTS answer (1 DRAM, 2 NVMe only) folded into a key's result: the cheapest place
// that holds it, a remote member's tier shifted past the local ones (kRemoteTierOffset).
void PoolClient::note_holder(int32_t answer, bool local, int32_t* result) {
  if (answer <= 0) return;
  int32_t code = local ? answer : answer + kRemoteTierOffset;
  if (*result <= 0 || code < *result) *result = code;
}

int32_t PoolClient::prefetch(const std::vector<std::string>& keys, uint32_t step) {
  if (keys.empty() || closed_.load()) return 0;
  Call c = begin_call();
  Plan p(keys.size());
  Round r(c.view->targets().size());
  Clock::time_point now = Clock::now();
  for (size_t i = 0; i < keys.size(); i++) {
    if (key_code(keys[i]) != status_code(Status::kOk)) continue;
    c.view->read_candidates(keys[i], opt_.replicas, opt_.spill_depth, now, [](uint16_t) { return int64_t{0}; },
                            &p.cands[i]);
    for (uint16_t t : p.cands[i]) {
      if (!available(c, t)) continue;
      if (r.groups[t].size() < kPeerMaxKeys) r.groups[t].push_back(static_cast<uint32_t>(i));
      break;
    }
  }
  std::vector<std::vector<int32_t>> per;
  keys_round(c, r, kPrefetch, keys, &per, step);
  int32_t queued = 0;
  for (const auto& v : per)
    if (!v.empty()) queued += v[0];
  return queued;
}

}  // namespace mch::cluster
