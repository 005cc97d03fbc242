// IoContext and IoContextPool: the per-call I/O resources of the NVMe engine.
//
// An IoContext is one IoQueue (io_uring or thread pool) with its registered staging memory: a
// header block and a bounce area per in-flight slot, plus a scratch block for control I/O. One
// call uses one context at a time, so threads never share a ring.
//
// IoContextPool chooses the backend once (auto | io_uring | threads; io_uring that cannot be set
// up falls back to threads with a note), creates contexts on demand up to max_parallel_calls and
// hands them out; a context whose queue broke is destroyed when given back (the next acquire
// makes a fresh one). acquire()/release() may be called from any thread (mu_ guards the lists);
// a context itself is used by the one thread that holds it.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/keys.h"
#include "common/note_log.h"
#include "nvme/fault_injector.h"
#include "nvme/io_queue.h"
#include "nvme/page_index.h"
#include "nvme/record_format.h"
#include "nvme/value_io.h"

namespace mch {

struct IoContext {
  static constexpr size_t kSlotBounce = 32 << 10;  // per-slot registered bounce memory

  struct Copy {
    uint8_t* bounce;
    uint8_t* user;
    size_t len;
  };
  // One record in flight.
  struct Slot {
    uint8_t* header = nullptr;  // kBlock of registered staging
    uint8_t* bounce = nullptr;  // kSlotBounce of registered staging
    AlignedBuffer big;          // when a record needs more bounce memory than that
    std::vector<iovec> iov;
    std::vector<Copy> copies;
    uint8_t* bounce_base = nullptr;  // where this record's bounce spans start
    size_t bounce_used = 0, bounce_total = 0;
    int64_t expect = 0;  // bytes the I/O must move
    size_t item = 0;     // index in the batch
    PageLocation loc;
    KeyDigest digest;
    disk::SummaryEntry entry{};  // writes: what the summary will list
  };

  std::unique_ptr<IoQueue> q;
  AlignedBuffer staging;
  uint8_t* scratch = nullptr;  // one kBlock for control I/O (trailers, tombstones)
  std::vector<Slot> slots;
  std::vector<int> free_slots;
  std::vector<IoCompletion> cqes;
  ValueIoPlan plan;  // scratch for planning

  // Appends the value's iovecs to s.iov and fills s.copies and the bounce fields. Returns false
  // if the layout needs more iovecs than one I/O can take.
  bool prepare_value(Slot& s, const SgList& segs, uint64_t len);
  int take_slot();
  void give_slot(int i);
  // One synchronous single-buffer I/O; returns bytes moved or -errno.
  int64_t sync_io(IoOp op, uint64_t off, void* buf, size_t len);
  // Reaps at least min_complete completions (0: what is ready) and calls on_done for each.
  template <class F>
  void reap(int min_complete, F&& on_done) {
    int n = q->reap(cqes.data(), static_cast<int>(cqes.size()), min_complete);
    for (int i = 0; i < n; i++) on_done(cqes[i]);
  }
  // Submits `req` for slot si and collects what already finished, without waiting.
  template <class F>
  void submit(const IoRequest& req, F&& on_done) {
    q->submit(req);
    if (q->inflight() >= 2) reap(0, on_done);
  }
};

// Reads the block at each file offset in `offsets` (queue depth at a time, in chunks of 256) and
// calls got(i, block) for offsets[i]; block is null when that read failed. The context must be
// idle; its slots are not used.
template <class Got>
void read_blocks(IoContext& ctx, const std::vector<uint64_t>& offsets, Got got) {
  const uint64_t chunk = 256;
  AlignedBuffer buf(chunk * kBlock);
  std::vector<iovec> iov(chunk);
  for (uint64_t first = 0; first < offsets.size(); first += chunk) {
    uint64_t n = std::min<uint64_t>(chunk, offsets.size() - first), next = 0, done = 0;
    while (done < n) {
      for (; next < n && ctx.q->inflight() < ctx.q->depth(); next++) {
        iov[next] = {buf.data() + next * kBlock, kBlock};
        IoRequest r;
        r.op = IoOp::kRead;
        r.offset = offsets[first + next];
        r.iov = &iov[next];
        r.iovcnt = 1;
        r.tag = next;
        ctx.q->submit(r);
      }
      ctx.reap(1, [&](const IoCompletion& c) {
        got(first + c.tag, c.result == static_cast<int64_t>(kBlock) ? buf.data() + c.tag * kBlock : nullptr);
        done++;
      });
    }
  }
}

class IoContextPool {
 public:
  // Throws EngineError for an unknown backend or io_uring demanded but unavailable. `faults`
  // (may be null) is the engine's test hook.
  IoContextPool(int fd, int queue_depth, int max_contexts, const std::string& backend, NoteLog& notes,
                FaultInjector* faults = nullptr);
  ~IoContextPool();

  IoContext* acquire();  // waits while max_contexts are in use; may throw when a queue cannot be set up
  void release(IoContext* c);
  const std::string& backend() const { return backend_; }
  bool fixed_buffers() const { return backend_ == "io_uring" && fixed_buffers_; }

  // Holds a context for a scope. Never throws: when no context can be set up, it is empty
  // (false), error() says why, and a warning naming `what` went to the notes.
  class Lease {
   public:
    Lease(IoContextPool& p, const char* what);
    ~Lease() {
      if (ctx_) pool_.release(ctx_);
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    explicit operator bool() const { return ctx_ != nullptr; }
    IoContext& operator*() const { return *ctx_; }
    IoContext* operator->() const { return ctx_; }
    const std::string& error() const { return error_; }

   private:
    IoContextPool& pool_;
    IoContext* ctx_ = nullptr;
    std::string error_;
  };

 private:
  std::unique_ptr<IoContext> make_context();

  const int fd_, depth_, max_contexts_;
  NoteLog& notes_;
  FaultInjector* faults_;
  std::string backend_;
  bool fixed_buffers_ = false;
  std::unique_ptr<ThreadPool> pool_;  // threads backend only

  std::mutex mu_;  // guards all_ and free_
  std::condition_variable cv_;
  std::vector<std::unique_ptr<IoContext>> all_;
  std::vector<IoContext*> free_;
};

}  // namespace mch
