// PoolClient's writes: batch_put (replicas, quorum, spill), remove, remove_all (pool_client.h).
#include <algorithm>

#include "cluster/pool_call.h"
#include "cluster/pool_client.h"
#include "common/keys.h"
#include "common/status.h"

namespace mch::cluster {

using namespace proto;

namespace {

constexpr int32_t kOk = status_code(Status::kOk);
constexpr int32_t kUnavailable = status_code(Status::kNodeUnavailable);

// A refusal worth sending the key to the next candidate for (the holder is full, down or
// failing); anything else (a bad key or size) would fail the same everywhere.
bool spillable(int32_t code) {
  return code == status_code(Status::kNoSpace) || code == kUnavailable || code == status_code(Status::kIoError) ||
         code == status_code(Status::kClosed);
}

template <class T>
std::vector<T> pick(const std::vector<T>& all, const std::vector<uint32_t>& idx) {
  std::vector<T> out;
  out.reserve(idx.size());
  for (uint32_t i : idx) out.push_back(i < all.size() ? all[i] : T{});
  return out;
}

}  // namespace

// Sends each key to as many next available candidates as it still lacks holders (a member's
// share beyond kPeerMaxKeys or kPeerMaxPayload waits for the next round). false: nothing to send.
bool PoolClient::assign_writes(Call& c, Plan& p, Round& r, const std::vector<uint64_t>& sizes) {
  bool any = false;
  for (size_t i = 0; i < p.todo.size(); i++) {
    if (!p.todo[i]) continue;
    p.sent_to[i].clear();
    uint32_t lacking = p.want[i] - p.acks[i];
    while (lacking > 0 && p.pos[i] < p.cands[i].size()) {
      uint16_t t = p.cands[i][p.pos[i]];
      if (!available(c, t)) {
        p.pos[i]++;
        continue;
      }
      if (r.groups[t].size() >= kPeerMaxKeys || r.bytes[t] + sizes[i] > kPeerMaxPayload) break;
      r.groups[t].push_back(static_cast<uint32_t>(i));
      r.bytes[t] += sizes[i];
      p.sent_to[i].push_back(t);
      ctr_.spilled_writes += p.pos[i] >= opt_.replicas;
      p.pos[i]++;
      lacking--;
      any = true;
    }
    if (p.sent_to[i].empty() && p.pos[i] == p.cands[i].size()) p.todo[i] = 0;  // no candidate left
  }
  return any;
}

// Checks each key and its value and decides its candidates and how many holders it needs
// (results[i] is set for the keys refused here).
void PoolClient::plan_writes(Call& c, Plan& p, const std::vector<std::string>& keys, const std::vector<SgList>& values,
                             std::vector<uint64_t>* sizes, int32_t* results) {
  for (size_t i = 0; i < keys.size(); i++) {
    int32_t st = i < values.size() ? key_code(keys[i]) : status_code(Status::kInvalidParams);
    bool null_ptr = false;
    if (st == kOk) (*sizes)[i] = sg_bytes(values[i], &null_ptr);
    if (null_ptr || (st == kOk && (*sizes)[i] > kPeerMaxValue)) st = status_code(Status::kInvalidParams);
    results[i] = st;
    if (st != kOk) continue;
    c.view->write_candidates(keys[i], opt_.replicas, opt_.spill_depth, &p.cands[i]);
    uint32_t avail = 0;
    for (uint16_t t : p.cands[i]) avail += available(c, t);
    p.want[i] = std::min(opt_.replicas, avail);
    p.need[i] = opt_.write_quorum ? std::min(opt_.write_quorum, p.want[i]) : p.want[i];
    p.last_err[i] = kUnavailable;
    p.todo[i] = p.want[i] > 0;
    if (!p.todo[i]) results[i] = kUnavailable;  // no live holder at all
  }
}

// Books one round's answers: acknowledgements, and refusals (a spillable one sends the key to
// its next candidate in the next round; any other ends it: every member would repeat it).
void PoolClient::book_writes(const Round& r, const std::vector<std::vector<int32_t>>& per, Plan& p) {
  for (size_t t = 0; t < per.size(); t++) {
    for (size_t k = 0; k < r.groups[t].size(); k++) {
      uint32_t i = r.groups[t][k];
      int32_t v = per[t].empty() ? kUnavailable : per[t][k];
      if (v == kOk) {
        p.acks[i]++;
        continue;
      }
      p.last_err[i] = v;
      if (spillable(v)) continue;
      p.refused[i] = 1;
      p.todo[i] = 0;
    }
  }
  for (size_t i = 0; i < p.todo.size(); i++)
    if (p.todo[i] && p.acks[i] >= p.want[i]) p.todo[i] = 0;
}

void PoolClient::batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                           const std::vector<uint32_t>& depths, int32_t* results, PutMode mode) {
  if (keys.empty() || refuse_closed(results, keys.size())) return;
  if (mode == PutMode::kKeepExisting) return put_absent(keys, values, depths, results);
  ctr_.puts++;
  Call c = begin_call();
  Plan p(keys.size());
  std::vector<uint64_t> sizes(keys.size(), 0);
  plan_writes(c, p, keys, values, &sizes, results);
  while (p.any_todo() && Clock::now() < c.deadline) {
    Round r(c.view->targets().size());
    if (!assign_writes(c, p, r, sizes)) break;
    ctr_.rounds++;
    std::vector<std::vector<int32_t>> per;
    put_round(c, r, keys, values, depths, sizes, &per);
    book_writes(r, per, p);
  }
  for (size_t i = 0; i < keys.size(); i++) {
    if (results[i] != kOk) continue;
    bool ok = p.acks[i] >= p.need[i] && !p.refused[i];
    results[i] = ok ? kOk : p.last_err[i];
    ctr_.keys_put += ok;
    ctr_.quorum_failures += !ok && p.acks[i] > 0;
  }
}

// kKeepExisting across the pool: an exists round, then a put of the keys no holder has.
void PoolClient::put_absent(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                            const std::vector<uint32_t>& depths, int32_t* results) {
  std::vector<int32_t> have(keys.size());
  batch_exists(keys, have.data());
  std::vector<std::string> k;
  std::vector<SgList> v;
  std::vector<uint32_t> d;
  std::vector<size_t> which;
  for (size_t i = 0; i < keys.size(); i++) {
    results[i] = have[i] < 0 ? have[i] : status_code(Status::kOk);
    if (have[i] != 0) continue;
    k.push_back(keys[i]), v.push_back(i < values.size() ? values[i] : SgList{});
    d.push_back(i < depths.size() ? depths[i] : 0), which.push_back(i);
  }
  std::vector<int32_t> res(k.size());
  batch_put(k, v, d, res.data());
  for (size_t j = 0; j < which.size(); j++) results[which[j]] = res[j];
}

// One round of puts: the remote requests go out (frame, then the value bytes from the caller's
// buffers), the local node's share is copied into its arena meanwhile. per_target[t]: the
// member's results in group order; empty when it failed.
void PoolClient::put_round(Call& c, Round& r, const std::vector<std::string>& keys, const std::vector<SgList>& values,
                           const std::vector<uint32_t>& depths, const std::vector<uint64_t>& sizes,
                           std::vector<std::vector<int32_t>>* per_target) {
  per_target->assign(r.groups.size(), {});
  build_remote(
      c, r, values, sizes,
      [&](Exchange& e, const std::vector<uint32_t>& g) { e.build_put(keys, g, sizes, depths, values); },
      [&](Exchange& e, const std::vector<uint32_t>& g, const RdmaDescs& d, std::shared_ptr<ClientLane> l,
          std::function<void(Exchange&)> downgrade) {
        e.build_put_rdma(keys, g, sizes, depths, d, std::move(l), std::move(downgrade));
      });
  start_remote(c, r);
  for (size_t t = 0; t < r.groups.size(); t++) {
    const std::vector<uint32_t>& g = r.groups[t];
    if (g.empty() || !c.is_local(static_cast<uint16_t>(t))) continue;
    std::vector<int32_t>& out = (*per_target)[t];
    out.resize(g.size());
    c.local->batch_put(pick(keys, g), pick(values, g), pick(depths, g), out.data());
    ctr_.local_requests++;
  }
  finish_remote(c, r);
  for (size_t t = 0; t < r.ex.size(); t++) {
    if (!r.ex[t] || !r.ex[t]->ok()) continue;
    Reader rd = r.ex[t]->reply();
    rd.u64();  // epoch
    if (rd.u32() != r.groups[t].size()) continue;
    std::vector<int32_t>& out = (*per_target)[t];
    for (size_t k = 0; k < r.groups[t].size(); k++) out.push_back(rd.i32());
    if (!rd.done()) out.clear();
  }
  give_back_links(c, r);
}

// ---- removal --------------------------------------------------------------------------------

int32_t PoolClient::remove(const std::string& key) {
  int32_t st = key_code(key);
  if (st != kOk || refuse_closed(&st, 1)) return st;
  Call c = begin_call();
  std::vector<uint16_t> cands;
  c.view->read_candidates(key, opt_.replicas, opt_.spill_depth, Clock::now(), [](uint16_t) { return int64_t{0}; },
                          &cands);
  Round r(c.view->targets().size());
  for (uint16_t t : cands)
    if (available(c, t)) r.groups[t].push_back(0);
  std::vector<std::string> one{key};
  std::vector<std::vector<int32_t>> per;
  keys_round(c, r, kRemove, one, &per);
  int32_t rc = status_code(Status::kNotFound);
  for (const auto& v : per)
    if (!v.empty() && v[0] == kOk) rc = kOk;
  return rc;
}

// Every member of the view removes everything (SGLang's clear() flushes the whole pool).
int32_t PoolClient::remove_all() {
  int32_t rc = kOk;
  if (refuse_closed(&rc, 1)) return rc;
  Call c = begin_call();
  Round r(c.view->targets().size());
  for (size_t t = 0; t < r.ex.size(); t++) {
    if (c.is_local(static_cast<uint16_t>(t)) || !available(c, static_cast<uint16_t>(t))) continue;
    r.ex[t] = std::make_unique<Exchange>();
    r.ex[t]->build_empty(kRemoveAll);
  }
  start_remote(c, r);
  if (c.local) rc = c.local->remove_all();
  finish_remote(c, r);
  for (size_t t = 0; t < r.ex.size(); t++) {
    if (!r.ex[t]) continue;
    Reader rd = r.ex[t]->reply();
    int32_t v = r.ex[t]->ok() ? rd.i32() : kUnavailable;
    if (rc == kOk) rc = v;
  }
  give_back_links(c, r);
  return rc;
}

}  // namespace mch::cluster
