// QueuePair: see queue_pair.h (and transfer.h for the completion rules).
#include "transport/rdma/queue_pair.h"

#include <errno.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "common/error.h"

namespace mch::rdma {

namespace {
uint32_t random_psn() {
  static thread_local std::mt19937 rng(std::random_device{}());
  return rng() & 0xffffff;
}
}  // namespace

QueuePair::QueuePair(RdmaDevice& dev, const QpOptions& opt) : dev_(dev), opt_(opt) {
  window_ = std::max<uint32_t>(1, std::min(opt_.window, dev.attr().max_qp_wr ? dev.attr().max_qp_wr : opt_.window));
  signal_every_ = std::max<uint32_t>(1, std::min(opt_.signal_every, window_));
  std::string err;
  create();
  if (reset(&err) != 0) {
    destroy_handle();
    throw EngineError(EngineError::kIo, "cannot set up a queue pair on " + dev.name() + ": " + err);
  }
}

QueuePair::~QueuePair() { destroy_handle(); }

void QueuePair::create() {
  QpCaps caps;
  caps.max_send_wr = window_;
  caps.max_send_sge = std::max<uint32_t>(1, std::min(opt_.max_sge, dev_.attr().max_sge ? dev_.attr().max_sge : 1));
  uint32_t qpn = 0;
  QueuePairHandle* h = dev_.api().create_qp(dev_.pd(), dev_.cq(), caps, &qpn);
  if (!h) throw EngineError(EngineError::kIo, "cannot create a queue pair on " + dev_.name() + ": " + strerror(errno));
  {
    std::lock_guard<std::mutex> lk(mu_);
    qp_ = h;
    qpn_ = qpn;
    dead_ = false;
  }
  // Not under mu_: the completion thread takes dispatch_mu_ then mu_ (TSan found the inversion).
  // Nothing is posted on the new handle yet, so no completion of it can come before this.
  dev_.attach(qpn, this);
}

// The handle goes away: after destroy_qp the NIC touches none of its WRs' memory. Transfers
// still waiting on it are told (they fail whole).
void QueuePair::destroy_handle() {
  uint32_t qpn;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!qp_) return;
    qpn = qpn_;
  }
  dev_.detach(qpn);  // not under mu_: the completion thread takes dispatch_mu_ then mu_
  std::lock_guard<std::mutex> lk(mu_);
  dev_.api().destroy_qp(qp_);
  qp_ = nullptr;
  dead_ = broken_ = true;
  connected_ = false;
  for (Transfer* t : inflight_) t->abandon();
  window_cv_.notify_all();
}

QpEndpoint QueuePair::local() const {
  std::lock_guard<std::mutex> lk(mu_);
  QpEndpoint e;
  e.qpn = qpn_;
  e.psn = psn_;
  e.gid = dev_.gid();
  e.lid = dev_.lid();
  e.mtu = dev_.mtu();
  e.link_layer = dev_.link_layer();
  return e;
}

int QueuePair::reset(std::string* err) {
  bool dead;
  {
    std::lock_guard<std::mutex> lk(mu_);
    dead = dead_;
  }
  if (dead) {
    try {
      create();
    } catch (const EngineError& e) {
      *err = e.what();
      return EIO;
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  QpTransition to_reset;
  to_reset.to = QpState::kReset;
  QpTransition init;
  init.to = QpState::kInit;
  init.port = dev_.port();
  init.access = opt_.access;
  int e = dev_.api().modify_qp(qp_, to_reset);
  if (e == 0) e = dev_.api().modify_qp(qp_, init);
  if (e) {
    *err = std::string("queue pair to INIT: ") + strerror(e);
    return e;
  }
  psn_ = random_psn();
  posted_ = completed_ = 0;
  broken_ = connected_ = false;
  return 0;
}

int QueuePair::connect(const QpEndpoint& remote, std::string* err) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!qp_) {
    *err = "the queue pair was given up; reset it first";
    return EINVAL;
  }
  QpTransition rtr;
  rtr.to = QpState::kRtr;
  rtr.port = dev_.port();
  rtr.remote_qpn = remote.qpn;
  rtr.remote_psn = remote.psn;
  rtr.remote_gid = remote.gid;
  rtr.remote_lid = remote.lid;
  rtr.gid_index = dev_.gid_index();
  rtr.use_gid = dev_.link_layer() == LinkLayer::kEthernet || remote.lid == 0;
  rtr.mtu = std::min(dev_.mtu(), remote.mtu ? remote.mtu : dev_.mtu());
  QpTransition rts;
  rts.to = QpState::kRts;
  rts.psn = psn_;
  int e = dev_.api().modify_qp(qp_, rtr);
  if (e == 0) e = dev_.api().modify_qp(qp_, rts);
  if (e) {
    *err = std::string("queue pair to RTR/RTS: ") + strerror(e);
    return e;
  }
  connected_ = true;
  return 0;
}

void QueuePair::force_error() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!qp_) return;
  QpTransition t;
  t.to = QpState::kError;
  dev_.api().modify_qp(qp_, t);
  broken_ = true;
  window_cv_.notify_all();
}

bool QueuePair::broken() const {
  std::lock_guard<std::mutex> lk(mu_);
  return broken_;
}

bool QueuePair::connected() const {
  std::lock_guard<std::mutex> lk(mu_);
  return connected_ && !broken_;
}

// ---- posting ---------------------------------------------------------------------------------

// Posts as much of t as the window allows, piece by piece; returns how many WRs were posted.
size_t QueuePair::post_pieces(Transfer& t, std::chrono::steady_clock::time_point deadline) {
  size_t i = 0, n = t.wrs_.size();
  while (i < n) {
    std::unique_lock<std::mutex> lk(mu_);
    window_cv_.wait_until(lk, deadline, [&] { return broken_ || posted_ - completed_ < window_; });
    if (broken_ || !connected_ || posted_ - completed_ >= window_) break;
    size_t k = std::min<size_t>(window_ - (posted_ - completed_), n - i);
    for (size_t j = i; j < i + k; j++) {
      t.wrs_[j].signaled = (j + 1 - i) % signal_every_ == 0 || j == i + k - 1;
      t.tags_[j].seq = posted_ + 1 + (j - i);
    }
    int bad = 0;
    int e = dev_.api().post_send(qp_, &t.wrs_[i], static_cast<int>(k), &bad);
    size_t done = e ? static_cast<size_t>(std::max(bad, 0)) : k;
    posted_ += done;
    posted_total_ += done;
    i += done;
    t.posted(i);
    if (e) {  // the WRs before `bad` are on the queue: flush them so each one completes
      QpTransition err;
      err.to = QpState::kError;
      dev_.api().modify_qp(qp_, err);
      broken_ = true;
      break;
    }
  }
  return i;
}

int QueuePair::wait(Transfer& t, std::chrono::steady_clock::time_point deadline) {
  if (t.wait_until(deadline) && !t.abandoned()) {
    t.settle(false);
    return 0;
  }
  if (!t.abandoned()) {
    force_error();  // flush: every posted WR completes
    if (t.wait_until(std::chrono::steady_clock::now() + kFlushWait) && !t.abandoned()) {
      t.settle(false);
      return 0;
    }
    destroy_handle();  // a hung NIC: give the QP up
  }
  t.settle(true);
  return ETIMEDOUT;
}

int QueuePair::run(Transfer& t, std::chrono::steady_clock::time_point deadline) {
  t.begin();
  {
    std::lock_guard<std::mutex> lk(mu_);
    inflight_.push_back(&t);
  }
  post_pieces(t, deadline);
  t.posting_done();
  int e = wait(t, deadline);
  std::lock_guard<std::mutex> lk(mu_);
  inflight_.erase(std::find(inflight_.begin(), inflight_.end(), &t));
  return e;
}

void QueuePair::on_completion(const WorkCompletion& wc) {
  auto* tag = reinterpret_cast<Transfer::Tag*>(wc.wr_id);
  {
    std::lock_guard<std::mutex> lk(mu_);
    completed_ = std::max(completed_, tag->seq);
    if (wc.status != WcStatus::kSuccess) broken_ = true;
  }
  window_cv_.notify_all();
  tag->t->on_completion(tag->index, wc.status);
}

}  // namespace mch::rdma
