// RdmaClient: a pool client's RDMA side (docs/cluster.md, "The RDMA data path"). The client never
// posts work: the nodes read its buffers (puts) and write into them (gets) with one-sided RDMA.
// So it owns only what the nodes need to reach its memory:
//
//   devices    the RdmaDevices it uses (cluster.rdma.devices; default every device with an active
//              port), without completion threads
//   memory     what register_buffer() gives it (SGLang's host KV pool), registered on every device
//              for remote read and write, split at max_mr_size; describe() turns a caller's
//              buffers into descriptors ({addr, len, rkey}) on a lane's device, and refuses
//              (the call then goes over TCP) when a byte is not registered
//   lanes      per member, up to lanes_per_peer RC queue pairs (created on first use, over the
//              devices in turn), each connected by an RDMA_CONNECT exchange on the member's TCP
//              connection; shared by every thread. A lane's announced regions follow
//              register_buffer (an RDMA_CONNECT with the same endpoint updates them).
//
// Lane states: down (never connected, or failed: reconnect after a backoff of 100 ms doubling
// to 5 s; 30 s when the member serves no RDMA) -> connecting (one thread runs its RDMA_CONNECT;
// the others use TCP meanwhile) -> up. A request over a lane that does not end with its reply
// (timeout, reset, refusal) or whose reply says the lane broke puts the lane's QP in ERROR at
// once (lane_failed): no late WRITE or READ of the node can touch the caller's buffers after the
// call returns; the lane is then reset and connected again.
//
// After fork() the child never uses the parent's lanes (it falls back to TCP).
// Thread-safe: mu_ guards the member map and the generation; each lane has its own mutex.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/counters.h"
#include "common/note_log.h"
#include "common/sg_list.h"
#include "node/peer_protocol.h"
#include "transport/rdma/queue_pair.h"
#include "transport/rdma/rdma_device.h"
#include "transport/stream.h"

namespace mch::cluster {

struct RdmaClientOptions {
  std::vector<std::string> devices;  // empty: every device with an active port
  int gid_index = -1;
  uint32_t lanes_per_peer = 2;
};

struct ClientLane {
  enum class State { kDown, kConnecting, kUp };
  uint16_t id = 0;
  rdma::RdmaDevice* dev = nullptr;
  std::mutex mu;  // guards the fields below
  State state = State::kDown;
  Clock::time_point retry_at{};
  uint32_t failures = 0;
  std::unique_ptr<rdma::QueuePair> qp;
  uint64_t node_instance = 0;
  uint64_t regions_gen = 0;    // the registrations the node knows
  uint64_t pending_gen = 0;    // the registrations an RDMA_CONNECT in flight announces
  bool regions_only = false;   // that RDMA_CONNECT only updates the regions
};

struct RdmaClientStats {
  std::string transport = "tcp", provider, devices;
  uint64_t registered_bytes = 0, memory_regions = 0, lanes_up = 0;
  uint64_t connects = 0, connect_failures = 0, region_updates = 0, lane_failures = 0, rdma_requests = 0,
           tcp_fallbacks = 0, unregistered = 0;
  template <class V>
  void visit(V& v) const {
    v.info("transport", transport);
    v.info("provider", provider);
    v.info("devices", devices);
    for (auto [k, x] : Fields{{"registered_bytes", registered_bytes}, {"memory_regions", memory_regions},
                              {"lanes_up", lanes_up}})
      v.gauge(k, x);
    for (auto [k, x] : Fields{{"connects", connects}, {"connect_failures", connect_failures},
                              {"region_updates", region_updates}, {"lane_failures", lane_failures},
                              {"rdma_requests", rdma_requests}, {"tcp_fallbacks", tcp_fallbacks},
                              {"unregistered", unregistered}})
      v.counter(k, x);
  }
};

class RdmaClient {
 public:
  RdmaClient(const rdma::VerbsApi& api, const RdmaClientOptions& opt);  // throws EngineError
  ~RdmaClient();
  RdmaClient(const RdmaClient&) = delete;
  RdmaClient& operator=(const RdmaClient&) = delete;

  uint64_t instance() const { return instance_; }
  // Registers [p, p+n) on every device; 0 or an errno value with *err. Unregister by start.
  int register_buffer(void* p, uint64_t n, std::string* err);
  bool unregister_buffer(void* p);

  // The lane a request to `member` (its "id@host:port") should use: an up lane with current
  // regions, or nullptr (use TCP) with *connect set to a lane this thread must connect first
  // (connect_request / connected / connect_failed), or neither.
  std::shared_ptr<ClientLane> pick(const std::string& member, std::shared_ptr<ClientLane>* connect);
  // The RDMA_CONNECT for a lane pick() handed out (its QP reset to a fresh PSN unless only the
  // regions change). false with *err when it cannot be built (the lane goes down).
  bool connect_request(ClientLane& l, proto::RdmaConnect* out, std::string* err);
  // false: the lane could not connect to the node's endpoint (it goes down).
  bool connected(ClientLane& l, const proto::RdmaConnectReply& r);
  // code: the ERROR the node answered (0: the exchange failed otherwise).
  void connect_failed(ClientLane& l, int32_t code, const std::string& msg);
  // Appends key k's descriptors for the first `len` bytes of `sg` on l's device to *d (ends the
  // key). false (d unchanged) when a byte is not registered or the bounds would be exceeded.
  bool describe(const ClientLane& l, const SgList& sg, uint64_t len, proto::RdmaDescs* d);
  void fill_head(const ClientLane& l, proto::RdmaDescs* d);
  // A request over l did not end well, or the node said the lane broke (see the header).
  void lane_failed(ClientLane& l, const std::string& why);
  void count_request(bool rdma) { (rdma ? rdma_requests_ : tcp_fallbacks_)++; }
  void count_unregistered() { unregistered_++; }

  RdmaClientStats stats() const;
  std::vector<Note> take_notes() { return notes_.take(); }

 private:
  std::vector<std::shared_ptr<ClientLane>>& lanes_of(const std::string& member);
  void back_off(ClientLane& l, std::chrono::milliseconds base);

  const rdma::VerbsApi& api_;
  const RdmaClientOptions opt_;
  const uint64_t instance_;
  const uint64_t fork_gen_;
  std::vector<std::unique_ptr<rdma::RdmaDevice>> devices_;
  mutable std::mutex mu_;  // guards members_, gen_
  std::map<std::string, std::vector<std::shared_ptr<ClientLane>>> members_;
  uint64_t gen_ = 1;  // bumped by every (un)registration
  std::atomic<uint32_t> rr_{0};
  std::atomic<uint64_t> connects_{0}, connect_failures_{0}, region_updates_{0}, lane_failures_{0},
      rdma_requests_{0}, tcp_fallbacks_{0}, unregistered_{0};
  NoteLog notes_{64};
};

}  // namespace mch::cluster
