// FaultInjector: the NVMe engine's test hooks. A test arms a kind of fault for the next n
// operations of that kind, so error paths that a healthy disk never takes (a failed submit, a
// failed fdatasync, an I/O queue that cannot be set up, a write that stalls) are reached through
// the engine's own code paths. Disarmed (the normal case) each check is one relaxed atomic load.
//
// Any thread may arm or fire: every field is an atomic.
#pragma once
#include <atomic>
#include <cerrno>

namespace mch {

class FaultInjector {
 public:
  enum Kind {
    kWrite,    // a record write completes with -err
    kSubmit,   // io_uring submission fails with -err (EAGAIN/EBUSY are retried, others are not)
    kSync,     // fdatasync fails with err
    kAcquire,  // setting up an I/O queue fails
    kStall,    // a record write completion is delayed by `ms` (the write lock stays held)
    kKinds
  };

  void arm(Kind k, int times, int err = EIO, int ms = 0) {
    err_[k].store(err);
    ms_[k].store(ms);
    left_[k].store(times);
  }
  // True when this operation of kind k is to fail (or stall); *err / *ms say how.
  bool fire(Kind k, int* err = nullptr, int* ms = nullptr) {
    if (left_[k].load(std::memory_order_relaxed) <= 0 || left_[k].fetch_sub(1) <= 0) return false;
    if (err) *err = err_[k].load();
    if (ms) *ms = ms_[k].load();
    return true;
  }

 private:
  std::atomic<int> left_[kKinds] = {};
  std::atomic<int> err_[kKinds] = {};
  std::atomic<int> ms_[kKinds] = {};
};

}  // namespace mch
