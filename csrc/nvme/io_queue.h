// IoQueue: the device layer of the NVMe engine. One queue submits positioned reads and writes
// (each a list of iovecs on one contiguous file range) and reaps their completions.
//
// Two implementations:
//   - UringQueue (io_uring_queue.cpp): one io_uring per queue, optional registered (fixed)
//     staging buffer used for single-extent I/O that lives in it.
//   - ThreadPoolQueue (thread_pool_queue.cpp): preadv/pwritev on a shared worker pool, for
//     kernels or containers where io_uring cannot be set up.
//
// Threading: a queue is used by one thread at a time (the engine hands queues out from a pool).
// The worker pool behind ThreadPoolQueue is shared and internally locked.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace mch {

enum class IoOp : uint8_t { kRead, kWrite };

struct IoRequest {
  IoOp op = IoOp::kRead;
  uint64_t offset = 0;        // file offset of the first byte
  const iovec* iov = nullptr; // must stay valid until the completion is reaped
  int iovcnt = 0;
  uint64_t tag = 0;           // returned in the completion
};

struct IoCompletion {
  uint64_t tag = 0;
  int64_t result = 0;  // bytes transferred, or -errno
};

class IoQueue {
 public:
  virtual ~IoQueue() = default;
  // Queues a request. Requires inflight() < depth(). Submission to the device happens at the
  // latest in the next reap().
  virtual void submit(const IoRequest& req) = 0;
  // Submits what is queued, waits until at least `min_complete` completions are available
  // (0 = don't wait), and stores up to `max` of them. Returns the number stored. A request the
  // device layer could not submit completes with a negative errno like any failed I/O, so a
  // caller waiting for its requests always gets them back.
  virtual int reap(IoCompletion* out, int max, int min_complete) = 0;
  // The queue failed in a way it cannot recover from (a submission refused for good): requests
  // still complete (with errors), but its owner should replace it once it is idle.
  virtual bool broken() const { return false; }
  virtual int inflight() const = 0;
  virtual int depth() const = 0;
  virtual const char* name() const = 0;
};

class ThreadPool;

// Creates a queue of the given kind ("io_uring" or "threads") on `fd`. `staging` (may be null)
// is registered with io_uring as fixed buffer 0. Throws std::runtime_error when io_uring
// cannot be set up; `note` receives a one-line remark (e.g. fixed buffers unavailable).
// `faults` (may be null) is the engine's test hook (fault_injector.h).
class FaultInjector;
std::unique_ptr<IoQueue> make_uring_queue(int fd, int depth, void* staging, size_t staging_size,
                                          std::string* note, FaultInjector* faults = nullptr);
std::unique_ptr<IoQueue> make_thread_pool_queue(int fd, int depth, ThreadPool* pool);
bool uring_compiled_in();

// A fixed set of worker threads running closures; shared by all ThreadPoolQueues of an engine.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  void run(std::function<void()> job);
  int size() const { return static_cast<int>(threads_.size()); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::thread> threads_;
};

// Runs `req` synchronously on `q` (which must be idle) and returns the completion result
// (-EIO if the queue returned nothing, which a correct queue never does).
int64_t run_sync(IoQueue& q, const IoRequest& req);

}  // namespace mch
