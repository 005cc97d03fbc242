// QueuePair: one reliable-connected queue pair on an RdmaDevice, its state machine and its
// send window.
//
//   local()    what the peer needs to connect to it: QP number, first PSN, GID, LID, MTU
//   connect()  INIT -> RTR (to the peer's endpoint) -> RTS
//   reset()    any state -> RESET -> INIT with a fresh PSN (reconnect after an error); a QP whose
//              handle was given up (a hung transfer) is created anew
//   run()      posts a Transfer in pieces that fit the window (at most `window` WRs outstanding on
//              the QP, a piece is one post_send chain whose last WR is signalled, and every
//              signal_every-th WR is too) and waits for it; see transfer.h for what completes when
//
// Failure: an error completion marks the QP broken (the NIC has moved it to ERROR: later WRs
// flush); transfers still to post on it fail without posting. A transfer not finished by its
// deadline forces the QP to ERROR so its WRs flush; if even the flush does not come within
// kFlushWait (a hung NIC), the QP's handle is destroyed (after which the NIC touches none of the
// memory its WRs named) and every transfer on it fails: only then may the caller reuse or release
// that memory. The owner reconnects with reset() + connect().
//
// Threading: run() from any number of threads at once (posting is serialised by mu_); local(),
// connect() and reset() while no run() is in progress (the owner's lock); on_completion() from
// the device's completion thread.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "transport/rdma/rdma_device.h"
#include "transport/rdma/transfer.h"

namespace mch::rdma {

// What one side of a connection tells the other (exchanged over the TCP control channel).
struct QpEndpoint {
  uint32_t qpn = 0;
  uint32_t psn = 0;
  Gid gid;
  uint16_t lid = 0;
  uint8_t mtu = 0;  // ibv_mtu
  LinkLayer link_layer = LinkLayer::kUnknown;
};

struct QpOptions {
  uint32_t window = 256;      // outstanding WRs at most
  uint32_t signal_every = 16; // and the last WR of each piece
  int access = 0;             // remote access this QP grants (a client's: read + write)
  uint32_t max_sge = 4;
};

class QueuePair {
 public:
  static constexpr std::chrono::milliseconds kFlushWait{2000};

  QueuePair(RdmaDevice& dev, const QpOptions& opt);  // creates it and moves it to INIT; throws EngineError
  ~QueuePair();
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;

  QpEndpoint local() const;
  int connect(const QpEndpoint& remote, std::string* err);  // 0 or an errno value
  int reset(std::string* err);
  // Posts and waits for `t`. 0: finished (look at t.item_failed()); ETIMEDOUT: abandoned (the
  // handle is destroyed; every item failed). Either way the NIC is done with t's memory.
  int run(Transfer& t, std::chrono::steady_clock::time_point deadline);
  // Moves the QP to ERROR (its WRs flush; an incoming RDMA op is refused).
  void force_error();

  bool broken() const;
  bool connected() const;
  uint32_t qpn() const { return qpn_; }
  uint32_t window() const { return window_; }
  RdmaDevice& device() { return dev_; }
  uint64_t posted_total() const { return posted_total_; }

  void on_completion(const WorkCompletion& wc);  // the completion thread

 private:
  void create();
  void destroy_handle();
  size_t post_pieces(Transfer& t, std::chrono::steady_clock::time_point deadline);
  int wait(Transfer& t, std::chrono::steady_clock::time_point deadline);

  RdmaDevice& dev_;
  const QpOptions opt_;
  uint32_t window_ = 0, signal_every_ = 1;
  QueuePairHandle* qp_ = nullptr;  // nullptr: given up (hung), reset() creates a new one
  uint32_t qpn_ = 0;
  uint32_t psn_ = 0;

  mutable std::mutex mu_;  // guards the fields below; serialises posting
  std::condition_variable window_cv_;
  uint64_t posted_ = 0, completed_ = 0;  // send-queue sequence numbers
  uint64_t posted_total_ = 0;
  bool broken_ = false, connected_ = false, dead_ = false;
  std::vector<Transfer*> inflight_;  // transfers in run(), told when the handle is given up
};

}  // namespace mch::rdma
