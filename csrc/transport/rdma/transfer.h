// Transfer: the one-sided work of one request: a list of RDMA WRITEs (a node answering a get:
// its slots -> the client's buffers) or READs (a node serving a put: the client's buffers -> its
// reserved slots), each WR carrying bytes of one item (a key of the batch). QueuePair::run()
// posts it in pieces that fit the QP's window and waits until every posted WR is accounted for.
//
// Completions: RC executes a QP's WRs in order, so a successful completion of WR j means every
// earlier WR of the QP succeeded too; an error completes the failing WR with its status and
// flushes all later ones. So after the run, the items of every WR past the last successful
// completion or at/after the first WR that completed in error (and of every WR never posted) are
// failed, whatever the NIC reports for unsignalled flushed WRs; all other items moved whole. The transfer is finished when the completion of its
// last posted WR (always signalled) has arrived: after it the NIC touches none of its memory.
//
// Built (clear(), add()) and run once by one thread; on_completion() comes from the device's completion thread.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "transport/rdma/memory_map.h"
#include "transport/rdma/verbs_api.h"

namespace mch::rdma {

// A range of the peer's registered memory (one descriptor of a request).
struct RemoteRange {
  uint64_t addr = 0, len = 0;
  uint32_t rkey = 0;
};

class Transfer {
 public:
  // Empties it for a new request of `items` items.
  void clear(WrOpcode op, uint32_t items) {
    op_ = op;
    wrs_.clear();
    sges_.clear();
    sge_first_.clear();
    item_of_.clear();
    failed_.assign(items, 0);
    bytes_ = 0;
  }
  // One WR for `item`: the local pieces sg[0..n) <-> the remote range starting at raddr.
  void add(uint32_t item, const Sge* sg, int n, uint64_t raddr, uint32_t rkey) {
    SendWr w;
    w.opcode = op_;
    w.num_sge = n;
    w.remote_addr = raddr;
    w.rkey = rkey;
    wrs_.push_back(w);
    sge_first_.push_back(static_cast<uint32_t>(sges_.size()));
    sges_.insert(sges_.end(), sg, sg + n);
    item_of_.push_back(item);
    for (int i = 0; i < n; i++) bytes_ += sg[i].length;
  }
  // Marks an item failed without a WR (its descriptors were refused before posting).
  void fail_item(uint32_t item) { failed_[item] = 1; }

  size_t size() const { return wrs_.size(); }
  uint64_t bytes() const { return bytes_; }
  WrOpcode opcode() const { return op_; }
  // After QueuePair::run(): whether an item's bytes did not all move.
  bool item_failed(uint32_t item) const { return item < failed_.size() && failed_[item]; }
  // The first error the NIC reported (kSuccess: none; kFlush only when nothing else was seen).
  WcStatus first_error() const { return first_error_; }

 private:
  friend class QueuePair;
  struct Tag {  // what a WR's wr_id points at
    Transfer* t;
    uint32_t index;
    uint64_t seq;  // its number on the QP's send queue
  };

  // QueuePair's side ---------------------------------------------------------------------------
  void begin() {
    tags_.resize(wrs_.size());
    for (size_t j = 0; j < wrs_.size(); j++) {
      tags_[j] = Tag{this, static_cast<uint32_t>(j), 0};
      wrs_[j].wr_id = reinterpret_cast<uint64_t>(&tags_[j]);
      wrs_[j].sg = sges_.data() + sge_first_[j];
    }
    std::lock_guard<std::mutex> lk(mu_);
    posted_ = 0;
    posting_done_ = false;
    finished_ = wrs_.empty();
    highest_ = -1;
    last_ok_ = -1;
    first_bad_ = -1;
    any_error_ = false;
    abandoned_ = false;
    first_error_ = WcStatus::kSuccess;
  }
  // Its QP was given up: no completion will come; nothing is known to have moved.
  void abandon() {
    std::lock_guard<std::mutex> lk(mu_);
    abandoned_ = finished_ = true;
    cv_.notify_all();
  }
  bool abandoned() {
    std::lock_guard<std::mutex> lk(mu_);
    return abandoned_;
  }
  void posted(size_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    posted_ = n;
  }
  void posting_done() {
    std::lock_guard<std::mutex> lk(mu_);
    posting_done_ = true;
    check_finished();
    cv_.notify_all();
  }
  void on_completion(uint32_t index, WcStatus st) {
    std::lock_guard<std::mutex> lk(mu_);
    int64_t j = index;
    if (j > highest_) highest_ = j;
    if (st == WcStatus::kSuccess) {
      if (j > last_ok_) last_ok_ = j;
    } else {
      any_error_ = true;
      if (st != WcStatus::kFlush && (first_bad_ < 0 || j < first_bad_)) first_bad_ = j;
      if (first_error_ == WcStatus::kSuccess || first_error_ == WcStatus::kFlush) first_error_ = st;
    }
    check_finished();
    if (finished_) cv_.notify_all();  // under the lock: the waiter cannot destroy us before
  }
  template <class Deadline>
  bool wait_until(Deadline d) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_until(lk, d, [this] { return finished_; });
  }
  // Marks the failed items once finished (or abandoned: then nothing is known to have moved).
  void settle(bool abandoned) {
    std::lock_guard<std::mutex> lk(mu_);
    // An error reported for WR j means every earlier WR executed (RC runs them in order).
    int64_t ok_upto = abandoned ? -1
                      : any_error_ ? std::max(last_ok_, first_bad_ - 1)
                                   : static_cast<int64_t>(posted_) - 1;
    for (size_t j = 0; j < wrs_.size(); j++)
      if (static_cast<int64_t>(j) > ok_upto) failed_[item_of_[j]] = 1;
    if (abandoned && first_error_ == WcStatus::kSuccess) first_error_ = WcStatus::kOther;
  }
  void check_finished() {
    finished_ = posting_done_ && (posted_ == 0 || highest_ >= static_cast<int64_t>(posted_) - 1);
  }

  WrOpcode op_ = WrOpcode::kRdmaWrite;
  std::vector<SendWr> wrs_;
  std::vector<Sge> sges_;
  std::vector<uint32_t> sge_first_, item_of_;
  std::vector<uint8_t> failed_;
  std::vector<Tag> tags_;
  uint64_t bytes_ = 0;

  std::mutex mu_;  // guards the completion state below
  std::condition_variable cv_;
  size_t posted_ = 0;
  bool posting_done_ = false, finished_ = true, any_error_ = false, abandoned_ = false;
  int64_t highest_ = -1, last_ok_ = -1, first_bad_ = -1;  // WR indexes
  WcStatus first_error_ = WcStatus::kSuccess;
};

// Adds to `t` the WRs for item `item` that move `len` bytes between the local pieces (registered
// memory, in order) and the remote ranges (in order; bytes past `len` are left alone): one WR per
// remote range, split further when it would need more than max_sge local pieces. false (nothing
// added) when the pieces or the ranges hold fewer than `len` bytes.
bool add_spans(Transfer& t, uint32_t item, const std::vector<MemoryPiece>& local, const RemoteRange* remote,
               size_t nremote, uint64_t len, uint32_t max_sge);

}  // namespace mch::rdma
