// ClusterView: see cluster_view.h.
#include "cluster/cluster_view.h"

#include <algorithm>

namespace mch::cluster {

ClusterView::ClusterView(const proto::ViewInfo& info, Clock::time_point received_at)
    : info_(info), epoch_(info.epoch), self_id_(info.self_id) {
  has_previous_ = info.prev_epoch != 0 && info.grace_ms > 0;
  grace_until_ = received_at + std::chrono::milliseconds(info.grace_ms);
  if (info.members.empty()) {  // no cluster: the local node is the only target
    proto::MemberInfo self;
    self.id = self_id_;
    self.weight = 1;
    targets_.push_back(Target{self, true});
    return;
  }
  std::vector<uint32_t> placed;
  current_ = live_placement(info.members, &placed);
  for (uint32_t m : placed) current_targets_.push_back(target_of(info.members[m]));
  if (has_previous_) {
    previous_ = live_placement(info.prev_members, &placed);
    for (uint32_t m : placed) previous_targets_.push_back(target_of(info.prev_members[m]));
  }
}

uint16_t ClusterView::target_of(const proto::MemberInfo& m) {
  for (size_t t = 0; t < targets_.size(); t++) {
    const proto::MemberInfo& o = targets_[t].member;
    if (o.id == m.id && o.host == m.host && o.port == m.port) return static_cast<uint16_t>(t);
  }
  targets_.push_back(Target{m, !self_id_.empty() && m.id == self_id_});
  return static_cast<uint16_t>(targets_.size() - 1);
}

// The placement over the live members of ms (healthy, weight > 0); *member_of maps its indices to ms.
std::unique_ptr<Placement> ClusterView::live_placement(const std::vector<proto::MemberInfo>& ms,
                                                       std::vector<uint32_t>* member_of) {
  std::vector<PlacementMember> live;
  member_of->clear();
  for (uint32_t i = 0; i < ms.size(); i++) {
    if (!ms[i].healthy || !(ms[i].weight > 0)) continue;
    live.push_back(PlacementMember{ms[i].id, ms[i].weight});
    member_of->push_back(i);
  }
  return std::make_unique<Placement>(std::move(live));
}

// The top n of key under p, as targets, appended to *out unless listed already.
void ClusterView::ranked(const Placement* p, const std::vector<uint16_t>& target_of_placed, const std::string& key,
                         uint32_t n, std::vector<uint16_t>* out) const {
  if (!p || p->size() == 0) return;
  uint32_t idx[64];
  uint32_t k = p->holders(key, std::min<uint32_t>(n, 64), idx);
  for (uint32_t i = 0; i < k; i++) {
    uint16_t t = target_of_placed[idx[i]];
    if (std::find(out->begin(), out->end(), t) == out->end()) out->push_back(t);
  }
}

void ClusterView::write_candidates(const std::string& key, uint32_t replicas, uint32_t spill,
                                   std::vector<uint16_t>* out) const {
  out->clear();
  if (!current_) {
    out->push_back(0);
    return;
  }
  ranked(current_.get(), current_targets_, key, replicas + spill, out);
}

uint32_t ClusterView::read_candidates(const std::string& key, uint32_t replicas, uint32_t spill, Clock::time_point now,
                                      const std::function<int64_t(uint16_t)>& load, std::vector<uint16_t>* out) const {
  write_candidates(key, replicas, spill, out);
  const uint32_t current = static_cast<uint32_t>(out->size());
  if (!current_) return current;
  size_t holders = std::min<size_t>(replicas, out->size());
  auto first = out->begin(), last = out->begin() + static_cast<long>(holders);
  auto local = std::find_if(first, last, [this](uint16_t t) { return targets_[t].local; });
  if (local != last) {
    std::rotate(first, local, local + 1);  // the local holder first, the rest in rank order
  } else if (holders > 1) {
    std::stable_sort(first, last, [&load](uint16_t a, uint16_t b) { return load(a) < load(b); });
  }
  if (in_grace(now)) ranked(previous_.get(), previous_targets_, key, replicas + spill, out);
  return current;
}

}  // namespace mch::cluster
