// RdmaMover: see rdma_mover.h.
#include "node/rdma_mover.h"

#include <errno.h>

#include <mutex>

#include "common/status.h"

namespace mch {

using namespace proto;

bool RdmaMover::bind(const RdmaDescs& d, uint32_t keys, bool put, std::string* err) {
  lane_ = rdma_.find(d, err);
  if (!lane_) return false;
  d_ = &d;
  put_ = put;
  lane_down_ = false;
  fail_.assign(keys, 0);
  pending_.clear();
  t_.clear(put ? rdma::WrOpcode::kRdmaRead : rdma::WrOpcode::kRdmaWrite, keys);
  return true;
}

// WRs between [slot, slot+len) and key i's segments, after checking them against the lane's
// regions. A key that cannot be moved gets its failure now.
void RdmaMover::add(uint32_t i, const uint8_t* slot, uint64_t len) {
  const int32_t refused = status_code(Status::kInvalidParams);
  uint32_t a = d_->first[i], b = d_->first[i + 1];
  {
    std::shared_lock<std::shared_mutex> lk(lane_->mu);
    for (uint32_t j = a; j < b; j++) {
      if (lane_->admits(d_->segs[j])) continue;
      rdma_.counters().refused_descriptors++;
      fail_[i] = refused;  // outside the memory the client registered: never posted
      return;
    }
  }
  pieces_.clear();
  if (!rdma_.local_pieces(*lane_->dev, slot, len, &pieces_) ||
      !rdma::add_spans(t_, i, pieces_, d_->segs.data() + a, b - a, len, lane_->qp->device().attr().max_sge)) {
    fail_[i] = refused;
    return;
  }
  pending_.emplace_back(i, len);
}

void RdmaMover::put_value(uint32_t i, uint8_t* slot, uint64_t len) {
  if (slot && len) add(i, slot, len);  // no slot: nothing to read (an RDMA peer's bytes stay where they are)
}

void RdmaMover::get_value(uint32_t i, const uint8_t* slot, uint64_t len) {
  if (len) add(i, slot, len);
}

int RdmaMover::move(Clock::time_point deadline, int) {
  if (t_.size() == 0) return 0;
  RdmaNodeCounters& c = rdma_.counters();
  int rc;
  bool was_down = lane_down_;
  {
    std::shared_lock<std::shared_mutex> lk(lane_->mu);
    rc = lane_->qp->run(t_, deadline);
    lane_down_ = lane_down_ || lane_->qp->broken();
  }
  c.transfers++;
  c.wrs += t_.size();
  if (rc == ETIMEDOUT) c.given_up++;
  bool any_failed = false;
  const int32_t code = put_ ? status_code(Status::kIoError) : status_code(Status::kNotFound);
  uint64_t moved = 0;
  for (auto [i, len] : pending_) {
    if (t_.item_failed(i)) {
      fail_[i] = code;
      any_failed = true;
    } else {
      moved += len;
    }
  }
  (put_ ? c.bytes_read : c.bytes_written) += moved;
  if (any_failed) c.failed_transfers++;
  if (lane_down_ && !was_down) c.lane_breaks++;
  pending_.clear();
  t_.clear(t_.opcode(), static_cast<uint32_t>(fail_.size()));
  return 0;
}

int RdmaMover::send_reply(const uint8_t* frame, size_t frame_len, Clock::time_point deadline) {
  return s_.stream->send_all(frame, frame_len, deadline);
}

}  // namespace mch
