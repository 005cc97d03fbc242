// NodeCounters and NodeStats: the node server's figures, one field list (common/counters.h) for
// the STATS reply, NodeServer.stats() in Python and the Prometheus series.
// NodeCounters are atomics, updated by every session thread; NodeStats is a snapshot.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "common/counters.h"
#include "node/peer_stats.h"
#include "node/protocol.h"
#include "tiering/tiered_stats.h"

namespace mch {

struct NodeCounters {
  std::atomic<uint64_t> connections{0}, connections_total{0}, requests{0}, bad_frames{0}, version_mismatches{0},
      refused_connections{0}, refused_peers{0}, hello_timeouts{0}, evicted_connections{0}, settings_mismatches{0},
      pins_held{0}, reservations_held{0}, released_pins{0}, released_reservations{0}, unknown_tokens{0},
      locations_held{0}, released_locations{0};
  std::atomic<uint64_t> by_op[proto::kOpCount] = {};

  void count_op(uint16_t op) {
    requests++;
    if (op < proto::kOpCount) by_op[op]++;
  }
};

struct NodeStats {
  int32_t pid = 0;
  std::string socket_path, instance;
  uint64_t protocol_version = proto::kVersion;
  bool arena_sealed = false;
  uint64_t connections = 0;          // open now
  uint64_t connections_total = 0;    // accepted since start
  uint64_t requests = 0;             // frames handled (all ops)
  LabeledCounts requests_by_op;      // op name -> frames
  uint64_t bad_frames = 0;           // connections closed for a malformed frame
  uint64_t version_mismatches = 0;   // connections refused for their protocol version
  uint64_t refused_connections = 0;  // at the connection cap with every connection busy
  uint64_t refused_peers = 0;        // clients of a uid the node does not serve
  uint64_t hello_timeouts = 0;       // connections closed for not saying HELLO in time
  uint64_t evicted_connections = 0;  // idle connections closed to make room for new clients
  uint64_t settings_mismatches = 0;  // clients refused for another settings fingerprint
  uint64_t pins_held = 0;            // pins clients hold now
  uint64_t reservations_held = 0;    // put slots reserved and not yet committed
  uint64_t released_pins = 0;        // unpinned by the node for clients that went away
  uint64_t released_reservations = 0;  // aborted by the node for clients that went away
  uint64_t unknown_tokens = 0;       // commit/unpin tokens the connection did not own (ignored)
  uint64_t locations_held = 0;       // NVMe regions pinned for clients' direct reads now
  uint64_t released_locations = 0;   // let go by the node for clients that went away
  std::vector<int32_t> client_pids;  // peers connected now

  // Snapshot of the counters (everything but identity and client_pids).
  void take(const NodeCounters& c) {
    connections = c.connections, connections_total = c.connections_total, requests = c.requests;
    bad_frames = c.bad_frames, version_mismatches = c.version_mismatches;
    refused_connections = c.refused_connections, refused_peers = c.refused_peers;
    hello_timeouts = c.hello_timeouts, evicted_connections = c.evicted_connections;
    settings_mismatches = c.settings_mismatches, pins_held = c.pins_held;
    reservations_held = c.reservations_held, released_pins = c.released_pins;
    released_reservations = c.released_reservations, unknown_tokens = c.unknown_tokens;
    locations_held = c.locations_held, released_locations = c.released_locations;
    requests_by_op.clear();
    for (int i = 1; i < proto::kOpCount; i++)
      requests_by_op.emplace_back(proto::op_name(static_cast<uint16_t>(i)), c.by_op[i].load());
  }

  template <class V>
  void visit(V& v) const {
    v.gauge("pid", static_cast<uint64_t>(pid));
    v.info("socket_path", socket_path);
    v.info("instance", instance);
    v.gauge("protocol_version", protocol_version);
    v.flag("arena_sealed", arena_sealed);
    v.gauge("connections", connections);
    v.counter("connections_total", connections_total);
    v.counter("requests", requests);
    v.by_label("requests_by_op", "op", requests_by_op);
    for (auto [k, x] : Fields{{"bad_frames", bad_frames}, {"version_mismatches", version_mismatches},
                              {"refused_connections", refused_connections}, {"refused_peers", refused_peers},
                              {"hello_timeouts", hello_timeouts}, {"evicted_connections", evicted_connections},
                              {"settings_mismatches", settings_mismatches}})
      v.counter(k, x);
    v.gauge("pins_held", pins_held);
    v.gauge("reservations_held", reservations_held);
    v.gauge("locations_held", locations_held);
    for (auto [k, x] : Fields{{"released_pins", released_pins}, {"released_reservations", released_reservations},
                              {"unknown_tokens", unknown_tokens}, {"released_locations", released_locations}})
      v.counter(k, x);
    v.pids("client_pids", client_pids);
  }
};

// What a STATS request returns: the store's sections ("dram", "tiering", "nvme") plus "node",
// and "peer" when the node serves peers over TCP (a cluster member).
struct NodeReport {
  TieredStats store;
  NodeStats node;
  bool has_peer = false;
  PeerStats peer;

  template <class V>
  void visit(V& v) const {
    store.visit(v);
    v.section("node", node);
    if (has_peer) v.section("peer", peer);
  }
};

}  // namespace mch
