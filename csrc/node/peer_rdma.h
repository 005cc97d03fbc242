// PeerRdma: a cluster member's RDMA side (docs/cluster.md, "The RDMA data path"). The node drives
// every one-sided operation: it answers a get with RDMA WRITEs from its arena into the client's
// registered buffers and serves a put with RDMA READs from the client's buffers into reserved
// slots, so its own memory is never exposed to a peer (its regions carry no remote access).
//
// Owns:
//   devices    the RdmaDevices it serves on (cluster.rdma.devices; default every device with an
//              active port), each with its completion thread
//   the arena  registered once at start on every device (local access only), split at the
//              device's max_mr_size and pre-faulted
//   lanes      one RC queue pair per (client instance, lane number), made by RDMA_CONNECT on any
//              of that client's authenticated TCP connections, shared by all of them. A lane keeps
//              the client's announced regions: a descriptor outside them (or with another rkey)
//              is refused before anything is posted. A lane whose QP failed is "broken" until the
//              client connects it again (both sides reset: ERROR -> RESET -> INIT -> RTR -> RTS).
//              Lanes no session holds are dropped after a minute idle; at most max_lanes.
//
// Threading: connect(), find(), sweep() and stats() from any thread (lanes_mu_ guards the map);
// a lane's QP is shared by transfers (its mu shared) and reconnected alone (its mu exclusive).
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/counters.h"
#include "common/note_log.h"
#include "node/peer_protocol.h"
#include "node/peer_stats.h"
#include "transport/rdma/queue_pair.h"
#include "transport/rdma/rdma_device.h"

namespace mch {

struct PeerRdmaOptions {
  std::vector<std::string> devices;  // empty: every device with an active port
  int gid_index = -1;                // -1: the first non-zero GID of the port
  uint32_t window = 256;             // WRs outstanding per queue pair
  uint32_t signal_every = 16;
  uint32_t max_lanes = 1024;
  int idle_lane_s = 60;
};

struct NodeLane {
  uint64_t client = 0;
  uint16_t id = 0;
  rdma::RdmaDevice* dev = nullptr;
  std::shared_mutex mu;  // transfers hold it shared; (re)connecting holds it alone
  std::unique_ptr<rdma::QueuePair> qp;
  proto::RdmaEndpoint remote;                // the client's side it is connected to
  std::vector<proto::RemoteSeg> regions;     // the client's registered memory, ascending
  std::atomic<int64_t> last_used_ns{0};

  // Whether [s.addr, s.addr+s.len) lies inside one announced region with rkey s.rkey (mu held).
  bool admits(const proto::RemoteSeg& s) const;
};

struct RdmaNodeCounters {
  std::atomic<uint64_t> connects{0}, reconnects{0}, region_updates{0}, refused_connects{0}, stale_lanes{0},
      transfers{0}, failed_transfers{0}, lane_breaks{0}, wrs{0}, bytes_written{0}, bytes_read{0},
      refused_descriptors{0}, given_up{0};
};

class PeerRdma {
 public:
  // Opens the devices and registers the arena on each. Throws EngineError naming the device (and
  // the devices there are) when one cannot be used.
  PeerRdma(const rdma::VerbsApi& api, const PeerRdmaOptions& opt, uint8_t* arena, uint64_t arena_size,
           uint64_t instance);
  ~PeerRdma();
  PeerRdma(const PeerRdma&) = delete;
  PeerRdma& operator=(const PeerRdma&) = delete;

  // RDMA_CONNECT: sets the lane up (or reconnects it, or only updates its regions). 0 with
  // *reply, or an ERROR code (kErrRdmaLane) with *err.
  int32_t connect(const proto::RdmaConnect& c, proto::RdmaConnectReply* reply, std::string* err);
  // The connected lane a request names; nullptr with *err when it is unknown, for another node
  // instance, or broken (the client must connect it again).
  std::shared_ptr<NodeLane> find(const proto::RdmaDescs& d, std::string* err);
  // The arena's registered pieces of [p, p+len) on `dev`.
  bool local_pieces(rdma::RdmaDevice& dev, const uint8_t* p, uint64_t len, std::vector<rdma::MemoryPiece>* out) const;
  void sweep();  // drops lanes no session holds that have been idle for idle_lane_s

  uint64_t instance() const { return instance_; }
  const PeerRdmaOptions& options() const { return opt_; }
  RdmaNodeCounters& counters() { return ctr_; }
  RdmaNodeStats stats() const;
  std::vector<Note> take_notes() { return notes_.take(); }

 private:
  rdma::RdmaDevice* device_for(const proto::RdmaConnect& c);
  int32_t connect_lane(NodeLane& lane, const proto::RdmaConnect& c, std::string* err);

  const rdma::VerbsApi& api_;
  const PeerRdmaOptions opt_;
  const uint64_t instance_;
  uint8_t* arena_;
  std::vector<std::unique_ptr<rdma::RdmaDevice>> devices_;
  mutable std::mutex lanes_mu_;  // guards lanes_
  std::map<std::pair<uint64_t, uint16_t>, std::shared_ptr<NodeLane>> lanes_;
  RdmaNodeCounters ctr_;
  NoteLog notes_{64};
};

// The devices `api` offers, for messages ("mch_fake0, mch_fake1"; "none").
std::string device_names(const rdma::VerbsApi& api);
// The devices with an active port; throws EngineError (kInvalid) naming the devices when none.
std::vector<std::string> usable_device_names(const rdma::VerbsApi& api);
// Opens `names` (empty: every device with an active port) with `base`'s options; notes a warning
// when `api` is the fake. Throws EngineError naming the devices there are.
std::vector<std::unique_ptr<rdma::RdmaDevice>> open_rdma_devices(const rdma::VerbsApi& api,
                                                                 const std::vector<std::string>& names,
                                                                 const rdma::DeviceOptions& base, NoteLog& notes);
// The figures every RDMA side reports of its devices (transport, provider, device names,
// registered bytes and regions) into `s` (RdmaNodeStats, cluster::RdmaClientStats).
template <class S>
void device_figures(const rdma::VerbsApi& api, const std::vector<std::unique_ptr<rdma::RdmaDevice>>& devices, S* s) {
  s->transport = "rdma";
  s->provider = api.name;
  for (const auto& d : devices) {
    s->devices += (s->devices.empty() ? "" : ",") + d->name();
    s->registered_bytes += d->memory().bytes();
    s->memory_regions += d->memory().region_count();
  }
}
// A queue pair's endpoint as RDMA_CONNECT carries it, and back.
rdma::QpEndpoint to_qp_endpoint(const proto::RdmaEndpoint& e);
proto::RdmaEndpoint to_wire_endpoint(const rdma::QpEndpoint& q);

}  // namespace mch
