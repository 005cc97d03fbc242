// RdmaMover: the ValueMover of data path kRdma (value_mover.h). The request's table named, per
// key, segments of the client's registered memory ({addr, len, rkey}); this mover checks them
// against the regions the client announced on its lane, then
//   put: RDMA READs the client's segments into the reserved slot (the node commits only after
//        the completions: a reader never sees a page being written),
//   get: RDMA WRITEs the pinned slot into the client's segments (the node unpins only after the
//        completions, and sends the status reply after them: RC ordering and the completion make
//        the bytes visible to the client before it reads the reply),
// as one Transfer per move() on the lane's queue pair (window, signalling: transport/rdma).
// A key whose transfer failed fails alone (IO_ERROR for a put: its slot is given back; a miss
// for a get); a lane whose queue pair broke is reported with kFlagLaneDown in the reply.
//
// Memory safety: QueuePair::run() returns only once the NIC is done with every WR it posted
// (completed, flushed, or the QP given up), so pins and reservations are released only after it.
//
// Owned by one PeerSession, used by the worker serving it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "node/peer_rdma.h"
#include "node/value_mover.h"

namespace mch {

class RdmaMover final : public ValueMover {
 public:
  RdmaMover(Session& s, PeerRdma& rdma) : s_(s), rdma_(rdma) {}

  // Binds a decoded request (its descriptors) to its lane. false with *err: the lane is unknown,
  // stale or broken (the node answers ERROR kErrRdmaLane).
  bool bind(const proto::RdmaDescs& d, uint32_t keys, bool put, std::string* err);

  void put_value(uint32_t i, uint8_t* slot, uint64_t len) override;
  void get_value(uint32_t i, const uint8_t* slot, uint64_t len) override;
  int move(Clock::time_point deadline, int wake_fd) override;
  int32_t failure(uint32_t i) const override { return i < fail_.size() ? fail_[i] : 0; }
  uint64_t reply_body(uint64_t table) const override { return table; }
  uint32_t reply_flags() const override { return lane_down_ ? proto::kFlagLaneDown : 0; }
  int send_reply(const uint8_t* frame, size_t frame_len, Clock::time_point deadline) override;

 private:
  void add(uint32_t i, const uint8_t* slot, uint64_t len);

  Session& s_;
  PeerRdma& rdma_;
  const proto::RdmaDescs* d_ = nullptr;
  std::shared_ptr<NodeLane> lane_;
  bool put_ = false, lane_down_ = false;
  rdma::Transfer t_;
  std::vector<int32_t> fail_;
  std::vector<rdma::MemoryPiece> pieces_;
  std::vector<std::pair<uint32_t, uint64_t>> pending_;  // (key, bytes) in t_
};

}  // namespace mch
