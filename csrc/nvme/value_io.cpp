// Value I/O planning: see value_io.h.
#include "nvme/value_io.h"

#include <algorithm>

#include "common/aligned_buffer.h"

namespace mch {

namespace {

// Walks the value once, keeping the open bounce run between pieces.
class Planner {
 public:
  explicit Planner(ValueIoPlan* plan) : p_(plan) {}

  void segment(uint8_t* ptr, uint64_t n) {
    while (n > 0) {
      uint64_t take = step(ptr, n);
      cursor_ += take;
      ptr += take;
      n -= take;
    }
  }
  void finish() {
    p_->bounce_used = bounce_;
    if (run_open_) {
      bounce_ = align_up(bounce_);
      close_run();
    }
    p_->bounce_bytes = bounce_;
  }

 private:
  // Plans the next piece starting at ptr (value offset cursor_); returns its length.
  uint64_t step(uint8_t* ptr, uint64_t n) {
    auto addr = reinterpret_cast<uintptr_t>(ptr);
    if (is_aligned(cursor_) && is_aligned(addr) && n >= kBlock) {
      if (run_open_) close_run();  // cursor is aligned, so the run is a block multiple
      uint64_t take = n & ~(uint64_t)(kBlock - 1);
      p_->pieces.push_back({false, ptr, 0, take});
      return take;
    }
    if (!run_open_) {
      run_open_ = true;
      run_begin_ = bounce_;
    }
    // If memory and file offsets agree modulo the block size, stop at the next boundary so the
    // rest of the segment can go in place; otherwise bounce all of it.
    bool co_aligned = ((addr - cursor_) & (kBlock - 1)) == 0;
    uint64_t take = co_aligned ? std::min<uint64_t>(n, kBlock - (cursor_ & (kBlock - 1))) : n;
    p_->copies.push_back({bounce_, ptr, take});
    bounce_ += take;
    return take;
  }
  void close_run() {
    p_->pieces.push_back({true, nullptr, run_begin_, bounce_ - run_begin_});
    run_open_ = false;
  }

  ValueIoPlan* p_;
  size_t bounce_ = 0;  // bounce bytes consumed so far
  size_t run_begin_ = 0;
  bool run_open_ = false;
  uint64_t cursor_ = 0;  // value offset
};

}  // namespace

void plan_value_io(const SgList& segs, uint64_t len, ValueIoPlan* plan) {
  plan->clear();
  Planner p(plan);
  for (const Segment& seg : segs) {
    if (len == 0) break;
    uint64_t n = std::min(seg.len, len);
    len -= n;
    p.segment(seg.ptr, n);
  }
  p.finish();
}

}  // namespace mch
