// PoolCounters and PoolStats: the pool client's figures (a rank's view of the cluster), one
// field list (common/counters.h) for Store.stats()["pool"]. PoolCounters are atomics updated by
// every calling thread; PoolStats is a snapshot with one section per peer.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "cluster/peer_table.h"
#include "cluster/rdma_client.h"
#include "common/counters.h"

namespace mch::cluster {

struct PoolCounters {
  std::atomic<uint64_t> puts{0}, gets{0}, exists{0}, rounds{0}, requests{0}, local_requests{0}, keys_put{0},
      keys_found{0}, keys_found_local{0}, keys_missed{0}, replica_reads{0}, grace_hits{0}, spilled_writes{0},
      quorum_failures{0}, request_failures{0}, view_refreshes{0}, bytes_sent{0}, bytes_received{0};
};

template <class V>
void visit_peer(V& v, const PeerReport& p) {
  v.info("address", p.address);
  v.flag("up", p.up);
  v.gauge("down_ms_left", static_cast<uint64_t>(p.down_ms_left));
  v.info("last_error", p.last_error);
  v.gauge("in_flight", static_cast<uint64_t>(p.in_flight));
  v.gauge("idle_links", p.idle_links);
  for (auto [k, x] : Fields{{"requests", p.requests}, {"failures", p.failures}, {"timeouts", p.timeouts},
                            {"bytes_sent", p.bytes_sent}, {"bytes_received", p.bytes_received}})
    v.counter(k, x);
}

struct PeerSection {
  const PeerReport& p;
  template <class V>
  void visit(V& v) const { visit_peer(v, p); }
};

struct PeersSection {
  const std::vector<PeerReport>& peers;
  template <class V>
  void visit(V& v) const {
    for (const PeerReport& p : peers) v.section(p.id.c_str(), PeerSection{p});
  }
};

struct PoolStats {
  uint64_t epoch = 0, members = 0, live_members = 0;
  bool in_grace = false;
  std::string self_id;
  uint64_t replicas = 0, write_quorum = 0, spill_depth = 0;
  uint64_t puts = 0, gets = 0, exists = 0, rounds = 0, requests = 0, local_requests = 0, keys_put = 0;
  uint64_t keys_found = 0, keys_found_local = 0, keys_missed = 0, replica_reads = 0, grace_hits = 0;
  uint64_t spilled_writes = 0, quorum_failures = 0, request_failures = 0, view_refreshes = 0;
  uint64_t bytes_sent = 0, bytes_received = 0;
  std::vector<PeerReport> peers;
  RdmaClientStats rdma;

  void take(const PoolCounters& c) {
    puts = c.puts, gets = c.gets, exists = c.exists, rounds = c.rounds, requests = c.requests;
    local_requests = c.local_requests, keys_put = c.keys_put, keys_found = c.keys_found;
    keys_found_local = c.keys_found_local, keys_missed = c.keys_missed, replica_reads = c.replica_reads;
    grace_hits = c.grace_hits, spilled_writes = c.spilled_writes, quorum_failures = c.quorum_failures;
    request_failures = c.request_failures, view_refreshes = c.view_refreshes;
    bytes_sent = c.bytes_sent, bytes_received = c.bytes_received;
  }

  template <class V>
  void visit(V& v) const {
    v.gauge("epoch", epoch);
    v.info("self_id", self_id);
    v.gauge("members", members);
    v.gauge("live_members", live_members);
    v.flag("in_grace", in_grace);
    for (auto [k, x] : Fields{{"replicas", replicas}, {"write_quorum", write_quorum}, {"spill_depth", spill_depth}})
      v.gauge(k, x);
    for (auto [k, x] : Fields{{"puts", puts}, {"gets", gets}, {"exists", exists}, {"rounds", rounds},
                              {"requests", requests}, {"local_requests", local_requests}, {"keys_put", keys_put},
                              {"keys_found", keys_found}, {"keys_found_local", keys_found_local},
                              {"keys_missed", keys_missed}, {"replica_reads", replica_reads},
                              {"grace_hits", grace_hits}, {"spilled_writes", spilled_writes},
                              {"quorum_failures", quorum_failures}, {"request_failures", request_failures},
                              {"view_refreshes", view_refreshes}, {"bytes_sent", bytes_sent},
                              {"bytes_received", bytes_received}})
      v.counter(k, x);
    v.section("peers", PeersSection{peers});
    v.section("rdma", rdma);
  }
};

}  // namespace mch::cluster
