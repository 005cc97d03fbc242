// ValueMover: how the value bytes of one PEER_PUT or PEER_GET travel between a peer and the
// store's slots: the seam the RDMA issue plugs into (docs/protocol.md, "RDMA (next)").
//
//   receive(slots)         a PEER_PUT's values, in table order, into the ranges of `slots`
//                          (reserved arena slots, or scratch for values that got no slot)
//   send(frame, values)    a PEER_GET's reply frame, then its values from the pinned slots
//
// InlineMover (data path kInline: TCP) moves them in the session's stream: receive hands over
// what the frame reader read ahead with the table (one small copy), then reads straight into the
// slots; send is one writev of the frame and the slots. An RDMA mover would instead read / write
// the peer's registered memory named by descriptors in the table and send only the frame.
//
// A mover belongs to one session and is used by the worker serving it.
#pragma once
#include <atomic>
#include <cstdint>

#include "node/session.h"
#include "transport/io_vec.h"

namespace mch {

class ValueMover {
 public:
  virtual ~ValueMover() = default;
  virtual int receive(IoVec& slots, Clock::time_point deadline, int wake_fd) = 0;
  virtual int send(const uint8_t* frame, size_t frame_len, const IoVec& values, Clock::time_point deadline) = 0;
};

class InlineMover final : public ValueMover {
 public:
  // staged: counts the value bytes copied out of the frame buffer.
  InlineMover(Session& s, std::atomic<uint64_t>& staged) : s_(s), staged_(staged) {}

  int receive(IoVec& slots, Clock::time_point deadline, int wake_fd) override {
    while (!slots.done() && s_.rx.buffered() > 0) {
      const iovec& c = slots.data()[0];
      size_t k = s_.rx.take(static_cast<uint8_t*>(c.iov_base), c.iov_len);
      staged_ += k;
      slots.advance(k);
    }
    return recv_iov(*s_.stream, slots, deadline, wake_fd);
  }

  int send(const uint8_t* frame, size_t frame_len, const IoVec& values, Clock::time_point deadline) override {
    out_.clear();
    out_.add(frame, frame_len);
    for (const iovec& v : values.ranges()) out_.add(v.iov_base, v.iov_len);
    return send_iov(*s_.stream, out_, deadline);
  }

 private:
  Session& s_;
  std::atomic<uint64_t>& staged_;
  IoVec out_;
};

}  // namespace mch
