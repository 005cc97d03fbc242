// VerbsApi: the small table of function pointers through which every RDMA verb is called, so the
// transport runs against the real libibverbs (ibverbs_provider.cpp, built when libibverbs-dev is
// present) or against the FAKE verbs provider of the tests (fake_verbs.h: no RDMA NIC exists on
// the development and CI machines), with no other difference.
//
// The types are this project's, not <infiniband/verbs.h>'s, so the transport and the fake build
// without libibverbs-dev; the real provider translates (post_send and poll_cq are static inline
// functions in verbs.h, wrapped there). Handles are opaque pointers owned by the provider.
//
// verbs_provider() picks the provider once per process: the fake when MOONCAKE_HICACHE_FAKE_VERBS=1
// (logged as a warning by whoever opens a device: it is never chosen silently), else libibverbs
// when compiled in, else none. Every function of a provider is thread-safe as its libibverbs
// counterpart is (post_send on one QP from one thread at a time).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mch::rdma {

// Opaque handles (a provider casts its own objects to and from them).
struct Context;
struct ProtectionDomain;
struct MemoryRegion;
struct CompletionQueue;
struct CompletionChannel;
struct QueuePairHandle;

enum class QpState : uint8_t { kReset, kInit, kRtr, kRts, kError };

// Work completion status (the ibv_wc_status values the transport tells apart).
enum class WcStatus : uint8_t {
  kSuccess,
  kLocalLength,      // local length error
  kLocalProtection,  // an SGE outside a local MR, or a wrong lkey
  kFlush,            // the QP was in error: the WR was not executed
  kRemoteAccess,     // an rkey, range or access right the remote side refuses
  kRemoteOperation,  // the remote side failed the operation
  kRetryExceeded,    // the remote side did not answer (gone, or its QP is not connected)
  kOther,
};
const char* wc_status_name(WcStatus s);

// Access flags of a memory region or QP (the ibv_access_flags bits the transport uses).
enum Access : int { kLocalWrite = 1, kRemoteWrite = 2, kRemoteRead = 4 };

enum class LinkLayer : uint8_t { kUnknown = 0, kInfiniBand = 1, kEthernet = 2 };
enum class PortState : uint8_t { kDown = 1, kInit = 2, kArmed = 3, kActive = 4, kActiveDefer = 5 };

struct DeviceAttr {
  uint64_t max_mr_size = 0;
  uint32_t max_qp_wr = 0;
  uint32_t max_sge = 0;
  uint32_t max_cqe = 0;
  uint8_t ports = 0;
};

struct PortAttr {
  PortState state = PortState::kDown;
  LinkLayer link_layer = LinkLayer::kUnknown;
  uint8_t active_mtu = 0;  // ibv_mtu: 1 = 256 ... 5 = 4096 bytes
  uint16_t lid = 0;
  int gid_table_len = 0;
  uint32_t max_msg_size = 0;
};

struct Gid {
  uint8_t raw[16] = {};
  bool zero() const {
    for (uint8_t b : raw)
      if (b) return false;
    return true;
  }
};

struct Sge {
  uint64_t addr = 0;
  uint32_t length = 0;
  uint32_t lkey = 0;
};

enum class WrOpcode : uint8_t { kRdmaWrite, kRdmaRead };

// One send work request: an RDMA WRITE (local SGEs -> remote range) or READ (remote range ->
// local SGEs).
struct SendWr {
  uint64_t wr_id = 0;
  WrOpcode opcode = WrOpcode::kRdmaWrite;
  bool signaled = false;
  const Sge* sg = nullptr;
  int num_sge = 0;
  uint64_t remote_addr = 0;
  uint32_t rkey = 0;
};

struct WorkCompletion {
  uint64_t wr_id = 0;
  WcStatus status = WcStatus::kSuccess;
  uint32_t vendor_err = 0;
  uint32_t qp_num = 0;
};

struct QpCaps {
  uint32_t max_send_wr = 0, max_recv_wr = 1, max_send_sge = 1, max_recv_sge = 1;
};

// A QP state change and the attributes it needs (modify_qp).
struct QpTransition {
  QpState to = QpState::kReset;
  uint8_t port = 1;          // kInit
  int access = 0;            // kInit: remote access allowed on this QP
  uint32_t remote_qpn = 0;   // kRtr
  uint32_t remote_psn = 0;   // kRtr: the peer's first PSN
  Gid remote_gid;            // kRtr (RoCE, or a global route)
  uint16_t remote_lid = 0;   // kRtr (InfiniBand)
  int gid_index = 0;         // kRtr: this side's GID index
  bool use_gid = true;       // kRtr: global routing header (always for RoCE)
  uint8_t mtu = 3;           // kRtr: path MTU (ibv_mtu)
  uint32_t psn = 0;          // kRts: this side's first PSN
};

struct VerbsApi {
  const char* name;  // "libibverbs", or the fake's name (it says it is a fake)
  bool fake;
  // Device names; false with *err when the list cannot be had (no RDMA core in the kernel).
  bool (*list_devices)(std::vector<std::string>* names, std::string* err);
  Context* (*open_device)(const std::string& name, std::string* err);
  void (*close_device)(Context* ctx);
  int (*query_device)(Context* ctx, DeviceAttr* out);
  int (*query_port)(Context* ctx, uint8_t port, PortAttr* out);
  int (*query_gid)(Context* ctx, uint8_t port, int index, Gid* out);
  ProtectionDomain* (*alloc_pd)(Context* ctx);
  int (*dealloc_pd)(ProtectionDomain* pd);
  // nullptr on failure (errno set); *lkey / *rkey get the keys.
  MemoryRegion* (*reg_mr)(ProtectionDomain* pd, void* addr, size_t len, int access, uint32_t* lkey, uint32_t* rkey);
  int (*dereg_mr)(MemoryRegion* mr);
  CompletionChannel* (*create_channel)(Context* ctx);
  int (*destroy_channel)(CompletionChannel* ch);
  int (*channel_fd)(CompletionChannel* ch);  // readable when an event is pending
  CompletionQueue* (*create_cq)(Context* ctx, int cqe, CompletionChannel* ch);
  int (*destroy_cq)(CompletionQueue* cq);
  int (*req_notify_cq)(CompletionQueue* cq);
  int (*get_cq_event)(CompletionChannel* ch, CompletionQueue** cq);  // 0, or -1 when none is pending
  void (*ack_cq_events)(CompletionQueue* cq, unsigned n);
  int (*poll_cq)(CompletionQueue* cq, int n, WorkCompletion* out);  // completions taken, or < 0
  // An RC QP whose send and receive completions go to `cq`; *qpn gets its number.
  QueuePairHandle* (*create_qp)(ProtectionDomain* pd, CompletionQueue* cq, const QpCaps& caps, uint32_t* qpn);
  int (*destroy_qp)(QueuePairHandle* qp);
  int (*modify_qp)(QueuePairHandle* qp, const QpTransition& t);  // 0 or an errno value
  // Posts a chain of n WRs; 0, or an errno value with *bad the index of the first not posted.
  int (*post_send)(QueuePairHandle* qp, const SendWr* wrs, int n, int* bad);
};

// The provider of this process (see the header comment); nullptr when there is none.
const VerbsApi* verbs_provider();
// Why verbs_provider() is nullptr, naming what to install; "" when there is a provider.
std::string verbs_unavailable_reason();
// Whether the real libibverbs provider was compiled in.
bool verbs_compiled_in();

// The real provider (nullptr when not compiled in) and the fake one.
const VerbsApi* ibverbs_api();
const VerbsApi* fake_verbs_api();

// MTU enum <-> bytes.
inline uint32_t mtu_bytes(uint8_t mtu) { return mtu >= 1 && mtu <= 5 ? 128u << mtu : 0; }

}  // namespace mch::rdma
