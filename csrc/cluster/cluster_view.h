// ClusterView: a rank's copy of the membership view (learned from its node's VIEW reply) and
// the candidate lists the pool client routes a key by.
//
// Targets are the members of the current view and of the previous one (within the grace
// window), each once; candidate lists name targets by index. For a key, with R replicas and S
// spill candidates:
//   write_candidates: the current view's top R + S live members, best first (the first R hold
//                     the key; the rest take a write a holder refused with NO_SPACE or could not
//                     take because it is down);
//   read_candidates:  the same R + S, with the R holders reordered so the local node comes
//                     first when it is one, else the least loaded; then, within the grace
//                     window, the previous view's R + S that are not listed yet.
// A view without members (the node is in no cluster) has one target, the local node.
//
// Immutable once built; any thread may use it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/placement.h"
#include "node/peer_protocol.h"
#include "transport/stream.h"

namespace mch::cluster {

struct Target {
  proto::MemberInfo member;
  bool local = false;  // this rank's own node (reached over the Unix socket)
};

class ClusterView {
 public:
  // received_at: when the VIEW reply arrived (grace_ms counts from then).
  ClusterView(const proto::ViewInfo& info, Clock::time_point received_at);

  uint64_t epoch() const { return epoch_; }
  const std::string& self_id() const { return self_id_; }
  const std::vector<Target>& targets() const { return targets_; }
  bool in_grace(Clock::time_point now) const { return has_previous_ && now < grace_until_; }
  const proto::ViewInfo& info() const { return info_; }

  // The candidate target indices of `key` into *out (see the header comment). load(t): the
  // requests in flight to target t (reads prefer the least loaded holder). read_candidates
  // returns how many come from the current view (the rest are the previous view's).
  void write_candidates(const std::string& key, uint32_t replicas, uint32_t spill, std::vector<uint16_t>* out) const;
  uint32_t read_candidates(const std::string& key, uint32_t replicas, uint32_t spill, Clock::time_point now,
                           const std::function<int64_t(uint16_t)>& load, std::vector<uint16_t>* out) const;

 private:
  uint16_t target_of(const proto::MemberInfo& m);
  static std::unique_ptr<Placement> live_placement(const std::vector<proto::MemberInfo>& ms,
                                                   std::vector<uint32_t>* member_of);
  void ranked(const Placement* p, const std::vector<uint16_t>& target_of_placed, const std::string& key, uint32_t n,
              std::vector<uint16_t>* out) const;

  proto::ViewInfo info_;
  uint64_t epoch_ = 0;
  std::string self_id_;
  bool has_previous_ = false;
  Clock::time_point grace_until_{};
  std::vector<Target> targets_;
  std::unique_ptr<Placement> current_, previous_;   // over the live members
  std::vector<uint16_t> current_targets_, previous_targets_;  // placement index -> target
};

}  // namespace mch::cluster
