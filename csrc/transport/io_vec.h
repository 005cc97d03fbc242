// IoVec: a list of byte ranges moved by writev/readv in pieces, with a cursor that advances over
// what the kernel moved (a partial transfer splits one range). The TCP data path sends a frame
// and the value bytes of a batch as one IoVec (no staging copy) and receives values straight
// into the caller's buffers the same way. A plain value used by one thread at a time.
// send_iov / recv_iov move a whole IoVec over a Stream, IOV_MAX ranges per call.
#pragma once
#include <limits.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "transport/stream.h"

namespace mch {

class IoVec {
 public:
  void clear() {
    v_.clear();
    pos_ = 0;
    left_ = 0;
  }
  void add(const void* p, size_t n) {
    if (n == 0) return;
    v_.push_back(iovec{const_cast<void*>(p), n});
    left_ += n;
  }
  // The ranges not yet moved (at most IOV_MAX of them, what one syscall takes).
  const iovec* data() const { return v_.data() + pos_; }
  int count() const { return static_cast<int>(std::min<size_t>(v_.size() - pos_, IOV_MAX)); }
  uint64_t left() const { return left_; }
  // Every range added (before any advance()).
  const std::vector<iovec>& ranges() const { return v_; }
  bool done() const { return left_ == 0; }
  // Marks n more bytes as moved.
  void advance(size_t n) {
    left_ -= n;
    while (n > 0 && pos_ < v_.size()) {
      iovec& c = v_[pos_];
      size_t take = std::min(n, c.iov_len);
      c.iov_base = static_cast<uint8_t*>(c.iov_base) + take;
      c.iov_len -= take;
      n -= take;
      if (c.iov_len == 0) pos_++;
    }
    while (pos_ < v_.size() && v_[pos_].iov_len == 0) pos_++;
  }

 private:
  std::vector<iovec> v_;
  size_t pos_ = 0;
  uint64_t left_ = 0;
};

// Bytes of the ranges one syscall takes (v.data()[0 .. v.count())).
inline uint64_t head_bytes(const IoVec& v) {
  uint64_t n = 0;
  for (int i = 0; i < v.count(); i++) n += v.data()[i].iov_len;
  return n;
}

// Sends / receives everything v still describes by `deadline`. 0 or an errno value.
inline int send_iov(Stream& s, IoVec& v, Clock::time_point deadline) {
  while (!v.done()) {
    uint64_t n = head_bytes(v);
    int e = s.send_vec(v.data(), v.count(), deadline);
    if (e) return e;
    v.advance(n);
  }
  return 0;
}
inline int recv_iov(Stream& s, IoVec& v, Clock::time_point deadline, int wake_fd) {
  while (!v.done()) {
    uint64_t n = head_bytes(v);
    int e = s.recv_vec(v.data(), v.count(), deadline, wake_fd);
    if (e) return e;
    v.advance(n);
  }
  return 0;
}

}  // namespace mch
