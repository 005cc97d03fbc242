// PeerCounters and PeerStats: the figures of a node's TCP side (node/peer_server.h), one field
// list (common/counters.h) for the STATS reply ("peer" section), PeerServer.stats() in Python
// and the Prometheus series. PeerCounters are atomics updated by the poller and the workers;
// PeerStats is a snapshot.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

#include "common/counters.h"

namespace mch {

struct PeerCounters {
  std::atomic<uint64_t> sessions{0}, handshakes{0}, accepted{0}, authenticated{0}, auth_failures{0},
      version_mismatches{0}, bad_frames{0}, handshake_timeouts{0}, evicted_handshakes{0}, idle_timeouts{0},
      refused_connections{0}, peer_puts{0}, peer_gets{0}, views{0}, rdma_connects{0}, local_only_refused{0}, keys_put{0}, keys_got{0},
      bytes_received{0}, bytes_sent{0}, bytes_staged{0}, bytes_discarded{0};
};

// The RDMA side's figures (node/peer_rdma.h), the "rdma" section of PeerStats.
struct RdmaNodeStats {
  std::string transport = "tcp";  // "rdma" when this node serves the RDMA data path
  std::string provider, devices;  // provider name; device names, comma separated
  uint64_t lanes = 0, registered_bytes = 0, memory_regions = 0, completions = 0, poller_sleeps = 0;
  uint64_t connects = 0, reconnects = 0, region_updates = 0, refused_connects = 0, stale_lanes = 0;
  uint64_t transfers = 0, failed_transfers = 0, lane_breaks = 0, wrs = 0, bytes_written = 0, bytes_read = 0;
  uint64_t refused_descriptors = 0, given_up = 0;

  template <class V>
  void visit(V& v) const {
    v.info("transport", transport);
    v.info("provider", provider);
    v.info("devices", devices);
    for (auto [k, x] : Fields{{"lanes", lanes}, {"registered_bytes", registered_bytes},
                              {"memory_regions", memory_regions}})
      v.gauge(k, x);
    for (auto [k, x] : Fields{{"completions", completions}, {"poller_sleeps", poller_sleeps},
                              {"connects", connects}, {"reconnects", reconnects}, {"region_updates", region_updates},
                              {"refused_connects", refused_connects}, {"stale_lanes", stale_lanes},
                              {"transfers", transfers}, {"failed_transfers", failed_transfers},
                              {"lane_breaks", lane_breaks}, {"wrs", wrs}, {"bytes_written", bytes_written},
                              {"bytes_read", bytes_read}, {"refused_descriptors", refused_descriptors},
                              {"given_up", given_up}})
      v.counter(k, x);
  }
};

struct PeerStats {
  std::string listen, node_id;
  uint64_t port = 0, workers = 0;
  uint64_t sessions = 0, handshakes = 0;  // authenticated connections now; handshakes in progress
  uint64_t accepted = 0, authenticated = 0, auth_failures = 0, version_mismatches = 0, bad_frames = 0;
  uint64_t handshake_timeouts = 0, evicted_handshakes = 0, idle_timeouts = 0, refused_connections = 0;
  uint64_t requests = 0;
  LabeledCounts requests_by_op;  // op name -> frames served over TCP
  uint64_t local_only_refused = 0, keys_put = 0, keys_got = 0;
  uint64_t bytes_received = 0;   // value bytes received into store slots (PEER_PUT)
  uint64_t bytes_sent = 0;       // value bytes sent from pinned slots (PEER_GET)
  uint64_t bytes_staged = 0;     // of bytes_received, those copied out of the frame buffer
  uint64_t bytes_discarded = 0;  // value bytes read and dropped (no slot, or stored already)
  RdmaNodeStats rdma;

  void take(const PeerCounters& c) {
    sessions = c.sessions, handshakes = c.handshakes, accepted = c.accepted, authenticated = c.authenticated;
    auth_failures = c.auth_failures, version_mismatches = c.version_mismatches, bad_frames = c.bad_frames;
    handshake_timeouts = c.handshake_timeouts, evicted_handshakes = c.evicted_handshakes;
    idle_timeouts = c.idle_timeouts, refused_connections = c.refused_connections;
    local_only_refused = c.local_only_refused, keys_put = c.keys_put, keys_got = c.keys_got;
    bytes_received = c.bytes_received, bytes_sent = c.bytes_sent, bytes_staged = c.bytes_staged;
    bytes_discarded = c.bytes_discarded;
  }

  template <class V>
  void visit(V& v) const {
    v.info("listen", listen);
    v.info("node_id", node_id);
    v.gauge("port", port);
    v.gauge("workers", workers);
    v.gauge("sessions", sessions);
    v.gauge("handshakes", handshakes);
    for (auto [k, x] : Fields{{"accepted", accepted}, {"authenticated", authenticated},
                              {"auth_failures", auth_failures}, {"version_mismatches", version_mismatches},
                              {"bad_frames", bad_frames}, {"handshake_timeouts", handshake_timeouts},
                              {"evicted_handshakes", evicted_handshakes}, {"idle_timeouts", idle_timeouts},
                              {"refused_connections", refused_connections}, {"requests", requests}})
      v.counter(k, x);
    v.by_label("requests_by_op", "op", requests_by_op);
    for (auto [k, x] : Fields{{"local_only_refused", local_only_refused}, {"keys_put", keys_put},
                              {"keys_got", keys_got}, {"bytes_received", bytes_received},
                              {"bytes_sent", bytes_sent}, {"bytes_staged", bytes_staged},
                              {"bytes_discarded", bytes_discarded}})
      v.counter(k, x);
    v.section("rdma", rdma);
  }
};

}  // namespace mch
