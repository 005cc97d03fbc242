// IoContext and IoContextPool: see io_context.h.
#include "nvme/io_context.h"

#include <limits.h>

#include <algorithm>
#include <stdexcept>

#include "common/error.h"

namespace mch {

bool IoContext::prepare_value(Slot& s, const SgList& segs, uint64_t len) {
  plan_value_io(segs, len, &plan);
  if (plan.pieces.size() + s.iov.size() > IOV_MAX) return false;
  uint8_t* base = s.bounce;
  if (plan.bounce_bytes > kSlotBounce) {
    s.big = AlignedBuffer(plan.bounce_bytes);
    base = s.big.data();
  }
  for (const IoPiece& p : plan.pieces) s.iov.push_back({p.bounce ? base + p.off : p.addr, p.len});
  s.copies.clear();
  for (const BounceCopy& c : plan.copies) s.copies.push_back({base + c.off, c.user, c.len});
  s.bounce_base = base;
  s.bounce_used = plan.bounce_used;
  s.bounce_total = plan.bounce_bytes;
  return true;
}

int IoContext::take_slot() {
  int i = free_slots.back();
  free_slots.pop_back();
  return i;
}

void IoContext::give_slot(int i) {
  slots[i].big = AlignedBuffer();
  free_slots.push_back(i);
}

int64_t IoContext::sync_io(IoOp op, uint64_t off, void* buf, size_t len) {
  iovec v{buf, len};
  IoRequest r;
  r.op = op;
  r.offset = off;
  r.iov = &v;
  r.iovcnt = 1;
  return run_sync(*q, r);
}

IoContextPool::IoContextPool(int fd, int queue_depth, int max_contexts, const std::string& want, NoteLog& notes,
                             FaultInjector* faults)
    : fd_(fd), depth_(queue_depth), max_contexts_(std::max(max_contexts, 1)), notes_(notes), faults_(faults) {
  if (want != "auto" && want != "io_uring" && want != "threads")
    throw EngineError(EngineError::kInvalid,
                      "tiers.nvme.io_backend must be auto, io_uring or threads, not '" + want + "'");
  backend_ = "threads";
  if (want != "threads") {
    try {
      make_uring_queue(fd_, 2, nullptr, 0, nullptr);
      backend_ = "io_uring";
    } catch (const std::exception& e) {
      if (want == "io_uring")
        throw EngineError(EngineError::kInvalid,
                          std::string("tiers.nvme.io_backend is io_uring but io_uring cannot be set up (") + e.what() +
                              "); set io_backend: auto or threads");
      notes_.warn(std::string("io_uring unavailable (") + e.what() + "); using the pread/pwrite thread-pool backend");
    }
  }
  if (backend_ == "threads") pool_.reset(new ThreadPool(std::min(std::max(depth_, 1), 32)));
}

IoContextPool::~IoContextPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_.clear();
    all_.clear();  // queues drain what the kernel still owns before their memory goes
  }
  pool_.reset();
}

std::unique_ptr<IoContext> IoContextPool::make_context() {
  std::unique_ptr<IoContext> c(new IoContext);
  const int depth = depth_;
  c->staging = AlignedBuffer(depth * (kBlock + IoContext::kSlotBounce) + kBlock);
  c->slots.resize(depth);
  for (int i = 0; i < depth; i++) {
    c->slots[i].header = c->staging.data() + i * kBlock;
    c->slots[i].bounce = c->staging.data() + depth * kBlock + i * IoContext::kSlotBounce;
    c->free_slots.push_back(depth - 1 - i);
  }
  c->scratch = c->staging.data() + depth * (kBlock + IoContext::kSlotBounce);
  c->cqes.resize(depth);
  if (backend_ == "io_uring") {
    std::string remark;
    c->q = make_uring_queue(fd_, depth, c->staging.data(), c->staging.size(), &remark, faults_);
    if (all_.empty()) {
      fixed_buffers_ = remark.empty();
      if (!remark.empty()) notes_.warn(remark);
    }
  } else {
    c->q = make_thread_pool_queue(fd_, depth, pool_.get());
  }
  return c;
}

IoContext* IoContextPool::acquire() {
  if (faults_ && faults_->fire(FaultInjector::kAcquire)) throw std::runtime_error("injected: no I/O queue");
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    if (!free_.empty()) {
      IoContext* c = free_.back();
      free_.pop_back();
      return c;
    }
    if (static_cast<int>(all_.size()) < max_contexts_) {
      all_.push_back(make_context());
      return all_.back().get();
    }
    cv_.wait(lk);
  }
}

void IoContextPool::release(IoContext* c) {
  std::unique_ptr<IoContext> dead;  // destroyed (its queue drained) after the lock is let go
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (c->q->broken()) {
      auto it = std::find_if(all_.begin(), all_.end(), [c](const std::unique_ptr<IoContext>& x) { return x.get() == c; });
      dead = std::move(*it);
      all_.erase(it);
    } else {
      free_.push_back(c);
    }
  }
  cv_.notify_one();
}

IoContextPool::Lease::Lease(IoContextPool& p, const char* what) : pool_(p) {
  try {
    ctx_ = p.acquire();
  } catch (const std::exception& e) {
    error_ = e.what();
    p.notes_.warn(std::string("cannot set up an I/O queue for ") + what + ": " + error_);
  }
}

}  // namespace mch
