// FrameReader: bounded, deadline-driven reads of whole frames (frame.h) from a Stream, into one
// reusable buffer per connection. A header is read first so the caller can refuse a bad magic,
// version or size before any body byte is buffered (the node's per-op bounds: node/limits.h).
// The buffer grows only as body bytes actually arrive (at most doubling), so a header that
// announces a large body costs nothing until the peer sends it. Bytes of a following frame that
// arrive early stay buffered for the next call (pipelined requests).
// Owned and used by one connection's thread.
#pragma once
#include <cstdint>
#include <vector>

#include "transport/frame.h"
#include "transport/stream.h"

namespace mch {

class FrameReader {
 public:
  explicit FrameReader(size_t initial = 64 * 1024) : initial_(initial), rx_(initial) {}

  // Reads until a whole header is buffered, by `deadline`. With idle_wait (a server waiting for
  // the next request) the wait for the first byte is unbounded (only wake_fd ends it:
  // ESHUTDOWN) and once a frame has started every further wait is bounded by `timeout_ms`. *fd_out (optional) receives a
  // descriptor that rides on the frame. Returns 0 or an errno value.
  int read_header(Stream& s, proto::Header* h, bool idle_wait, Clock::time_point deadline, int timeout_ms,
                  int wake_fd, int* fd_out = nullptr);
  // Reads the rest of the frame `h` (its body_len checked by the caller) by `deadline`.
  int read_body(Stream& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
  // The body of the buffered frame `h`.
  proto::Reader body(const proto::Header& h) const {
    return proto::Reader(rx_.data() + start_ + proto::kHeaderSize, static_cast<size_t>(h.body_len));
  }
  // Drops the buffered frame `h`; a buffer grown for a huge frame shrinks back.
  void consume(const proto::Header& h);
  size_t buffered() const { return end_ - start_; }

  // Streamed frames: a body too large for any buffer (a PEER_PUT, whose value bytes go straight
  // into the store's slots). read_part() reads until the first n body bytes of `h` are buffered
  // (n bounded by the caller); part(n) is a Reader over them; consume_part(n) drops the header
  // and those n bytes, after which take() hands over body bytes that were read ahead and the
  // caller receives the rest from the stream itself.
  int read_part(Stream& s, size_t n, Clock::time_point deadline, int wake_fd);
  proto::Reader part(size_t n) const { return proto::Reader(rx_.data() + start_ + proto::kHeaderSize, n); }
  void consume_part(size_t n) { start_ += proto::kHeaderSize + n; }
  // Moves up to n buffered bytes to dst; returns how many.
  size_t take(uint8_t* dst, size_t n);

 private:
  int fill(Stream& s, Clock::time_point deadline, int wake_fd, int* fd_out);
  void compact();
  void make_room(size_t total);

  const size_t initial_;
  std::vector<uint8_t> rx_;  // [start_, end_) received and not yet consumed
  size_t start_ = 0, end_ = 0;
};

}  // namespace mch
