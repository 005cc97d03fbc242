// BatchPlan: where each key of a pool client's batch may go and how far it has got: its
// candidate targets (cluster_view.h), the next one to try, how many of them come from the
// current view (the rest are the previous view's, asked during the grace window), and, for
// writes, the acknowledgements it has and needs. Owned by one call (pool_client.cpp).
#pragma once
#include <cstdint>
#include <vector>

namespace mch::cluster {

struct BatchPlan {
  explicit BatchPlan(size_t n) : cands(n), current(n, 0), pos(n, 0), todo(n, 0), want(n, 0), need(n, 0),
                                 acks(n, 0), last_err(n, 0), refused(n, 0), sent_to(n) {}
  std::vector<std::vector<uint16_t>> cands;
  std::vector<uint32_t> current;   // candidates from the current view
  std::vector<uint32_t> pos;       // next candidate to try
  std::vector<uint8_t> todo;       // still to route
  // writes
  std::vector<uint32_t> want;      // holders to write (min(R, available candidates))
  std::vector<uint32_t> need;      // acknowledgements that make the put succeed
  std::vector<uint32_t> acks;
  std::vector<int32_t> last_err;   // the last refusal, reported when the quorum is not met
  std::vector<uint8_t> refused;    // a refusal every member would repeat (a bad key or size)
  std::vector<std::vector<uint16_t>> sent_to;  // this round's targets of each key

  bool any_todo() const {
    for (uint8_t t : todo)
      if (t) return true;
    return false;
  }
};

}  // namespace mch::cluster
