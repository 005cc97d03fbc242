// UringQueue: the io_uring device layer (see io_queue.h). Compiled only with liburing.
#include <stdexcept>
#include <string>

#include "nvme/io_queue.h"

#ifdef MCH_HAVE_URING
#include <errno.h>
#include <liburing.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <deque>

#include "nvme/fault_injector.h"

namespace mch {
namespace {

// Submission errors: EINTR is retried at once; EAGAIN/EBUSY (the kernel is short of resources
// or the completion ring is full) are retried after reaping or a short pause, a bounded number
// of times; any other error, or retries exhausted, fails every request not yet submitted (each
// completes with the error) and marks the queue broken: it never submits again, so those
// requests can never run later, and its owner replaces it.
class UringQueue final : public IoQueue {
 public:
  UringQueue(int fd, int depth, void* staging, size_t staging_size, std::string* note, FaultInjector* faults)
      : fd_(fd), depth_(depth), faults_(faults) {
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
    inflight_++;
    io_uring_sqe* sqe = broken_ ? nullptr : io_uring_get_sqe(&ring_);
    if (!sqe && !broken_) {  // SQ ring full of unsubmitted entries: push them to the kernel first
      flush(0);
      sqe = broken_ ? nullptr : io_uring_get_sqe(&ring_);
    }
    if (!sqe) {  // never dereferenced: the request fails like an I/O error
      failed_.push_back(IoCompletion{req.tag, broken_ ? -broken_err_ : -EBUSY});
      return;
    }
    prep(sqe, req);
    io_uring_sqe_set_data64(sqe, req.tag);
    queued_++;
  }

  int reap(IoCompletion* out, int max, int min_complete) override {
    int n = take_failed(out, max);
    const int submitted = inflight_ - queued_ - static_cast<int>(failed_.size());
    const int want = std::max(0, std::min(min_complete - n, submitted + queued_));
    flush(want);
    n += take_failed(out + n, max - n);
    io_uring_cqe* cqe;
    while (n < max && io_uring_peek_cqe(&ring_, &cqe) == 0) {
      out[n].tag = io_uring_cqe_get_data64(cqe);
      out[n].result = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      n++;
      inflight_--;
    }
    return n;
  }

  int inflight() const override { return inflight_; }
  int depth() const override { return depth_; }
  const char* name() const override { return "io_uring"; }
  bool broken() const override { return broken_; }

 private:
  static constexpr int kBusyRetries = 1000;  // x 1 ms pauses at most

  void prep(io_uring_sqe* sqe, const IoRequest& req) {
    const bool single = req.iovcnt == 1, write = req.op == IoOp::kWrite;
    if (single && in_fixed(req.iov[0])) {
      if (write)
        io_uring_prep_write_fixed(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset, 0);
      else
        io_uring_prep_read_fixed(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset, 0);
    } else if (single) {
      if (write)
        io_uring_prep_write(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset);
      else
        io_uring_prep_read(sqe, fd_, req.iov[0].iov_base, req.iov[0].iov_len, req.offset);
    } else if (write) {
      io_uring_prep_writev(sqe, fd_, req.iov, req.iovcnt, req.offset);
    } else {
      io_uring_prep_readv(sqe, fd_, req.iov, req.iovcnt, req.offset);
    }
  }

  // Submits the queued entries and waits for `wait_nr` completions (0: none).
  void flush(int wait_nr) {
    if (broken_) {  // only requests submitted before it broke are still to come
      if (wait_nr > 0 && failed_.empty() && inflight_ > 0) wait_submitted();
      return;
    }
    for (int busy = 0;;) {
      int rc = submit_once(wait_nr);
      if (rc >= 0) {
        queued_ -= std::min(queued_, rc);
        return;
      }
      if (rc == -EINTR) continue;
      if ((rc == -EAGAIN || rc == -EBUSY) && busy++ < kBusyRetries) {
        if (io_uring_cq_ready(&ring_) > 0) return;  // reaping what is done makes room
        usleep(1000);
        continue;
      }
      fail_queued(-rc);  // the failed requests are the completions the caller waits for
      return;
    }
  }

  int submit_once(int wait_nr) {
    int err = 0;
    if (faults_ && faults_->fire(FaultInjector::kSubmit, &err)) return -err;
    return wait_nr > 0 ? io_uring_submit_and_wait(&ring_, static_cast<unsigned>(wait_nr)) : io_uring_submit(&ring_);
  }

  // The queued entries will never be submitted: they complete now with `err`. Their SQEs stay in
  // the ring, which this queue never submits again.
  void fail_queued(int err) {
    broken_ = true;
    broken_err_ = err;
    // The ring hands entries to the kernel in order: the unsubmitted ones are the newest.
    unsigned head = *ring_.sq.khead, tail = ring_.sq.sqe_tail;
    for (unsigned i = head; i != tail; i++) {
      const io_uring_sqe& e = ring_.sq.sqes[i & *ring_.sq.kring_mask];
      failed_.push_back(IoCompletion{io_uring_sqe_get_data64_of(e), -err});
    }
    queued_ = 0;
  }
  static uint64_t io_uring_sqe_get_data64_of(const io_uring_sqe& e) { return e.user_data; }

  // Waits for one completion of an already submitted request (submits nothing).
  void wait_submitted() {
    io_uring_cqe* cqe;
    int rc;
    do {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    } while (rc == -EINTR);
  }

  int take_failed(IoCompletion* out, int max) {
    int n = 0;
    while (n < max && !failed_.empty()) {
      out[n++] = failed_.front();
      failed_.pop_front();
      inflight_--;
    }
    return n;
  }

  bool in_fixed(const iovec& v) const {
    auto p = static_cast<uint8_t*>(v.iov_base);
    return fixed_base_ && p >= fixed_base_ && p + v.iov_len <= fixed_base_ + fixed_size_;
  }

  int fd_;
  int depth_;
  FaultInjector* faults_;
  io_uring ring_{};
  int inflight_ = 0;  // requests given to submit() and not yet returned by reap()
  int queued_ = 0;    // of which prepared in the ring but not yet submitted
  std::deque<IoCompletion> failed_;  // of which failed without reaching the kernel
  bool broken_ = false;
  int broken_err_ = 0;
  uint8_t* fixed_base_ = nullptr;
  size_t fixed_size_ = 0;
};

}  // namespace

std::unique_ptr<IoQueue> make_uring_queue(int fd, int depth, void* staging, size_t staging_size,
                                          std::string* note, FaultInjector* faults) {
  return std::unique_ptr<IoQueue>(new UringQueue(fd, depth, staging, staging_size, note, faults));
}
bool uring_compiled_in() { return true; }

}  // namespace mch

#else  // no liburing at build time

namespace mch {
std::unique_ptr<IoQueue> make_uring_queue(int, int, void*, size_t, std::string*, FaultInjector*) {
  throw std::runtime_error("this build has no io_uring support (liburing was not found at build time)");
}
bool uring_compiled_in() { return false; }
}  // namespace mch

#endif
