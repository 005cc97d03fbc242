// Exchange and run_exchanges: see exchange.h; frames are node/peer_protocol.h.
#include "cluster/exchange.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

#include <algorithm>

#include "transport/tcp.h"

namespace mch::cluster {

using namespace proto;

namespace {
constexpr uint64_t kErrorMaxBody = 12 + 4096;
constexpr size_t kDiscard = 64 * 1024;
}  // namespace

// ---- building requests ----------------------------------------------------------------------

void Exchange::begin_frame(uint16_t op, uint64_t table_hint) {
  op_ = op;
  table_hint_ = table_hint;
  lane_.reset();
  inline_build_ = nullptr;
  lane_down_ = false;
  rdma_out_ = 0;
  payload_.clear();
  payload_out_ = payload_in_ = 0;
  w_.begin(op, 0, 0, kVersion);  // request id and version are set when the link is known
}

void Exchange::build_put(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                         const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths,
                         const std::vector<SgList>& values) {
  n_ = static_cast<uint32_t>(idx.size());
  begin_frame(kPeerPut, put_reply_table(n_));
  encode_put_table(w_, keys, idx, sizes, depths);
  uint64_t payload = 0;
  for (uint32_t i : idx) {
    uint64_t left = sizes[i];
    for (const Segment& s : values[i]) {
      uint64_t k = std::min(left, s.len);
      if (k) payload_.push_back(Segment{s.ptr, k});
      left -= k;
    }
    payload += sizes[i];
  }
  uint8_t* f = const_cast<uint8_t*>(w_.finish());
  set_body_len(f, w_.size() - kHeaderSize + payload);
}

void Exchange::build_get(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                         const std::vector<uint64_t>& caps, Dest dest) {
  n_ = static_cast<uint32_t>(idx.size());
  begin_frame(kPeerGet, get_reply_table(n_));
  encode_get_table(w_, keys, idx, caps);
  caps_.clear();
  for (uint32_t i : idx) caps_.push_back(caps[i]);
  dest_ = std::move(dest);
  w_.finish();
}

void Exchange::build_put_rdma(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                              const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths,
                              const RdmaDescs& d, std::shared_ptr<ClientLane> lane,
                              std::function<void(Exchange&)> inline_build) {
  n_ = static_cast<uint32_t>(idx.size());
  begin_frame(kPeerPut, put_reply_table(n_));
  encode_rdma_put_table(w_, keys, idx, sizes, depths, d);
  w_.finish();
  for (uint32_t i : idx) rdma_out_ += sizes[i];
  lane_ = std::move(lane);
  inline_build_ = std::move(inline_build);
}

void Exchange::build_get_rdma(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                              const RdmaDescs& d, std::shared_ptr<ClientLane> lane,
                              std::function<void(Exchange&)> inline_build) {
  n_ = static_cast<uint32_t>(idx.size());
  begin_frame(kPeerGet, get_reply_table(n_));
  encode_rdma_get_table(w_, keys, idx, d);
  caps_.clear();
  for (uint32_t k = 0; k < n_; k++) caps_.push_back(d.bytes(k));
  dest_ = nullptr;
  w_.finish();
  lane_ = std::move(lane);
  inline_build_ = std::move(inline_build);
}

void Exchange::downgrade() {
  std::function<void(Exchange&)> f = std::move(inline_build_);
  if (f) f(*this);  // begin_frame drops the lane
}

void Exchange::build_rdma_connect(const RdmaConnect& c) {
  n_ = 0;
  begin_frame(kRdmaConnect, 8 + 28 + 4 + kMaxIdLen);
  encode_rdma_connect(w_, c);
  w_.finish();
}

void Exchange::build_keys(uint16_t op, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                          uint32_t step) {
  n_ = static_cast<uint32_t>(idx.size());
  begin_frame(op, op == kPrefetch ? 4 : 4 + 4ull * n_);
  encode_keys(w_, keys, idx);
  if (op == kPrefetch && step) w_.u32(step);  // PREFETCH's optional trailing step (protocol.h)
  w_.finish();
}

void Exchange::build_empty(uint16_t op) {
  n_ = 0;
  begin_frame(op, 0);
  w_.finish();
}

// ---- the state machine ----------------------------------------------------------------------

void Exchange::start(std::unique_ptr<PeerLink> link, const std::string& expected_id, const Secret* secret,
                     Clock::time_point connect_deadline) {
  link_ = std::move(link);
  expected_id_ = expected_id;
  secret_ = secret;
  connect_deadline_ = connect_deadline;
  reused_ = link_->authenticated;
  got_reply_ = false;
  error_ = error_code_ = 0;
  message_.clear();
  status_.clear();
  in_.clear();
  payload_in_ = payload_out_ = 0;
  done_at_ = {};
  if (reused_) return start_request();
  phase_ = Phase::kConnect;
}

int Exchange::poll_fd() const { return finished() || !link_ ? -1 : link_->stream->poll_fd(); }

short Exchange::poll_events() const {
  switch (phase_) {
    case Phase::kConnect: case Phase::kSendAuth: case Phase::kSend: return POLLOUT;
    default: return POLLIN;
  }
}

Clock::time_point Exchange::deadline(Clock::time_point call_deadline) const {
  return link_ && link_->authenticated ? call_deadline : std::min(call_deadline, connect_deadline_);
}

void Exchange::fail(int err, const std::string& msg) {
  done_at_ = Clock::now();
  phase_ = Phase::kFailed;
  error_ = err;
  message_ = msg;
  link_.reset();  // closing it makes the node release whatever this request held
}

std::unique_ptr<PeerLink> Exchange::take_link() { return ok() ? std::move(link_) : nullptr; }

Reader Exchange::reply() const {
  if (!link_) return Reader();
  return Reader(link_->rx.data() + kHeaderSize, need_ - kHeaderSize);
}

void Exchange::progress() {
  while (!finished()) {
    Phase before = phase_;
    switch (phase_) {
      case Phase::kConnect: {
        int e = connect_result(link_->stream->poll_fd());
        if (e) return fail(e, std::string("cannot connect: ") + strerror(e));
        phase_ = Phase::kChallenge;
        have_ = 0;
        break;
      }
      case Phase::kChallenge:
        if (recv_frame(kChallengeMaxBody)) on_challenge();
        break;
      case Phase::kSendAuth:
        if (send_some(out_)) {
          phase_ = Phase::kAuthReply;
          have_ = 0;
        }
        break;
      case Phase::kAuthReply:
        if (recv_frame(kAuthMaxBody)) on_auth_reply();
        break;
      case Phase::kSend:
        if (send_some(out_)) {
          phase_ = Phase::kHead;
          for (const Segment& seg : payload_) payload_out_ += seg.len;
          payload_out_ += rdma_out_;  // read by the node over RDMA
        }
        break;
      case Phase::kHead:
        if (recv_head()) on_table();
        break;
      case Phase::kValues:
        if (recv_values()) phase_ = Phase::kDone;
        break;
      default: return;
    }
    if (phase_ == Phase::kDone) done_at_ = Clock::now();
    if (phase_ == before) return;  // waiting for the socket
  }
}

// Non-blocking writev of v; true once all of it is sent.
bool Exchange::send_some(IoVec& v) {
  while (!v.done()) {
    ssize_t r = link_->stream->send_some_vec(v.data(), v.count());
    if (r == -EAGAIN) return false;
    if (r < 0) {
      fail(static_cast<int>(-r), std::string("send failed: ") + strerror(static_cast<int>(-r)));
      return false;
    }
    v.advance(static_cast<size_t>(r));
  }
  return true;
}

// Reads into the link's buffer until it holds at least `min` bytes, never more than `max`.
bool Exchange::recv_at_least(size_t min, size_t max) {
  if (link_->rx.size() < max) link_->rx.resize(max);
  while (have_ < min) {
    iovec v{link_->rx.data() + have_, max - have_};
    ssize_t r = link_->stream->recv_some_vec(&v, 1);
    if (r == -EAGAIN) return false;
    if (r < 0) {
      int e = static_cast<int>(-r);
      fail(e, e == ECONNRESET ? "the node closed the connection" : std::string("receive failed: ") + strerror(e));
      return false;
    }
    have_ += static_cast<size_t>(r);
    got_reply_ = got_reply_ || phase_ == Phase::kHead;
  }
  return true;
}

// A whole handshake (or ERROR) frame of at most max_body bytes into the buffer.
bool Exchange::recv_frame(uint64_t max_body) {
  if (!recv_at_least(kHeaderSize, kHeaderSize)) return false;
  head_ = decode_header(link_->rx.data());
  uint64_t limit = head_.op == kError ? kErrorMaxBody : max_body;
  if (head_.magic != kMagic || !(head_.flags & kFlagReply) || head_.body_len > limit) {
    fail(EPROTO, "the peer is not a mooncake-hicache node (malformed handshake frame)");
    return false;
  }
  need_ = kHeaderSize + static_cast<size_t>(head_.body_len);
  return recv_at_least(need_, need_);
}

void Exchange::on_error_frame(int err_for_auth) {
  ErrorReply er = decode_error(Reader(link_->rx.data() + kHeaderSize, need_ - kHeaderSize));
  error_code_ = er.code;
  int err = er.code == kErrAuthFailed ? err_for_auth : er.code == kErrVersion ? EPROTONOSUPPORT
            : er.code == kErrTooManyConnections                             ? EBUSY
                                                                            : EPROTO;
  fail(err, "the node refused: " + er.message);
}

void Exchange::on_challenge() {
  if (head_.op == kError) return on_error_frame(EACCES);
  Reader r(link_->rx.data() + kHeaderSize, need_ - kHeaderSize);
  Challenge c;
  if (head_.op != kAuthChallenge || !decode_challenge(r, &c))
    return fail(EPROTO, "the peer is not a mooncake-hicache node (no AUTH_CHALLENGE)");
  uint16_t chosen = std::min(c.max_version, kVersion);
  if (chosen < std::max(c.min_version, kMinVersion))
    return fail(EPROTONOSUPPORT, "the node speaks protocol versions " + std::to_string(c.min_version) + ".." +
                                     std::to_string(c.max_version) + ", this client " + std::to_string(kMinVersion) +
                                     ".." + std::to_string(kVersion) + "; run one mooncake-hicache release everywhere");
  if (c.node_id != expected_id_)
    return fail(EPROTO, "the node there is member '" + c.node_id + "', not '" + expected_id_ +
                            "' (a stale view, or two members share an address)");
  if (!secret_) return fail(EACCES, "no cluster secret is configured on this side");
  nonce_s_ = c.nonce;
  nonce_c_ = random_nonce();
  AuthRequest a;
  a.version = chosen;
  a.nonce = nonce_c_;
  a.mac = secret_->client_mac(chosen, nonce_s_, nonce_c_);
  a.info = "mooncake-hicache pool client";
  auth_w_.begin(kAuth, link_->next_id++, 0, chosen);
  encode_auth(auth_w_, a);
  const uint8_t* f = auth_w_.finish();
  link_->version = chosen;
  out_.clear();
  out_.add(f, auth_w_.size());
  phase_ = Phase::kSendAuth;
}

void Exchange::on_auth_reply() {
  if (head_.op == kError) return on_error_frame(EACCES);
  Reader r(link_->rx.data() + kHeaderSize, need_ - kHeaderSize);
  AuthReply a;
  if (head_.op != kAuth || !decode_auth_reply(r, &a)) return fail(EPROTO, "malformed AUTH reply");
  if (!macs_equal(a.mac, secret_->server_mac(link_->version, nonce_c_, nonce_s_, expected_id_)))
    return fail(EACCES, "the node could not prove it knows the cluster secret (the secrets differ)");
  link_->authenticated = true;
  link_->instance = a.instance;
  epoch_ = a.epoch;
  start_request();
}

// Sends the request on an authenticated link: request id and version go into the frame now.
void Exchange::start_request() {
  uint8_t* f = const_cast<uint8_t*>(w_.data());
  store_le(f + 4, link_->version);
  store_le(f + 8, link_->next_id);
  link_->next_id++;
  out_.clear();
  out_.add(f, w_.size());
  for (const Segment& s : payload_) out_.add(s.ptr, s.len);
  phase_ = Phase::kSend;
  have_ = 0;
  need_ = kHeaderSize + static_cast<size_t>(table_hint_);
  head_parsed_ = false;
}

// The reply's table bytes (everything but PEER_GET's values), checked against the request.
bool Exchange::reply_table_bytes(const Header& h, uint64_t* table) {
  uint32_t sent_id = load_le<uint32_t>(w_.data() + 8);
  if (h.magic != kMagic || !(h.flags & kFlagReply) || h.request_id != sent_id || h.op != op_) return false;
  if (op_ == kPeerGet) {
    *table = get_reply_table(n_);
    return h.body_len >= *table && h.body_len - *table <= kPeerMaxPayload;
  }
  *table = h.body_len;
  if (op_ == kRdmaConnect) return h.body_len <= table_hint_;
  return h.body_len <= (op_ == kPeerPut ? put_reply_table(n_) : kMaxBody);
}

// Header and table, read exactly (no value byte lands in the link's buffer): the header and the
// table the request implies in one read, then whatever the header says is missing.
bool Exchange::recv_head() {
  if (!head_parsed_) {
    if (!recv_at_least(kHeaderSize, kHeaderSize + static_cast<size_t>(table_hint_))) return false;
    head_ = decode_header(link_->rx.data());
    head_parsed_ = true;
    uint64_t table = 0;
    if (head_.op == kError && head_.magic == kMagic && head_.body_len <= kErrorMaxBody) {
      need_ = kHeaderSize + static_cast<size_t>(head_.body_len);
    } else if (reply_table_bytes(head_, &table)) {
      need_ = kHeaderSize + static_cast<size_t>(table);
    } else {
      fail(EPROTO, "malformed reply from the node");
      return false;
    }
    if (have_ > need_) {
      fail(EPROTO, "the node sent more than its reply");
      return false;
    }
  }
  return recv_at_least(need_, need_);
}

void Exchange::on_table() {
  if (head_.op == kError) return on_error_frame(EACCES);
  if (op_ == kPeerPut || op_ == kPeerGet) {
    lane_down_ = lane_ && (head_.flags & kFlagLaneDown);
    Reader r = reply();
    epoch_ = r.u64();
    if (r.u32() != n_) return fail(EPROTO, "the node answered for another number of keys");
  }
  if (op_ != kPeerGet) {
    phase_ = Phase::kDone;
    return;
  }
  plan_values(head_, get_reply_table(n_));
}

// PEER_GET: parses the status table and points the value bytes at their destinations.
void Exchange::plan_values(const Header& h, uint64_t table) {
  Reader r = reply();
  r.u64();
  r.u32();
  status_.resize(n_);
  in_.clear();
  uint64_t expected = 0;
  for (uint32_t k = 0; k < n_; k++) {
    int64_t st = r.i64();
    status_[k] = st;
    if (st < 0 || static_cast<uint64_t>(st) > caps_[k]) continue;
    if (lane_) {  // RDMA: the node wrote the value into the buffers already
      payload_in_ += static_cast<uint64_t>(st);
      continue;
    }
    uint64_t len = static_cast<uint64_t>(st), left = len;
    expected += len;
    const SgList* d = len ? dest_(k, len) : nullptr;
    for (size_t j = 0; d && j < d->size() && left; j++) {
      uint64_t take = std::min(left, (*d)[j].len);
      in_.add((*d)[j].ptr, take);
      left -= take;
    }
    if (left && discard_.empty()) discard_.resize(kDiscard);
    for (; left; left -= std::min<uint64_t>(left, kDiscard)) in_.add(discard_.data(), std::min<uint64_t>(left, kDiscard));
  }
  if (!r.ok() || expected != h.body_len - table) return fail(EPROTO, "the node's value lengths do not add up");
  phase_ = in_.done() ? Phase::kDone : Phase::kValues;
}

bool Exchange::recv_values() {
  while (!in_.done()) {
    ssize_t r = link_->stream->recv_some_vec(in_.data(), in_.count());
    if (r == -EAGAIN) return false;
    if (r < 0) {
      int e = static_cast<int>(-r);
      fail(e, e == ECONNRESET ? "the node closed the connection mid-reply" : std::string("receive failed: ") + strerror(e));
      return false;
    }
    in_.advance(static_cast<size_t>(r));
    payload_in_ += static_cast<uint64_t>(r);
  }
  return true;
}

// ---- the multiplexer ------------------------------------------------------------------------

void kick_exchanges(const std::vector<Exchange*>& ex) {
  for (Exchange* e : ex)
    if (e->sending()) e->progress();
}

void run_exchanges(const std::vector<Exchange*>& ex, Clock::time_point deadline) {
  kick_exchanges(ex);  std::vector<pollfd> pfd;
  std::vector<Exchange*> live;
  for (;;) {
    pfd.clear();
    live.clear();
    Clock::time_point wake = Clock::time_point::max();
    Clock::time_point now = Clock::now();
    for (Exchange* e : ex) {
      if (e->finished()) continue;
      Clock::time_point d = e->deadline(deadline);
      if (now >= d) {
        e->fail(ETIMEDOUT, "the node did not answer in time");
        continue;
      }
      wake = std::min(wake, d);
      pfd.push_back(pollfd{e->poll_fd(), e->poll_events(), 0});
      live.push_back(e);
    }
    if (live.empty()) return;
    int ms = ms_left(wake);
    int pr = ::poll(pfd.data(), pfd.size(), ms < 0 ? -1 : ms + 1);
    if (pr < 0 && errno != EINTR) {
      for (Exchange* e : live) e->fail(errno, std::string("poll: ") + strerror(errno));
      return;
    }
    for (size_t i = 0; pr > 0 && i < live.size(); i++)
      if (pfd[i].revents) live[i]->progress();
  }
}

}  // namespace mch::cluster
