// ThreadPool and ThreadPoolQueue: the pread/pwrite fallback device layer (see io_queue.h).
#include <errno.h>
#include <limits.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>

#include "nvme/io_queue.h"

namespace mch {

// ---- ThreadPool ---------------------------------------------------------------------------

struct ThreadPool::Impl {
  std::mutex mu;  // guards jobs and stop
  std::condition_variable cv;
  std::deque<std::function<void()>> jobs;
  bool stop = false;
};

ThreadPool::ThreadPool(int threads) : impl_(new Impl) {
  if (threads < 1) threads = 1;
  for (int i = 0; i < threads; i++) {
    threads_.emplace_back([this] {
      for (;;) {
        std::function<void()> job;
        {
          std::unique_lock<std::mutex> lk(impl_->mu);
          impl_->cv.wait(lk, [this] { return impl_->stop || !impl_->jobs.empty(); });
          if (impl_->jobs.empty()) return;  // stop requested and nothing left
          job = std::move(impl_->jobs.front());
          impl_->jobs.pop_front();
        }
        job();
      }
    });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->jobs.push_back(std::move(job));
  }
  impl_->cv.notify_one();
}

// ---- ThreadPoolQueue ----------------------------------------------------------------------

namespace {

// Performs the whole request, looping over short transfers. Returns bytes or -errno.
int64_t do_vectored_io(int fd, const IoRequest& r) {
  std::vector<iovec> iov(r.iov, r.iov + r.iovcnt);
  size_t idx = 0;
  int64_t done = 0;
  uint64_t off = r.offset;
  while (idx < iov.size()) {
    int cnt = static_cast<int>(std::min<size_t>(iov.size() - idx, IOV_MAX));
    ssize_t n = r.op == IoOp::kRead ? preadv(fd, &iov[idx], cnt, static_cast<off_t>(off))
                                    : pwritev(fd, &iov[idx], cnt, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;  // unexpected end of file
    done += n;
    off += static_cast<uint64_t>(n);
    size_t left = static_cast<size_t>(n);
    while (idx < iov.size() && left >= iov[idx].iov_len) left -= iov[idx++].iov_len;
    if (left > 0) {
      iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
      iov[idx].iov_len -= left;
    }
  }
  return done;
}

class ThreadPoolQueue final : public IoQueue {
 public:
  ThreadPoolQueue(int fd, int depth, ThreadPool* pool) : fd_(fd), depth_(depth), pool_(pool) {}
  ~ThreadPoolQueue() override {
    // Never leave workers writing into memory that is about to be freed.
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [this] { return running_ == 0; });
  }

  void submit(const IoRequest& req) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      running_++;
    }
    inflight_++;
    pool_->run([this, req] {
      int64_t res = do_vectored_io(fd_, req);
      std::lock_guard<std::mutex> lk(mu_);
      done_.push_back({req.tag, res});
      running_--;
      cv_.notify_all();
    });
  }

  int reap(IoCompletion* out, int max, int min_complete) override {
    std::unique_lock<std::mutex> lk(mu_);
    if (min_complete > inflight_) min_complete = inflight_;
    cv_.wait(lk, [&] { return static_cast<int>(done_.size()) >= min_complete; });
    int n = 0;
    while (n < max && !done_.empty()) {
      out[n++] = done_.front();
      done_.pop_front();
    }
    inflight_ -= n;
    return n;
  }

  int inflight() const override { return inflight_; }
  int depth() const override { return depth_; }
  const char* name() const override { return "threads"; }

 private:
  int fd_;
  int depth_;
  ThreadPool* pool_;
  int inflight_ = 0;  // owner thread only
  std::mutex mu_;     // guards done_ and running_ (shared with workers)
  std::condition_variable cv_;
  std::deque<IoCompletion> done_;
  int running_ = 0;
};

}  // namespace

std::unique_ptr<IoQueue> make_thread_pool_queue(int fd, int depth, ThreadPool* pool) {
  return std::unique_ptr<IoQueue>(new ThreadPoolQueue(fd, depth, pool));
}

int64_t run_sync(IoQueue& q, const IoRequest& req) {
  q.submit(req);
  IoCompletion c;
  while (q.reap(&c, 1, 1) != 1)
    if (q.inflight() == 0) return -EIO;
  return c.result;
}

}  // namespace mch
