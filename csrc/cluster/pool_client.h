// PoolClient: a rank's handle on the whole pool (docs/cluster.md, "The pool client"). Same batch
// methods as NodeClient, so mooncake_hicache.Store drives it the same way; in cluster mode the
// Store's backend is a PoolClient around the host's NodeClient.
//
// Owns the local NodeClient (shared: the Python side restarts a dead node and swaps it in), a
// PeerTable of the other members (TCP links, created lazily, kept for reuse), and the current
// ClusterView, which it learns from the local node (VIEW) every view_refresh_ms and whenever a
// peer's reply carries another epoch. Ranks never talk to etcd.
//
// A batch call:
//   1. takes a snapshot of the view and a deadline (request_timeout_ms from now: no call lasts
//      longer, whatever fails);
//   2. computes each key's candidates (cluster_view.h) and sends, per round, ONE request per
//      member with all the keys that round routes to it: the remote requests go out together
//      (non-blocking), the local node's share is served over shared memory meanwhile, then one
//      poll() loop (exchange.h) collects the replies;
//   3. reads: a key found is done; a miss or a failure moves it to its next candidate (the other
//      replicas, the spill candidates, then within the grace window the previous view's holders)
//      in the next round. Writes: the first R available candidates get the bytes in parallel; a
//      holder that answers NO_SPACE or fails is replaced by the next candidate (spill); a put
//      succeeds when write_quorum holders acknowledged (0: all R it was sent to). Exists: one
//      round to every available candidate of each key.
//   4. A member that fails is down for cooldown_ms (peer_table.h): later calls skip it.
// With RDMA (PoolOptions::rdma, rdma_client.h) a put or get request to a member carries
// descriptors of the caller's registered buffers instead of the value bytes, over a lane of that
// member (connected on first use by an RDMA_CONNECT exchange in the same call); buffers that are
// not registered, and members or lanes that cannot do RDMA right now, go over TCP as above. A
// request over a lane that does not end with its reply puts the lane in error before the call
// returns; a request the node refuses for its lane is sent again inline in the same call.
// The GIL is released by the bindings for the whole call; nothing here touches Python except
// get_value's alloc callback.
//
// Threading: every method may be called from any number of threads. view_mu_ guards the view
// pointer and its refresh time; local_mu_ the local client pointer; peers and counters are
// thread-safe themselves. A call works on its own snapshot and its own exchanges.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cluster/batch_plan.h"
#include "cluster/cluster_view.h"
#include "cluster/exchange.h"
#include "cluster/peer_table.h"
#include "cluster/pool_stats.h"
#include "cluster/rdma_client.h"
#include "common/note_log.h"
#include "common/put_waves.h"
#include "common/sg_list.h"
#include "common/status.h"
#include "node/node_client.h"
#include "transport/auth.h"

namespace mch::cluster {

struct PoolOptions {
  uint32_t replicas = 1;
  uint32_t write_quorum = 0;      // acknowledgements a put needs; 0: every holder it was sent to
  uint32_t spill_depth = 1;       // candidates past the R holders a write may spill to (reads look there too)
  int connect_timeout_ms = 1000;  // connection set-up and handshake
  int request_timeout_ms = 5000;  // a whole batch call
  int cooldown_ms = 0;            // how long a failed member is skipped; 0: request_timeout_ms
  int view_refresh_ms = 500;      // how often the view is asked of the local node
  std::string secret;             // the cluster's shared secret ("" : no remote member can be reached)
  bool rdma = false;              // move value bytes with RDMA where possible (rdma_client.h)
  RdmaClientOptions rdma_options;
};

// What probe() learned about one member.
struct MemberProbe {
  std::string id, address;
  bool local = false, ok = false;
  std::string error;       // why not ok
  std::string stats_json;  // the member's STATS reply
  double rtt_ms = 0;
};

class PoolClient {
 public:
  // local: the host's node (nullptr: no local node, e.g. the node process's own prober).
  // Throws EngineError when opt.rdma is set and RDMA cannot be used (no provider, no device).
  PoolClient(std::shared_ptr<NodeClient> local, PoolOptions opt);
  ~PoolClient();
  PoolClient(const PoolClient&) = delete;
  PoolClient& operator=(const PoolClient&) = delete;

  void set_local(std::shared_ptr<NodeClient> local);  // a restarted node's client
  std::shared_ptr<NodeClient> local() const;

  // ---- the batch API (NodeClient's) ----
  // mode kKeepExisting: keys the pool holds already report 0 and are not written (the others
  // are put as with kReplace).
  void batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                 const std::vector<uint32_t>& depths, int32_t* results, PutMode mode = PutMode::kReplace);
  void batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results);
  // results[i]: the cheapest place that holds the key: 1 the local node's DRAM, 2 its NVMe only,
  // 3 a remote member's DRAM, 4 a remote member's NVMe only (the local node's codes plus
  // kRemoteTierOffset); 0 absent or no holder answered; negative Status for a bad key.
  static constexpr int32_t kRemoteTierOffset = 2;
  void batch_exists(const std::vector<std::string>& keys, int32_t* results);
  // Asks each key's first available holder to promote it NVMe -> DRAM, `step` pages a step (0:
  // the node's default); returns how many the holders queued.
  int32_t prefetch(const std::vector<std::string>& keys, uint32_t step = 0);
  int32_t remove(const std::string& key);
  int32_t remove_all();
  int64_t get_value(const std::string& key, const std::function<uint8_t*(size_t)>& alloc);
  int64_t value_size(const std::string& key);

  // ---- memory the nodes may read and write over RDMA (no-ops without RDMA) ----
  int register_buffer(void* p, uint64_t n, std::string* err);
  bool unregister_buffer(void* p);
  bool rdma() const { return rdma_ != nullptr; }

  // ---- the view and the members ----
  // Replaces the view (the node process feeds its own; ranks learn it from the node).
  void set_view(const proto::ViewInfo& v);
  // Asks the local node for its view now; false when it could not.
  bool refresh_view();
  std::shared_ptr<const ClusterView> view();
  // STATS of every member of the view, all at once within timeout_ms (TCP for peers, the Unix
  // socket for the local node); the health of each peer is updated from the outcome.
  std::vector<MemberProbe> probe(int timeout_ms, bool include_local);

  PoolStats stats() const;
  std::vector<Note> take_notes();
  void close();

 private:
  struct Call;
  struct Round;

  using Plan = BatchPlan;

  std::shared_ptr<const ClusterView> snapshot(bool refresh);
  Call begin_call();
  bool available(Call& c, uint16_t t);
  std::shared_ptr<Peer> peer_of(Call& c, uint16_t t);
  Clock::time_point cooldown_end() const;
  bool start_on(Peer& p, Exchange& e);
  void start_remote(Call& c, Round& r);
  void finish_remote(Call& c, Round& r);
  void book(Call& c, Round& r, uint16_t t);
  void give_back_links(Call& c, Round& r);
  void note_epoch(const Call& c, uint64_t epoch);
  // RDMA (pool_rdma.cpp): per target of the round, a lane to send its request over (nullptr:
  // TCP), after connecting the lanes that need it; the lane of a finished exchange put in error
  // when its request did not end well (true: the node refused the lane: resend inline).
  std::vector<std::shared_ptr<ClientLane>> rdma_lanes(Call& c, const Round& r);
  void connect_lanes(Call& c, Round& cr, const std::vector<std::shared_ptr<ClientLane>>& pending,
                     std::vector<std::shared_ptr<ClientLane>>* out);
  using InlineBuild = std::function<void(Exchange&, const std::vector<uint32_t>&)>;
  using RdmaBuild = std::function<void(Exchange&, const std::vector<uint32_t>&, const proto::RdmaDescs&,
                                       std::shared_ptr<ClientLane>, std::function<void(Exchange&)>)>;
  void build_remote(Call& c, Round& r, const std::vector<SgList>& bufs, const std::vector<uint64_t>& lens,
                    const InlineBuild& inline_build, const RdmaBuild& rdma_build);
  bool settle_lane(Exchange& e);
  bool describe_group(const ClientLane& l, const std::vector<uint32_t>& g, const std::vector<SgList>& bufs,
                      const std::vector<uint64_t>& lens, proto::RdmaDescs* d);

  // reads (pool_reads.cpp)
  bool assign_reads(Call& c, Plan& p, Round& r);
  void get_round(Call& c, Round& r, const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                 const std::vector<uint64_t>& caps, Plan& p, int64_t* results);
  static void note_holder(int32_t answer, bool local, int32_t* result);
  void keys_round(Call& c, Round& r, uint16_t op, const std::vector<std::string>& keys,
                  std::vector<std::vector<int32_t>>* per_target, uint32_t step = 0);
  void put_absent(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                  const std::vector<uint32_t>& depths, int32_t* results);
  int64_t get_value_from(Call& c, uint16_t t, const std::string& key, const std::function<uint8_t*(size_t)>& alloc);
  // writes (pool_writes.cpp)
  void plan_writes(Call& c, Plan& p, const std::vector<std::string>& keys, const std::vector<SgList>& values,
                   std::vector<uint64_t>* sizes, int32_t* results);
  void book_writes(const Round& r, const std::vector<std::vector<int32_t>>& per, Plan& p);
  bool assign_writes(Call& c, Plan& p, Round& r, const std::vector<uint64_t>& sizes);
  void put_round(Call& c, Round& r, const std::vector<std::string>& keys, const std::vector<SgList>& values,
                 const std::vector<uint32_t>& depths, const std::vector<uint64_t>& sizes,
                 std::vector<std::vector<int32_t>>* per_target);

  // After close(): fills n results with CLOSED and returns true.
  template <class T>
  bool refuse_closed(T* results, size_t n) const {
    if (!closed_.load()) return false;
    for (size_t i = 0; i < n; i++) results[i] = status_code(Status::kClosed);
    return true;
  }

  const PoolOptions opt_;
  std::unique_ptr<Secret> secret_;
  mutable std::mutex local_mu_;  // guards local_
  std::shared_ptr<NodeClient> local_;
  mutable std::mutex view_mu_;  // guards view_, refreshed_at_, stale_
  std::shared_ptr<const ClusterView> view_;
  Clock::time_point refreshed_at_{};
  bool stale_ = true;
  std::mutex refresh_mu_;  // one refresh at a time (others use the current view)
  PeerTable peers_;
  std::unique_ptr<RdmaClient> rdma_;
  PoolCounters ctr_;
  NoteLog notes_{64};
  std::atomic<bool> closed_{false};
};

}  // namespace mch::cluster
