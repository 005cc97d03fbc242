// PeerRdma: see peer_rdma.h.
#include "node/peer_rdma.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/error.h"

namespace mch {

using namespace proto;
using rdma::LinkLayer;
using rdma::QpEndpoint;

namespace {

int64_t now_ns() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

bool same_endpoint(const RdmaEndpoint& a, const RdmaEndpoint& b) {
  return a.qpn == b.qpn && a.psn == b.psn && memcmp(a.gid, b.gid, 16) == 0 && a.lid == b.lid;
}

}  // namespace

QpEndpoint to_qp_endpoint(const RdmaEndpoint& e) {
  QpEndpoint q;
  q.qpn = e.qpn;
  q.psn = e.psn;
  memcpy(q.gid.raw, e.gid, 16);
  q.lid = e.lid;
  q.mtu = e.mtu;
  q.link_layer = static_cast<LinkLayer>(e.link_layer);
  return q;
}

RdmaEndpoint to_wire_endpoint(const QpEndpoint& q) {
  RdmaEndpoint e;
  e.qpn = q.qpn;
  e.psn = q.psn;
  memcpy(e.gid, q.gid.raw, 16);
  e.lid = q.lid;
  e.mtu = q.mtu;
  e.link_layer = static_cast<uint8_t>(q.link_layer);
  return e;
}

std::vector<std::string> usable_device_names(const rdma::VerbsApi& api) {
  std::vector<rdma::DeviceSummary> ds;
  std::string err;
  if (!rdma::describe_devices(api, &ds, &err)) throw EngineError(EngineError::kInvalid, err);
  std::vector<std::string> out;
  for (const rdma::DeviceSummary& d : ds)
    if (d.usable()) out.push_back(d.name);
  if (out.empty())
    throw EngineError(EngineError::kInvalid, "no RDMA device with an active port (devices: " + device_names(api) + ")");
  return out;
}

std::vector<std::unique_ptr<rdma::RdmaDevice>> open_rdma_devices(const rdma::VerbsApi& api,
                                                                 const std::vector<std::string>& names,
                                                                 const rdma::DeviceOptions& base, NoteLog& notes) {
  std::vector<std::unique_ptr<rdma::RdmaDevice>> out;
  for (const std::string& n : names.empty() ? usable_device_names(api) : names) {
    rdma::DeviceOptions o = base;
    o.name = n;
    try {
      out.push_back(std::make_unique<rdma::RdmaDevice>(api, o));
    } catch (const EngineError& e) {
      throw EngineError(e.kind, std::string(e.what()) + " (devices here: " + device_names(api) + ")");
    }
  }
  if (api.fake)
    notes.warn("rdma: using the FAKE verbs provider (MOONCAKE_HICACHE_FAKE_VERBS=1): no RDMA NIC is used; tests only");
  return out;
}

std::string device_names(const rdma::VerbsApi& api) {
  std::vector<rdma::DeviceSummary> ds;
  std::string err, out;
  if (!rdma::describe_devices(api, &ds, &err)) return "none (" + err + ")";
  for (const rdma::DeviceSummary& d : ds) {
    if (!out.empty()) out += ", ";
    out += d.name + (d.usable() ? "" : " (no active port)");
  }
  return out.empty() ? "none" : out;
}

bool NodeLane::admits(const RemoteSeg& s) const {
  auto it = std::upper_bound(regions.begin(), regions.end(), s.addr,
                             [](uint64_t a, const RemoteSeg& r) { return a < r.addr; });
  if (it == regions.begin()) return false;
  --it;
  return it->rkey == s.rkey && s.addr >= it->addr && s.addr + s.len <= it->addr + it->len;
}

// ---- set-up --------------------------------------------------------------------------------------

PeerRdma::PeerRdma(const rdma::VerbsApi& api, const PeerRdmaOptions& opt, uint8_t* arena, uint64_t arena_size,
                   uint64_t instance)
    : api_(api), opt_(opt), instance_(instance), arena_(arena) {
  rdma::DeviceOptions o;
  o.gid_index = opt_.gid_index;
  devices_ = open_rdma_devices(api_, opt_.devices, o, notes_);
  for (auto& d : devices_) {
    std::string err;
    int rc = d->memory().add(arena, arena_size, rdma::kLocalWrite, &err);
    if (rc) throw EngineError(EngineError::kIo, "cannot register the arena on " + d->name() + ": " + err);
  }
}

PeerRdma::~PeerRdma() {
  std::lock_guard<std::mutex> lk(lanes_mu_);
  lanes_.clear();  // queue pairs before their devices
}

// The device a new lane uses: of those with the client's link layer, lane number modulo count.
rdma::RdmaDevice* PeerRdma::device_for(const RdmaConnect& c) {
  std::vector<rdma::RdmaDevice*> match;
  for (auto& d : devices_)
    if (static_cast<uint8_t>(d->link_layer()) == c.ep.link_layer) match.push_back(d.get());
  return match.empty() ? nullptr : match[c.lane % match.size()];
}

// ---- lanes --------------------------------------------------------------------------------------

int32_t PeerRdma::connect(const RdmaConnect& c, RdmaConnectReply* reply, std::string* err) {
  if (c.node_instance && c.node_instance != instance_) {
    ctr_.stale_lanes++;
    *err = "the lane was set up with an earlier run of this node (it restarted); connect afresh";
    return kErrRdmaLane;
  }
  std::shared_ptr<NodeLane> lane;
  {
    std::lock_guard<std::mutex> lk(lanes_mu_);
    auto it = lanes_.find({c.client, c.lane});
    if (it != lanes_.end()) {
      lane = it->second;
    } else if (lanes_.size() < opt_.max_lanes) {
      rdma::RdmaDevice* dev = device_for(c);
      if (!dev) {
        ctr_.refused_connects++;
        *err = "this node has no RDMA device of the client's link layer";
        return kErrRdmaLane;
      }
      lane = std::make_shared<NodeLane>();
      lane->client = c.client, lane->id = c.lane, lane->dev = dev;
      lanes_[{c.client, c.lane}] = lane;
    }
  }
  if (!lane) {
    ctr_.refused_connects++;
    *err = "this node serves " + std::to_string(opt_.max_lanes) + " RDMA lanes already";
    return kErrRdmaLane;
  }
  int32_t rc = connect_lane(*lane, c, err);
  if (rc) return rc;
  std::shared_lock<std::shared_mutex> lk(lane->mu);
  reply->node_instance = instance_;
  reply->ep = to_wire_endpoint(lane->qp->local());
  reply->device = lane->dev->name();
  return 0;
}

int32_t PeerRdma::connect_lane(NodeLane& lane, const RdmaConnect& c, std::string* err) {
  std::unique_lock<std::shared_mutex> lk(lane.mu);  // waits for the lane's transfers
  lane.last_used_ns = now_ns();
  std::vector<RemoteSeg> regions = c.regions;
  std::sort(regions.begin(), regions.end(), [](const RemoteSeg& a, const RemoteSeg& b) { return a.addr < b.addr; });
  if (lane.qp && lane.qp->connected() && same_endpoint(lane.remote, c.ep)) {
    lane.regions.swap(regions);  // the client registered more memory: only the regions change
    ctr_.region_updates++;
    return 0;
  }
  try {
    if (!lane.qp) {
      rdma::QpOptions o;
      o.window = opt_.window;
      o.signal_every = opt_.signal_every;
      lane.qp = std::make_unique<rdma::QueuePair>(*lane.dev, o);
      ctr_.connects++;
    } else {
      if (lane.qp->reset(err) != 0) return kErrRdmaLane;
      ctr_.reconnects++;
    }
  } catch (const EngineError& e) {
    *err = e.what();
    return kErrRdmaLane;
  }
  if (lane.qp->connect(to_qp_endpoint(c.ep), err) != 0) return kErrRdmaLane;
  lane.remote = c.ep;
  lane.regions.swap(regions);
  return 0;
}

std::shared_ptr<NodeLane> PeerRdma::find(const RdmaDescs& d, std::string* err) {
  if (d.node_instance != instance_) {
    ctr_.stale_lanes++;
    *err = "the lane belongs to an earlier run of this node (it restarted)";
    return nullptr;
  }
  std::shared_ptr<NodeLane> lane;
  {
    std::lock_guard<std::mutex> lk(lanes_mu_);
    auto it = lanes_.find({d.client, d.lane});
    if (it != lanes_.end()) lane = it->second;
  }
  if (!lane) {
    ctr_.stale_lanes++;
    *err = "no RDMA lane " + std::to_string(d.lane) + " of this client here (dropped, or never connected)";
    return nullptr;
  }
  std::shared_lock<std::shared_mutex> lk(lane->mu);
  if (!lane->qp || !lane->qp->connected()) {
    *err = "RDMA lane " + std::to_string(d.lane) + " is broken (its queue pair failed); connect it again";
    return nullptr;
  }
  lane->last_used_ns = now_ns();
  return lane;
}

bool PeerRdma::local_pieces(rdma::RdmaDevice& dev, const uint8_t* p, uint64_t len,
                            std::vector<rdma::MemoryPiece>* out) const {
  return dev.memory().lookup(reinterpret_cast<uint64_t>(p), len, out);
}

void PeerRdma::sweep() {
  std::vector<std::shared_ptr<NodeLane>> gone;  // destroyed outside the lock
  int64_t limit = now_ns() - int64_t(opt_.idle_lane_s) * 1000000000;
  std::lock_guard<std::mutex> lk(lanes_mu_);
  for (auto it = lanes_.begin(); it != lanes_.end();) {
    if (it->second.use_count() == 1 && it->second->last_used_ns.load() < limit) {
      gone.push_back(std::move(it->second));
      it = lanes_.erase(it);
    } else {
      ++it;
    }
  }
}

RdmaNodeStats PeerRdma::stats() const {
  RdmaNodeStats s;
  device_figures(api_, devices_, &s);
  for (const auto& d : devices_) {
    s.completions += d->completions();
    s.poller_sleeps += d->sleeps();
  }
  {
    std::lock_guard<std::mutex> lk(lanes_mu_);
    s.lanes = lanes_.size();
  }
  s.connects = ctr_.connects, s.reconnects = ctr_.reconnects, s.region_updates = ctr_.region_updates;
  s.refused_connects = ctr_.refused_connects, s.stale_lanes = ctr_.stale_lanes;
  s.transfers = ctr_.transfers, s.failed_transfers = ctr_.failed_transfers, s.lane_breaks = ctr_.lane_breaks;
  s.wrs = ctr_.wrs, s.bytes_written = ctr_.bytes_written, s.bytes_read = ctr_.bytes_read;
  s.refused_descriptors = ctr_.refused_descriptors, s.given_up = ctr_.given_up;
  return s;
}

}  // namespace mch
