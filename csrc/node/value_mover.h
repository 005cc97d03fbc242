// ValueMover: how the value bytes of one PEER_PUT or PEER_GET travel between a peer and the
// store's slots, chosen by the data path of the request's table (docs/protocol.md):
//
//   put_value(i, slot, len)  PEER_PUT: key i's value goes into `slot` (a reserved arena slot), or
//                            nowhere (slot nullptr: it got no slot; its bytes are dropped)
//   get_value(i, slot, len)  PEER_GET: key i's value is `len` bytes at `slot` (pinned)
//   move()                   moves every value named since the last move()
//   failure(i)               0, or the Status key i gets because its value did not move (the key
//                            fails alone; the request and the connection go on)
//   send_reply(frame)        PEER_GET: the reply frame (and the values, when they travel with it)
//
// InlineMover (data path kInline: TCP) moves the bytes in the session's stream: a put's values
// are read straight into the slots (what the frame reader read ahead with the table is copied
// out of its buffer: bytes_staged); a get's values are sent after the frame in one writev; a
// value that cannot move fails the whole connection. RdmaMover (node/rdma_mover.h) reads and
// writes the peer's registered memory with one-sided RDMA instead and sends only the frame.
//
// A mover belongs to one session and is used by the worker serving it.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "node/session.h"
#include "transport/io_vec.h"

namespace mch {

class ValueMover {
 public:
  virtual ~ValueMover() = default;
  virtual void put_value(uint32_t i, uint8_t* slot, uint64_t len) = 0;
  virtual void get_value(uint32_t i, const uint8_t* slot, uint64_t len) = 0;
  // 0, or an errno value: the session's stream failed (close it; its tokens are released).
  virtual int move(Clock::time_point deadline, int wake_fd) = 0;
  virtual int32_t failure(uint32_t i) const = 0;
  // body_len of a PEER_GET reply whose table is `table` bytes.
  virtual uint64_t reply_body(uint64_t table) const = 0;
  // Extra header flags of the reply (kFlagLaneDown).
  virtual uint32_t reply_flags() const { return 0; }
  virtual int send_reply(const uint8_t* frame, size_t frame_len, Clock::time_point deadline) = 0;
};

class InlineMover final : public ValueMover {
 public:
  // staged: counts the value bytes copied out of the frame buffer; discarded: those dropped.
  InlineMover(Session& s, std::atomic<uint64_t>& staged, std::atomic<uint64_t>& discarded)
      : s_(s), staged_(staged), discarded_(discarded) {}

  void put_value(uint32_t, uint8_t* slot, uint64_t len) override {
    if (slot) return in_.add(slot, len);
    if (len && scratch_.empty()) scratch_.resize(kScratch);
    discarded_ += len;
    for (; len > 0; len -= std::min<uint64_t>(len, kScratch))
      in_.add(scratch_.data(), static_cast<size_t>(std::min<uint64_t>(len, kScratch)));
  }
  void get_value(uint32_t, const uint8_t* slot, uint64_t len) override {
    values_.add(slot, len);
    value_bytes_ += len;
  }
  int move(Clock::time_point deadline, int wake_fd) override {
    while (!in_.done() && s_.rx.buffered() > 0) {
      const iovec& c = in_.data()[0];
      size_t k = s_.rx.take(static_cast<uint8_t*>(c.iov_base), c.iov_len);
      staged_ += k;
      in_.advance(k);
    }
    int e = recv_iov(*s_.stream, in_, deadline, wake_fd);
    in_.clear();
    return e;
  }
  int32_t failure(uint32_t) const override { return 0; }
  uint64_t reply_body(uint64_t table) const override { return table + value_bytes_; }
  int send_reply(const uint8_t* frame, size_t frame_len, Clock::time_point deadline) override {
    out_.clear();
    out_.add(frame, frame_len);
    for (const iovec& v : values_.ranges()) out_.add(v.iov_base, v.iov_len);
    values_.clear();
    value_bytes_ = 0;
    return send_iov(*s_.stream, out_, deadline);
  }

 private:
  static constexpr size_t kScratch = 64 * 1024;  // landing zone of dropped value bytes
  Session& s_;
  std::atomic<uint64_t>& staged_;
  std::atomic<uint64_t>& discarded_;
  IoVec in_, values_, out_;
  uint64_t value_bytes_ = 0;
  std::vector<uint8_t> scratch_;  // allocated on first use
};

}  // namespace mch
