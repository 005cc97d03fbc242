// UringQueue: the io_uring device layer (see io_queue.h). Compiled only with liburing.
#include <stdexcept>
#include <string>

#include "nvme/io_queue.h"

#ifdef MCH_HAVE_URING
#include <errno.h>
#include <liburing.h>
#include <string.h>

namespace mch {
namespace {

class UringQueue final : public IoQueue {
 public:
  UringQueue(int fd, int depth, void* staging, size_t staging_size, std::string* note)
      : fd_(fd), depth_(depth) {
    int rc = io_uring_queue_init(static_cast<unsigned>(depth), &ring_, 0);
    if (rc < 0) throw std::runtime_error(std::string("io_uring_queue_init: ") + strerror(-rc));
    if (staging && staging_size) {
      iovec iov{staging, staging_size};
      rc = io_uring_register_buffers(&ring_, &iov, 1);
      if (rc == 0) {
        fixed_base_ = static_cast<uint8_t*>(staging);
        fixed_size_ = staging_size;
      } else if (note) {
        *note = std::string("io_uring fixed buffers unavailable (") + strerror(-rc) +
                "; raise RLIMIT_MEMLOCK to enable them); using plain io_uring reads/writes";
      }
    }
  }
  ~UringQueue() override {
    // Drain what the kernel still owns before the memory it targets goes away.
    IoCompletion c[64];
    while (inflight_ > 0) reap(c, 64, 1);
    io_uring_queue_exit(&ring_);
  }

  void submit(const IoRequest& req) override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {  // SQ ring full of unsubmitted entries: push them to the kernel first
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    const bool single = req.iovcnt == 1;
    if (single && in_fixed(req.iov[0])) {
      if (req.op == IoOp::kRead)
        io_uring_prep_read_fixed(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset, 0);
      else
        io_uring_prep_write_fixed(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset, 0);
    } else if (single) {
      if (req.op == IoOp::kRead)
        io_uring_prep_read(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset);
      else
        io_uring_prep_write(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset);
    } else {
      if (req.op == IoOp::kRead)
        io_uring_prep_readv(sqe, fd_, req.iov, req.iovcnt, req.offset);
      else
        io_uring_prep_writev(sqe, fd_, req.iov, req.iovcnt, req.offset);
    }
    io_uring_sqe_set_data64(sqe, req.tag);
    inflight_++;
  }

  int reap(IoCompletion* out, int max, int min_complete) override {
    if (min_complete > inflight_) min_complete = inflight_;
    int rc;
    do {
      rc = min_complete > 0 ? io_uring_submit_and_wait(&ring_, static_cast<unsigned>(min_complete))
                            : io_uring_submit(&ring_);
    } while (rc == -EINTR);
    int n = 0;
    io_uring_cqe* cqe;
    while (n < max && io_uring_peek_cqe(&ring_, &cqe) == 0) {
      out[n].tag = io_uring_cqe_get_data64(cqe);
      out[n].result = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      n++;
    }
    inflight_ -= n;
    return n;
  }

  int inflight() const override { return inflight_; }
  int depth() const override { return depth_; }
  const char* name() const override { return "io_uring"; }

 private:
  bool in_fixed(const iovec& v) const {
    auto p = static_cast<uint8_t*>(v.iov_base);
    return fixed_base_ && p >= fixed_base_ && p + v.iov_len <= fixed_base_ + fixed_size_;
  }

  int fd_;
  int depth_;
  io_uring ring_{};
  int inflight_ = 0;
  uint8_t* fixed_base_ = nullptr;
  size_t fixed_size_ = 0;
};

}  // namespace

std::unique_ptr<IoQueue> make_uring_queue(int fd, int depth, void* staging, size_t staging_size,
                                          std::string* note) {
  return std::unique_ptr<IoQueue>(new UringQueue(fd, depth, staging, staging_size, note));
}
bool uring_compiled_in() { return true; }

}  // namespace mch

#else  // no liburing at build time

namespace mch {
std::unique_ptr<IoQueue> make_uring_queue(int, int, void*, size_t, std::string*) {
  throw std::runtime_error("this build has no io_uring support (liburing was not found at build time)");
}
bool uring_compiled_in() { return false; }
}  // namespace mch

#endif
