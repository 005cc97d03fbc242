// PoolClient::Call and PoolClient::Round: the state of one batch call and of one of its rounds
// (pool_client.h has the flow). Private to the pool client's .cpp files; owned by one call.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "cluster/pool_client.h"

namespace mch::cluster {

struct PoolClient::Call {
  std::shared_ptr<const ClusterView> view;
  std::shared_ptr<NodeClient> local;
  std::vector<std::shared_ptr<Peer>> peers;  // per target, looked up on first use
  std::vector<uint8_t> stale_retried;        // per target: the one retry on a fresh link is used
  Clock::time_point deadline;
  bool is_local(uint16_t t) const { return local && view->targets()[t].local; }
};

struct PoolClient::Round {
  explicit Round(size_t targets) : groups(targets), ex(targets), failed(targets, 0), bytes(targets, 0) {}
  std::vector<std::vector<uint32_t>> groups;  // per target: the batch indices sent to it
  std::vector<std::unique_ptr<Exchange>> ex;  // per remote target with a group
  std::vector<uint8_t> failed;                // per target: its request failed
  std::vector<uint64_t> bytes;                // per target: value bytes routed to it (puts)
};

}  // namespace mch::cluster
