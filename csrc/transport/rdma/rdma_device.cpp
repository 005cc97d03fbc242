// RdmaDevice: see rdma_device.h.
#include "transport/rdma/rdma_device.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "transport/rdma/queue_pair.h"

namespace mch::rdma {

namespace {
constexpr int kBatch = 64;
constexpr int kIdleSpins = 256;  // empty polls before the thread arms the CQ and sleeps
}  // namespace

std::string gid_text(const Gid& g) {
  char buf[48];
  int n = 0;
  for (int i = 0; i < 16; i += 2) n += snprintf(buf + n, sizeof buf - n, i ? ":%02x%02x" : "%02x%02x", g.raw[i], g.raw[i + 1]);
  return std::string(buf, static_cast<size_t>(n));
}

const char* link_layer_name(LinkLayer l) {
  return l == LinkLayer::kEthernet ? "Ethernet" : l == LinkLayer::kInfiniBand ? "InfiniBand" : "unknown";
}

const char* port_state_name(PortState s) {
  switch (s) {
    case PortState::kActive: return "ACTIVE";
    case PortState::kArmed: return "ARMED";
    case PortState::kInit: return "INIT";
    case PortState::kActiveDefer: return "ACTIVE_DEFER";
    default: return "DOWN";
  }
}

bool DeviceSummary::usable() const {
  for (const PortSummary& p : ports)
    if (p.state == PortState::kActive) return true;
  return false;
}

namespace {
void describe_port(const VerbsApi& api, Context* ctx, uint8_t port, DeviceSummary* d) {
  PortAttr pa;
  if (api.query_port(ctx, port, &pa) != 0) return;
  PortSummary ps;
  ps.port = port;
  ps.state = pa.state;
  ps.link_layer = pa.link_layer;
  ps.mtu = mtu_bytes(pa.active_mtu);
  ps.lid = pa.lid;
  for (int i = 0; i < pa.gid_table_len && i < 16; i++) {
    Gid g;
    ps.gids.push_back(api.query_gid(ctx, port, i, &g) == 0 && !g.zero() ? gid_text(g) : "");
  }
  while (!ps.gids.empty() && ps.gids.back().empty()) ps.gids.pop_back();
  d->ports.push_back(ps);
}
}  // namespace

bool describe_devices(const VerbsApi& api, std::vector<DeviceSummary>* out, std::string* err) {
  std::vector<std::string> names;
  if (!api.list_devices(&names, err)) return false;
  for (const std::string& n : names) {
    DeviceSummary d;
    d.name = n;
    std::string e;
    Context* ctx = api.open_device(n, &e);
    if (!ctx) {
      d.error = e;
      out->push_back(d);
      continue;
    }
    DeviceAttr a;
    if (api.query_device(ctx, &a) == 0) {
      d.max_mr_size = a.max_mr_size;
      for (uint8_t p = 1; p <= a.ports; p++) describe_port(api, ctx, p, &d);
    }
    api.close_device(ctx);
    out->push_back(d);
  }
  return true;
}

// ---- RdmaDevice --------------------------------------------------------------------------------

RdmaDevice::RdmaDevice(const VerbsApi& api, const DeviceOptions& opt) : api_(api), name_(opt.name) {
  std::string err;
  ctx_ = api_.open_device(name_, &err);
  if (!ctx_) throw EngineError(EngineError::kInvalid, err);
  try {
    if (api_.query_device(ctx_, &attr_) != 0) throw EngineError(EngineError::kIo, "cannot query RDMA device " + name_);
    open_port(opt);
    pd_ = api_.alloc_pd(ctx_);
    channel_ = api_.create_channel(ctx_);
    int cqe = static_cast<int>(std::min<uint32_t>(attr_.max_cqe ? attr_.max_cqe : 4096, static_cast<uint32_t>(opt.cq_size)));
    cq_ = pd_ && channel_ ? api_.create_cq(ctx_, cqe, channel_) : nullptr;
    if (!cq_) throw EngineError(EngineError::kIo, "cannot set up RDMA device " + name_ + ": " + strerror(errno));
    memory_ = std::make_unique<MemoryMap>(api_, pd_, attr_.max_mr_size);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (opt.completion_thread) poller_ = std::thread([this] { poll_loop(); });
  } catch (...) {
    close_all();
    throw;
  }
}

// The first active port, and the GID to use on it.
void RdmaDevice::open_port(const DeviceOptions& opt) {
  for (uint8_t p = 1; p <= attr_.ports; p++) {
    if (api_.query_port(ctx_, p, &port_attr_) == 0 && port_attr_.state == PortState::kActive) {
      port_ = p;
      break;
    }
  }
  if (port_attr_.state != PortState::kActive)
    throw EngineError(EngineError::kInvalid, "RDMA device " + name_ + " has no active port");
  gid_index_ = opt.gid_index;
  if (gid_index_ < 0) {  // the first non-zero GID
    for (int i = 0; i < port_attr_.gid_table_len && gid_index_ < 0; i++)
      if (api_.query_gid(ctx_, port_, i, &gid_) == 0 && !gid_.zero()) gid_index_ = i;
    if (gid_index_ < 0 && port_attr_.link_layer == LinkLayer::kEthernet)
      throw EngineError(EngineError::kInvalid, "RDMA device " + name_ + " (RoCE) has no GID configured");
    if (gid_index_ < 0) gid_index_ = 0;
  } else if (gid_index_ >= port_attr_.gid_table_len || api_.query_gid(ctx_, port_, gid_index_, &gid_) != 0) {
    throw EngineError(EngineError::kInvalid, "RDMA device " + name_ + " port " + std::to_string(port_) +
                                                 " has no GID at index " + std::to_string(gid_index_) + " (it has " +
                                                 std::to_string(port_attr_.gid_table_len) +
                                                 "); fix cluster.rdma.gid_index");
  }
}

RdmaDevice::~RdmaDevice() { close_all(); }

void RdmaDevice::close_all() {
  stop_.store(true);
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    ssize_t r = write(wake_fd_, &one, sizeof one);
    (void)r;
  }
  if (poller_.joinable()) poller_.join();
  memory_.reset();
  if (cq_) api_.destroy_cq(cq_);
  if (channel_) api_.destroy_channel(channel_);
  if (pd_) api_.dealloc_pd(pd_);
  if (ctx_) api_.close_device(ctx_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  cq_ = nullptr, channel_ = nullptr, pd_ = nullptr, ctx_ = nullptr, wake_fd_ = -1;
}

void RdmaDevice::attach(uint32_t qpn, QueuePair* qp) {
  std::lock_guard<std::mutex> lk(dispatch_mu_);
  qps_[qpn] = qp;
}

void RdmaDevice::detach(uint32_t qpn) {
  std::lock_guard<std::mutex> lk(dispatch_mu_);  // waits for a completion being handed to it
  qps_.erase(qpn);
}

// ---- the completion thread -------------------------------------------------------------------

// Polls what the CQ holds and hands it out; returns how many completions there were.
int RdmaDevice::drain() {
  WorkCompletion wc[kBatch];
  int total = 0;
  for (;;) {
    int n = api_.poll_cq(cq_, kBatch, wc);
    if (n <= 0) return total;
    total += n;
    completions_ += static_cast<uint64_t>(n);
    std::lock_guard<std::mutex> lk(dispatch_mu_);
    for (int i = 0; i < n; i++) {
      auto it = qps_.find(wc[i].qp_num);
      if (it != qps_.end()) it->second->on_completion(wc[i]);  // else: its QP is gone
    }
  }
}

void RdmaDevice::sleep_on_channel() {
  sleeps_++;
  pollfd p[2] = {{api_.channel_fd(channel_), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  if (::poll(p, 2, 1000) <= 0 || !(p[0].revents & POLLIN)) return;
  CompletionQueue* got = nullptr;
  if (api_.get_cq_event(channel_, &got) == 0) api_.ack_cq_events(got, 1);
}

void RdmaDevice::poll_loop() {
  int idle = 0;
  while (!stop_.load()) {
    if (drain() > 0) {
      idle = 0;
      continue;
    }
    if (++idle < kIdleSpins) continue;
    idle = 0;
    api_.req_notify_cq(cq_);
    if (drain() > 0) continue;  // one came between the last poll and the arming
    sleep_on_channel();
  }
}

}  // namespace mch::rdma
