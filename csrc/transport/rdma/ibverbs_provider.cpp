// The real verbs provider: VerbsApi over libibverbs (compiled when libibverbs-dev is present,
// MCH_HAVE_VERBS), plus verbs_provider(), which chooses between it and the fake.
#include <errno.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>

#include "transport/rdma/verbs_api.h"

#ifdef MCH_HAVE_VERBS
#include <infiniband/verbs.h>
#endif

namespace mch::rdma {

const char* wc_status_name(WcStatus s) {
  switch (s) {
    case WcStatus::kSuccess: return "success";
    case WcStatus::kLocalLength: return "local length error";
    case WcStatus::kLocalProtection: return "local protection error";
    case WcStatus::kFlush: return "flushed (queue pair in error)";
    case WcStatus::kRemoteAccess: return "remote access error";
    case WcStatus::kRemoteOperation: return "remote operation error";
    case WcStatus::kRetryExceeded: return "transport retry counter exceeded (peer unreachable)";
    default: return "other error";
  }
}

bool verbs_compiled_in() {
#ifdef MCH_HAVE_VERBS
  return true;
#else
  return false;
#endif
}

namespace {
bool fake_requested() {
  const char* v = getenv("MOONCAKE_HICACHE_FAKE_VERBS");
  return v && std::strcmp(v, "1") == 0;
}
}  // namespace

const VerbsApi* verbs_provider() {
  static const VerbsApi* p = fake_requested() ? fake_verbs_api() : ibverbs_api();
  return p;
}

std::string verbs_unavailable_reason() {
  if (verbs_provider()) return "";
  return "this build of mooncake-hicache has no RDMA support: it was compiled without libibverbs; install "
         "libibverbs-dev (Debian/Ubuntu; rdma-core-devel on Fedora) and rebuild (bash scripts/setup.sh), or use "
         "cluster.transport: tcp";
}

#ifndef MCH_HAVE_VERBS

const VerbsApi* ibverbs_api() { return nullptr; }

#else

namespace {

template <class T, class H>
T* as(H* h) { return reinterpret_cast<T*>(h); }

WcStatus wc_status(ibv_wc_status s) {
  switch (s) {
    case IBV_WC_SUCCESS: return WcStatus::kSuccess;
    case IBV_WC_LOC_LEN_ERR: return WcStatus::kLocalLength;
    case IBV_WC_LOC_PROT_ERR: return WcStatus::kLocalProtection;
    case IBV_WC_WR_FLUSH_ERR: return WcStatus::kFlush;
    case IBV_WC_REM_ACCESS_ERR: return WcStatus::kRemoteAccess;
    case IBV_WC_REM_OP_ERR: return WcStatus::kRemoteOperation;
    case IBV_WC_RETRY_EXC_ERR: case IBV_WC_RNR_RETRY_EXC_ERR: return WcStatus::kRetryExceeded;
    default: return WcStatus::kOther;
  }
}

int access_bits(int a) {
  int out = 0;
  if (a & kLocalWrite) out |= IBV_ACCESS_LOCAL_WRITE;
  if (a & kRemoteWrite) out |= IBV_ACCESS_REMOTE_WRITE;
  if (a & kRemoteRead) out |= IBV_ACCESS_REMOTE_READ;
  return out;
}

bool list_devices(std::vector<std::string>* names, std::string* err) {
  int n = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) {
    *err = std::string("cannot list RDMA devices: ") + strerror(errno ? errno : ENOSYS) +
           " (no RDMA core in this kernel, or rdma-core is not installed)";
    return false;
  }
  for (int i = 0; i < n; i++) names->push_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return true;
}

Context* open_device(const std::string& name, std::string* err) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) {
    *err = std::string("cannot list RDMA devices: ") + strerror(errno ? errno : ENOSYS);
    return nullptr;
  }
  ibv_context* ctx = nullptr;
  for (int i = 0; i < n && !ctx; i++) {
    if (name != ibv_get_device_name(list[i])) continue;
    ctx = ibv_open_device(list[i]);
    if (!ctx) *err = "cannot open RDMA device " + name + ": " + strerror(errno);
  }
  ibv_free_device_list(list);
  if (!ctx && err->empty()) *err = "no RDMA device named " + name;
  return as<Context>(ctx);
}

void close_device(Context* c) { ibv_close_device(as<ibv_context>(c)); }

int query_device(Context* c, DeviceAttr* out) {
  ibv_device_attr a{};
  int e = ibv_query_device(as<ibv_context>(c), &a);
  if (e) return e;
  out->max_mr_size = a.max_mr_size;
  out->max_qp_wr = static_cast<uint32_t>(a.max_qp_wr);
  out->max_sge = static_cast<uint32_t>(a.max_sge);
  out->max_cqe = static_cast<uint32_t>(a.max_cqe);
  out->ports = a.phys_port_cnt;
  return 0;
}

int query_port(Context* c, uint8_t port, PortAttr* out) {
  ibv_port_attr a{};
  int e = ibv_query_port(as<ibv_context>(c), port, &a);
  if (e) return e;
  out->state = static_cast<PortState>(a.state);
  out->link_layer = a.link_layer == IBV_LINK_LAYER_ETHERNET     ? LinkLayer::kEthernet
                    : a.link_layer == IBV_LINK_LAYER_INFINIBAND ? LinkLayer::kInfiniBand
                                                                : LinkLayer::kUnknown;
  out->active_mtu = static_cast<uint8_t>(a.active_mtu);
  out->lid = a.lid;
  out->gid_table_len = a.gid_tbl_len;
  out->max_msg_size = a.max_msg_sz;
  return 0;
}

int query_gid(Context* c, uint8_t port, int index, Gid* out) {
  ibv_gid g{};
  int e = ibv_query_gid(as<ibv_context>(c), port, index, &g);
  if (e == 0) memcpy(out->raw, g.raw, 16);
  return e;
}

ProtectionDomain* alloc_pd(Context* c) { return as<ProtectionDomain>(ibv_alloc_pd(as<ibv_context>(c))); }
int dealloc_pd(ProtectionDomain* pd) { return ibv_dealloc_pd(as<ibv_pd>(pd)); }

MemoryRegion* reg_mr(ProtectionDomain* pd, void* addr, size_t len, int access, uint32_t* lkey, uint32_t* rkey) {
  ibv_mr* mr = ibv_reg_mr(as<ibv_pd>(pd), addr, len, access_bits(access));
  if (!mr) return nullptr;
  *lkey = mr->lkey;
  *rkey = mr->rkey;
  return as<MemoryRegion>(mr);
}
int dereg_mr(MemoryRegion* mr) { return ibv_dereg_mr(as<ibv_mr>(mr)); }

CompletionChannel* create_channel(Context* c) {
  return as<CompletionChannel>(ibv_create_comp_channel(as<ibv_context>(c)));
}
int destroy_channel(CompletionChannel* ch) { return ibv_destroy_comp_channel(as<ibv_comp_channel>(ch)); }
int channel_fd(CompletionChannel* ch) { return as<ibv_comp_channel>(ch)->fd; }

CompletionQueue* create_cq(Context* c, int cqe, CompletionChannel* ch) {
  return as<CompletionQueue>(ibv_create_cq(as<ibv_context>(c), cqe, nullptr, as<ibv_comp_channel>(ch), 0));
}
int destroy_cq(CompletionQueue* cq) { return ibv_destroy_cq(as<ibv_cq>(cq)); }
int req_notify_cq(CompletionQueue* cq) { return ibv_req_notify_cq(as<ibv_cq>(cq), 0); }  // static inline

int get_cq_event(CompletionChannel* ch, CompletionQueue** cq) {
  ibv_cq* got = nullptr;
  void* ctx = nullptr;
  if (ibv_get_cq_event(as<ibv_comp_channel>(ch), &got, &ctx) != 0) return -1;
  *cq = as<CompletionQueue>(got);
  return 0;
}
void ack_cq_events(CompletionQueue* cq, unsigned n) { ibv_ack_cq_events(as<ibv_cq>(cq), n); }

int poll_cq(CompletionQueue* cq, int n, WorkCompletion* out) {
  ibv_wc wc[32];
  int total = 0;
  while (total < n) {
    int k = ibv_poll_cq(as<ibv_cq>(cq), std::min(n - total, 32), wc);  // static inline in verbs.h
    if (k < 0) return total ? total : k;
    for (int i = 0; i < k; i++) {
      WorkCompletion& w = out[total + i];
      w.wr_id = wc[i].wr_id;
      w.status = wc_status(wc[i].status);
      w.vendor_err = wc[i].vendor_err;
      w.qp_num = wc[i].qp_num;
    }
    total += k;
    if (k < 32) break;
  }
  return total;
}

QueuePairHandle* create_qp(ProtectionDomain* pd, CompletionQueue* cq, const QpCaps& caps, uint32_t* qpn) {
  ibv_qp_init_attr a{};
  a.send_cq = as<ibv_cq>(cq);
  a.recv_cq = as<ibv_cq>(cq);
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;
  a.cap.max_send_wr = caps.max_send_wr;
  a.cap.max_recv_wr = caps.max_recv_wr;
  a.cap.max_send_sge = caps.max_send_sge;
  a.cap.max_recv_sge = caps.max_recv_sge;
  ibv_qp* qp = ibv_create_qp(as<ibv_pd>(pd), &a);
  if (qp) *qpn = qp->qp_num;
  return as<QueuePairHandle>(qp);
}
int destroy_qp(QueuePairHandle* qp) { return ibv_destroy_qp(as<ibv_qp>(qp)); }

int modify_qp(QueuePairHandle* h, const QpTransition& t) {
  ibv_qp_attr a{};
  int mask = IBV_QP_STATE;
  switch (t.to) {
    case QpState::kReset: a.qp_state = IBV_QPS_RESET; break;
    case QpState::kError: a.qp_state = IBV_QPS_ERR; break;
    case QpState::kInit:
      a.qp_state = IBV_QPS_INIT;
      a.pkey_index = 0;
      a.port_num = t.port;
      a.qp_access_flags = access_bits(t.access);
      mask |= IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
      break;
    case QpState::kRtr:
      a.qp_state = IBV_QPS_RTR;
      a.path_mtu = static_cast<ibv_mtu>(t.mtu);
      a.dest_qp_num = t.remote_qpn;
      a.rq_psn = t.remote_psn;
      a.max_dest_rd_atomic = 16;
      a.min_rnr_timer = 12;
      a.ah_attr.dlid = t.remote_lid;
      a.ah_attr.port_num = t.port;
      if (t.use_gid) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, t.remote_gid.raw, 16);
        a.ah_attr.grh.sgid_index = static_cast<uint8_t>(t.gid_index);
        a.ah_attr.grh.hop_limit = 64;
      }
      mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
              IBV_QP_MIN_RNR_TIMER;
      break;
    case QpState::kRts:
      a.qp_state = IBV_QPS_RTS;
      a.sq_psn = t.psn;
      a.timeout = 14;  // 4.096 us * 2^14 = 67 ms per try
      a.retry_cnt = 7;
      a.rnr_retry = 7;
      a.max_rd_atomic = 16;
      mask |= IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
      break;
  }
  return ibv_modify_qp(as<ibv_qp>(h), &a, mask);
}

int post_send(QueuePairHandle* h, const SendWr* wrs, int n, int* bad) {
  constexpr int kMaxSge = 16;
  constexpr int kChunk = 64;
  ibv_send_wr wr[kChunk];
  ibv_sge sge[kChunk][kMaxSge];
  for (int base = 0; base < n; base += kChunk) {
    int k = std::min(kChunk, n - base);
    for (int i = 0; i < k; i++) {
      const SendWr& s = wrs[base + i];
      if (s.num_sge > kMaxSge) {
        *bad = base + i;
        return EINVAL;
      }
      for (int j = 0; j < s.num_sge; j++) sge[i][j] = ibv_sge{s.sg[j].addr, s.sg[j].length, s.sg[j].lkey};
      wr[i] = ibv_send_wr{};
      wr[i].wr_id = s.wr_id;
      wr[i].next = i + 1 < k ? &wr[i + 1] : nullptr;
      wr[i].sg_list = sge[i];
      wr[i].num_sge = s.num_sge;
      wr[i].opcode = s.opcode == WrOpcode::kRdmaRead ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
      wr[i].send_flags = s.signaled ? IBV_SEND_SIGNALED : 0;
      wr[i].wr.rdma.remote_addr = s.remote_addr;
      wr[i].wr.rdma.rkey = s.rkey;
    }
    ibv_send_wr* failed = nullptr;
    int e = ibv_post_send(as<ibv_qp>(h), wr, &failed);  // static inline in verbs.h
    if (e) {
      *bad = base + (failed ? static_cast<int>(failed - wr) : 0);
      return e;
    }
  }
  return 0;
}

const VerbsApi kIbverbs = {
    "libibverbs", false, list_devices, open_device, close_device, query_device, query_port, query_gid,
    alloc_pd, dealloc_pd, reg_mr, dereg_mr, create_channel, destroy_channel, channel_fd, create_cq, destroy_cq,
    req_notify_cq, get_cq_event, ack_cq_events, poll_cq, create_qp, destroy_qp, modify_qp, post_send,
};

}  // namespace

const VerbsApi* ibverbs_api() { return &kIbverbs; }

#endif  // MCH_HAVE_VERBS

}  // namespace mch::rdma
