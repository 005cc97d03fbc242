// ViewState: the membership view a node serves to its local ranks (VIEW on the Unix socket) and
// to peers (VIEW over TCP, and the epoch in PEER_PUT / PEER_GET replies). The node process's
// membership (Python: static list or etcd) pushes every new view with set(); readers encode the
// latest. The grace window is kept as a deadline, so each reply says how much of it is left.
//
// Thread-safe: one mutex guards the view; epoch() is a lock-free read for hot replies.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>

#include "node/peer_protocol.h"
#include "transport/stream.h"

namespace mch {

class ViewState {
 public:
  // Replaces the view; v.grace_ms counts from now.
  void set(const proto::ViewInfo& v) {
    std::lock_guard<std::mutex> lk(mu_);
    view_ = v;
    grace_until_ = Clock::now() + std::chrono::milliseconds(v.grace_ms);
    epoch_.store(v.epoch);
  }
  // The view with the grace time left as of now.
  proto::ViewInfo get() const {
    std::lock_guard<std::mutex> lk(mu_);
    proto::ViewInfo v = view_;
    int left = ms_left(grace_until_);
    v.grace_ms = left < 0 ? 0 : static_cast<uint32_t>(left);
    return v;
  }
  void encode(proto::Writer& w) const { proto::encode_view(w, get()); }
  uint64_t epoch() const { return epoch_.load(); }

 private:
  mutable std::mutex mu_;  // guards view_, grace_until_
  proto::ViewInfo view_;
  Clock::time_point grace_until_{};
  std::atomic<uint64_t> epoch_{0};
};

}  // namespace mch
