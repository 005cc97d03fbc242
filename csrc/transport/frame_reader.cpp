// FrameReader: see frame_reader.h.
#include "transport/frame_reader.h"

#include <errno.h>
#include <string.h>

#include <algorithm>

namespace mch {

using namespace proto;

void FrameReader::compact() {
  if (start_ == 0) return;
  memmove(rx_.data(), rx_.data() + start_, end_ - start_);
  end_ -= start_;
  start_ = 0;
}

int FrameReader::fill(Stream& s, Clock::time_point deadline, int wake_fd, int* fd_out) {
  ssize_t r = s.recv_some(rx_.data() + end_, rx_.size() - end_, deadline, wake_fd, fd_out);
  if (r < 0) return static_cast<int>(-r);
  end_ += static_cast<size_t>(r);
  return 0;
}

int FrameReader::read_header(Stream& s, Header* h, bool idle_wait, Clock::time_point deadline, int timeout_ms,
                             int wake_fd, int* fd_out) {
  if (start_ == end_) {  // nothing buffered: the next frame cannot be here yet, wait for it first
    start_ = end_ = 0;
    int e = s.wait_readable(idle_wait ? Clock::time_point::max() : deadline, wake_fd);
    if (e) return e;
  }
  if (start_ + kHeaderSize > rx_.size()) compact();
  while (end_ - start_ < kHeaderSize) {
    bool started = end_ > start_;
    Clock::time_point d = !idle_wait ? deadline
                          : started ? Clock::now() + std::chrono::milliseconds(timeout_ms)
                                    : Clock::time_point::max();
    int e = fill(s, d, wake_fd, fd_out);
    if (e) return e;
  }
  *h = decode_header(rx_.data() + start_);
  return 0;
}

// Room for more of a frame of `total` bytes: at most doubling the buffer, never past the frame,
// so the memory a frame costs follows the bytes received, not the length its header announced.
void FrameReader::make_room(size_t total) {
  if (end_ < rx_.size()) return;
  compact();
  if (end_ < rx_.size()) return;
  rx_.resize(std::min(total, std::max(rx_.size() * 2, initial_)));
}

int FrameReader::read_body(Stream& s, const Header& h, Clock::time_point deadline, int wake_fd) {
  return read_part(s, static_cast<size_t>(h.body_len), deadline, wake_fd);
}

int FrameReader::read_part(Stream& s, size_t n, Clock::time_point deadline, int wake_fd) {
  const size_t total = kHeaderSize + n;
  while (end_ - start_ < total) {
    make_room(total);
    int e = fill(s, deadline, wake_fd, nullptr);
    if (e) return e;
  }
  return 0;
}

size_t FrameReader::take(uint8_t* dst, size_t n) {
  size_t k = std::min(n, end_ - start_);
  if (k) memcpy(dst, rx_.data() + start_, k);
  start_ += k;
  if (start_ == end_) {
    start_ = end_ = 0;
    if (rx_.size() > 4 * initial_) rx_.assign(initial_, 0);  // a huge table passed: shrink
  }
  return k;
}

void FrameReader::consume(const Header& h) {
  start_ += kHeaderSize + static_cast<size_t>(h.body_len);
  if (rx_.size() > 4 * initial_ && end_ == start_) {  // a huge frame passed: shrink
    rx_.assign(initial_, 0);
    start_ = end_ = 0;
  }
}

}  // namespace mch
