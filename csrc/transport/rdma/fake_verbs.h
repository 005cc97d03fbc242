// The FAKE verbs provider: no RDMA NIC exists on the development and CI machines (no device, no
// Soft-RoCE), so the tests run the whole RDMA transport against this stand-in behind the same
// VerbsApi table (fake_verbs_api()). It is chosen only by MOONCAKE_HICACHE_FAKE_VERBS=1 (and every
// device open through it is logged as a warning), never silently.
//
// What it keeps like a NIC does: devices ("mch_fake0", "mch_fake1": one active RoCE port each,
// MTU 4096, four GIDs), protection domains, memory regions with lkeys/rkeys and access rights,
// completion queues with completion channels (an eventfd), and RC queue pairs with their states
// (RESET -> INIT -> RTR -> RTS, ERROR) and a bounded send queue (a slot is freed only when a later
// completion of its QP is polled, as with selective signalling). A "HCA" thread executes posted
// WRs in order per QP: it checks the local SGEs against the local MRs (lkey, bounds), the remote
// QP (it must exist and be RTR/RTS and connected back) and the remote MR (rkey, bounds, access),
// then moves the bytes: memcpy within a process, process_vm_readv/writev across processes (the
// fake GID carries the owning pid; needs ptrace rights over the peer: same uid with Yama off, or
// root). A failed WR completes with its error (remote access, retry exceeded, local protection)
// and puts the QP in ERROR: every later WR of that QP completes as flushed.
//
// Cross-process state: each process publishes its MRs and QP states in /dev/shm/mch-fake-verbs-<pid>
// (read by its peers; removed at exit, stale ones of dead processes removed on start).
//
// Test hooks (this header): inject completion errors, stall WRs, shrink max_mr_size, read counters.
// The environment does the same for processes a test starts:
//   MOONCAKE_HICACHE_FAKE_VERBS_FAIL=<kind>@<n>[,<kind>@<n>...]  the n-th WR this process executes
//       (from 1) completes with <kind>: remote_access | retry | local_protection | remote_op | stall
//   MOONCAKE_HICACHE_FAKE_VERBS_MAX_MR=<bytes>  the devices' max_mr_size (default 64 MiB, so
//       registrations are split in the tests)
// Thread-safe: one process-wide mutex guards the fake's state.
#pragma once
#include <cstdint>

#include "transport/rdma/verbs_api.h"

namespace mch::rdma::fake {

enum class FaultKind : uint8_t { kRemoteAccess, kRetryExceeded, kLocalProtection, kRemoteOperation, kStall };

// The n-th WR executed from now on (1 = the next one) meets `kind`; qpn != 0 limits it to that QP.
// kStall: the WR is never executed and never completes (a hung NIC), until its QP is destroyed.
void inject(FaultKind kind, uint64_t nth, uint32_t qpn = 0);
void clear_faults();
// max_mr_size of devices opened from now on (0: the default).
void set_max_mr_size(uint64_t bytes);
// Each WR takes at least this long to execute (0: as fast as memcpy): lets windows fill up.
void set_wr_delay_us(uint32_t us);

struct Counters {
  uint64_t wrs_executed = 0, bytes_moved = 0, errors = 0, flushed = 0, cqes = 0, stalled = 0;
  uint64_t post_refused = 0;      // post_send over a full send queue (ENOMEM)
  uint32_t max_sq_occupancy = 0;  // the most send-queue slots any QP had in use
  uint64_t cq_overflows = 0;
  uint32_t open_contexts = 0, live_qps = 0, live_mrs = 0;
};
Counters counters();
void reset_counters();
// The state of a QP of this process (kReset when unknown).
QpState qp_state(uint32_t qpn);
// Where this process publishes its MRs and QPs.
const char* registry_path();

}  // namespace mch::rdma::fake
