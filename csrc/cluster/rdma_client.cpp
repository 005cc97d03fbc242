// RdmaClient: see rdma_client.h.
#include "cluster/rdma_client.h"

#include <errno.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "common/error.h"
#include "common/fork_generation.h"
#include "node/peer_rdma.h"

namespace mch::cluster {

using namespace proto;
using rdma::QpEndpoint;

namespace {

constexpr auto kBackoffMax = std::chrono::milliseconds(5000);
constexpr auto kNotServedBackoff = std::chrono::milliseconds(30000);

uint64_t random_instance() {
  std::random_device rd;
  uint64_t v = (uint64_t(rd()) << 32) ^ rd();
  return v ? v : 1;
}

}  // namespace

RdmaClient::RdmaClient(const rdma::VerbsApi& api, const RdmaClientOptions& opt)
    : api_(api), opt_(opt), instance_(random_instance()), fork_gen_(fork_generation()) {
  rdma::DeviceOptions o;
  o.gid_index = opt_.gid_index;
  o.completion_thread = false;  // this side never posts
  o.cq_size = 256;
  devices_ = open_rdma_devices(api_, opt_.devices, o, notes_);
}

RdmaClient::~RdmaClient() {
  std::lock_guard<std::mutex> lk(mu_);
  members_.clear();  // queue pairs before their devices
}

int RdmaClient::register_buffer(void* p, uint64_t n, std::string* err) {
  for (size_t i = 0; i < devices_.size(); i++) {
    int rc = devices_[i]->memory().add(p, n, rdma::kLocalWrite | rdma::kRemoteRead | rdma::kRemoteWrite, err);
    if (rc == 0) continue;
    for (size_t j = 0; j < i; j++) devices_[j]->memory().remove(p);
    *err = "registering the buffer on " + devices_[i]->name() + ": " + *err;
    return rc;
  }
  std::lock_guard<std::mutex> lk(mu_);
  gen_++;
  return 0;
}

bool RdmaClient::unregister_buffer(void* p) {
  bool any = false;
  for (auto& d : devices_) any = d->memory().remove(p) || any;
  std::lock_guard<std::mutex> lk(mu_);
  gen_++;
  return any;
}

// ---- lanes ---------------------------------------------------------------------------------------

std::vector<std::shared_ptr<ClientLane>>& RdmaClient::lanes_of(const std::string& member) {
  auto& lanes = members_[member];
  if (lanes.empty()) {
    uint32_t first = rr_++;
    for (uint32_t i = 0; i < std::max<uint32_t>(1, opt_.lanes_per_peer); i++) {
      auto l = std::make_shared<ClientLane>();
      l->id = static_cast<uint16_t>(i);
      l->dev = devices_[(first + i) % devices_.size()].get();
      lanes.push_back(l);
    }
  }
  return lanes;
}

std::shared_ptr<ClientLane> RdmaClient::pick(const std::string& member, std::shared_ptr<ClientLane>* connect) {
  if (fork_generation() != fork_gen_) return nullptr;  // a forked child: TCP only
  std::vector<std::shared_ptr<ClientLane>> lanes;
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    lanes = lanes_of(member);
    gen = gen_;
  }
  uint32_t start = rr_++;
  for (size_t k = 0; k < lanes.size(); k++) {
    ClientLane& l = *lanes[(start + k) % lanes.size()];
    std::lock_guard<std::mutex> lk(l.mu);
    if (l.state == ClientLane::State::kUp && l.regions_gen == gen) return lanes[(start + k) % lanes.size()];
  }
  Clock::time_point now = Clock::now();
  for (auto& lp : lanes) {
    ClientLane& l = *lp;
    std::lock_guard<std::mutex> lk(l.mu);
    bool stale_regions = l.state == ClientLane::State::kUp && l.regions_gen != gen;
    if (!stale_regions && !(l.state == ClientLane::State::kDown && now >= l.retry_at)) continue;
    l.regions_only = stale_regions;
    l.pending_gen = gen;
    l.state = ClientLane::State::kConnecting;
    *connect = lp;
    return nullptr;
  }
  return nullptr;
}

bool RdmaClient::connect_request(ClientLane& l, RdmaConnect* out, std::string* err) {
  std::lock_guard<std::mutex> lk(l.mu);
  try {
    if (!l.qp) {
      rdma::QpOptions o;
      o.window = 16;
      o.access = rdma::kRemoteRead | rdma::kRemoteWrite;
      l.qp = std::make_unique<rdma::QueuePair>(*l.dev, o);
    } else if (!l.regions_only && l.qp->reset(err) != 0) {
      return false;
    }
  } catch (const EngineError& e) {
    *err = e.what();
    return false;
  }
  out->client = instance_;
  out->lane = l.id;
  out->node_instance = 0;
  out->ep = to_wire_endpoint(l.qp->local());
  out->regions.clear();
  for (const rdma::MemoryPiece& p : l.dev->memory().regions()) out->regions.push_back(RemoteSeg{p.addr, p.len, p.rkey});
  if (out->regions.size() > kRdmaMaxRegions) {
    *err = "more than " + std::to_string(kRdmaMaxRegions) + " registered memory regions on " + l.dev->name();
    return false;
  }
  return true;
}

bool RdmaClient::connected(ClientLane& l, const RdmaConnectReply& r) {
  std::lock_guard<std::mutex> lk(l.mu);
  std::string err;
  if (!l.regions_only && l.qp->connect(to_qp_endpoint(r.ep), &err) != 0) {
    notes_.warn("rdma: lane " + std::to_string(l.id) + " on " + l.dev->name() + " could not connect: " + err);
    l.state = ClientLane::State::kDown;
    back_off(l, std::chrono::milliseconds(100));
    connect_failures_++;
    return false;
  }
  (l.regions_only ? region_updates_ : connects_)++;
  l.node_instance = r.node_instance;
  l.regions_gen = l.pending_gen;
  l.state = ClientLane::State::kUp;
  l.failures = 0;
  return true;
}

void RdmaClient::back_off(ClientLane& l, std::chrono::milliseconds base) {
  auto wait = std::min<std::chrono::milliseconds>(base * (1u << std::min<uint32_t>(l.failures, 6)), kBackoffMax);
  if (base >= kNotServedBackoff) wait = base;
  l.failures++;
  l.retry_at = Clock::now() + wait;
}

void RdmaClient::connect_failed(ClientLane& l, int32_t code, const std::string& msg) {
  std::lock_guard<std::mutex> lk(l.mu);
  connect_failures_++;
  if (l.qp && !l.regions_only) l.qp->force_error();
  l.state = ClientLane::State::kDown;
  back_off(l, code == kErrDataPath ? kNotServedBackoff : std::chrono::milliseconds(100));
  if (l.failures == 1)
    notes_.add("rdma: lane " + std::to_string(l.id) + " not connected (" + msg + "); using TCP until it is");
}

void RdmaClient::lane_failed(ClientLane& l, const std::string& why) {
  std::lock_guard<std::mutex> lk(l.mu);
  if (l.qp) l.qp->force_error();  // before the call returns: nothing more lands in its buffers
  if (l.state != ClientLane::State::kUp) return;
  lane_failures_++;
  l.state = ClientLane::State::kDown;
  back_off(l, std::chrono::milliseconds(100));
  notes_.add("rdma: lane " + std::to_string(l.id) + " on " + l.dev->name() + " failed (" + why +
             "); reconnecting, TCP meanwhile");
}

// ---- descriptors ----------------------------------------------------------------------------------

void RdmaClient::fill_head(const ClientLane& l, RdmaDescs* d) {
  d->lane = l.id;
  d->client = instance_;
  d->node_instance = l.node_instance;
}

bool RdmaClient::describe(const ClientLane& l, const SgList& sg, uint64_t len, RdmaDescs* d) {
  size_t before = d->segs.size();
  std::vector<rdma::MemoryPiece> pieces;
  uint64_t left = len;
  for (const Segment& s : sg) {
    if (left == 0) break;
    uint64_t n = std::min(left, s.len);
    pieces.clear();
    if (n && !l.dev->memory().lookup(reinterpret_cast<uint64_t>(s.ptr), n, &pieces)) {
      d->segs.resize(before);
      return false;
    }
    for (const rdma::MemoryPiece& p : pieces) d->segs.push_back(RemoteSeg{p.addr, p.len, p.rkey});
    left -= n;
  }
  if (left || d->segs.size() - before > kRdmaMaxSegs || d->segs.size() > kRdmaMaxDescs) {
    d->segs.resize(before);
    return false;
  }
  d->end_key();
  return true;
}

RdmaClientStats RdmaClient::stats() const {
  RdmaClientStats s;
  device_figures(api_, devices_, &s);
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& [m, lanes] : members_)
      for (const auto& l : lanes) {
        std::lock_guard<std::mutex> g(l->mu);
        s.lanes_up += l->state == ClientLane::State::kUp;
      }
  }
  s.connects = connects_, s.connect_failures = connect_failures_, s.region_updates = region_updates_;
  s.lane_failures = lane_failures_, s.rdma_requests = rdma_requests_, s.tcp_fallbacks = tcp_fallbacks_;
  s.unregistered = unregistered_;
  return s;
}

}  // namespace mch::cluster
