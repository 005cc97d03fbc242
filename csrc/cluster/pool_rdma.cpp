// PoolClient's RDMA steps (pool_client.h, rdma_client.h): lanes for a round, their connection
// exchanges, descriptors of a member's share, and putting a lane in error after a bad request.
#include <algorithm>
#include <functional>

#include "cluster/pool_call.h"
#include "cluster/pool_client.h"

namespace mch::cluster {

using namespace proto;

namespace {

std::string member_key(const MemberInfo& m) { return m.id + "@" + m.host + ":" + std::to_string(m.port); }

}  // namespace

std::vector<std::shared_ptr<ClientLane>> PoolClient::rdma_lanes(Call& c, const Round& r) {
  std::vector<std::shared_ptr<ClientLane>> out(r.groups.size()), pending(r.groups.size());
  if (!rdma_) return out;
  Round cr(r.groups.size());  // the RDMA_CONNECT exchanges
  bool any = false;
  for (size_t t = 0; t < r.groups.size(); t++) {
    if (r.groups[t].empty() || c.is_local(static_cast<uint16_t>(t))) continue;
    out[t] = rdma_->pick(member_key(c.view->targets()[t].member), &pending[t]);
    if (!pending[t]) continue;
    RdmaConnect req;
    std::string err;
    if (!rdma_->connect_request(*pending[t], &req, &err)) {
      rdma_->connect_failed(*pending[t], 0, err);
      pending[t].reset();
      continue;
    }
    cr.ex[t] = std::make_unique<Exchange>();
    cr.ex[t]->build_rdma_connect(req);
    any = true;
  }
  if (any) connect_lanes(c, cr, pending, &out);
  return out;
}

// Runs the round's RDMA_CONNECT exchanges; a lane that connected goes into (*out)[t].
void PoolClient::connect_lanes(Call& c, Round& cr, const std::vector<std::shared_ptr<ClientLane>>& pending,
                               std::vector<std::shared_ptr<ClientLane>>* out) {
  start_remote(c, cr);
  std::vector<Exchange*> live;
  for (auto& e : cr.ex)
    if (e) live.push_back(e.get());
  run_exchanges(live, std::min(c.deadline, Clock::now() + std::chrono::milliseconds(opt_.connect_timeout_ms)));
  for (size_t t = 0; t < cr.ex.size(); t++) {
    if (!pending[t]) continue;
    Exchange* e = cr.ex[t].get();
    if (e) peer_of(c, static_cast<uint16_t>(t))->in_flight--;  // not booked: a member without RDMA is not down
    RdmaConnectReply rep;
    Reader rd = e && e->ok() ? e->reply() : Reader();
    if (e && e->ok() && decode_rdma_connect_reply(rd, &rep)) {
      if (rdma_->connected(*pending[t], rep)) (*out)[t] = pending[t];
      continue;
    }
    rdma_->connect_failed(*pending[t], e ? e->error_code() : 0, e ? e->message() : "no connection to the member");
  }
  give_back_links(c, cr);
}

// The remote exchanges of a round: over the target's lane when every buffer of its share is
// registered (rdma_build, which keeps inline_build for the case the node refuses the lane),
// else inline.
void PoolClient::build_remote(Call& c, Round& r, const std::vector<SgList>& bufs, const std::vector<uint64_t>& lens,
                              const InlineBuild& inline_build, const RdmaBuild& rdma_build) {
  std::vector<std::shared_ptr<ClientLane>> lanes = rdma_lanes(c, r);
  RdmaDescs d;
  for (size_t t = 0; t < r.groups.size(); t++) {
    if (r.groups[t].empty() || c.is_local(static_cast<uint16_t>(t))) continue;
    const std::vector<uint32_t>& g = r.groups[t];
    r.ex[t] = std::make_unique<Exchange>();
    bool rdma = lanes[t] && describe_group(*lanes[t], g, bufs, lens, &d);
    if (rdma)
      rdma_build(*r.ex[t], g, d, lanes[t], [inline_build, &g](Exchange& e) { inline_build(e, g); });  // a copy: it runs after this returns
    else
      inline_build(*r.ex[t], g);
    if (rdma_) rdma_->count_request(rdma);
  }
}

bool PoolClient::describe_group(const ClientLane& l, const std::vector<uint32_t>& g, const std::vector<SgList>& bufs,
                                const std::vector<uint64_t>& lens, RdmaDescs* d) {
  d->clear();
  rdma_->fill_head(l, d);
  for (uint32_t i : g) {
    if (rdma_->describe(l, bufs[i], lens[i], d)) continue;
    rdma_->count_unregistered();
    return false;
  }
  return true;
}

bool PoolClient::settle_lane(Exchange& e) {
  if (!e.lane() || !e.finished() || (e.ok() && !e.lane_down())) return false;
  rdma_->lane_failed(*e.lane(), e.ok() ? "the node's queue pair failed" : e.message());
  return !e.ok() && (e.error_code() == kErrRdmaLane || e.error_code() == kErrDataPath);
}

}  // namespace mch::cluster
