// PeerDispatcher: see peer_dispatcher.h; the bodies are in node/peer_protocol.h.
#include "node/peer_dispatcher.h"

#include <algorithm>

#include "common/status.h"

namespace mch {

using namespace proto;

bool PeerDispatcher::fail(PeerSession& s, const Header& h, int32_t code, const std::string& message) {
  encode_error(s.w, h.request_id, code, message);
  send_reply(s, Clock::now() + std::chrono::milliseconds(timeout_ms_));
  return false;
}

bool PeerDispatcher::send_reply(PeerSession& s, Clock::time_point deadline) {
  const uint8_t* f = s.w.finish();
  return s.stream->send_all(f, s.w.size(), deadline) == 0;
}

// Header rules of an authenticated session; false after an ERROR was sent (close).
bool PeerDispatcher::check_header(PeerSession& s, const Header& h) {
  if (h.magic != kMagic || (h.flags & kFlagReply)) {
    pc_.bad_frames++;
    return fail(s, h, kErrBadFrame, "bad frame: not a mooncake-hicache request");
  }
  if (h.version != s.version) {
    pc_.version_mismatches++;
    return fail(s, h, kErrVersion, "frame version " + std::to_string(h.version) +
                                       " differs from the version agreed at AUTH (" + std::to_string(s.version) + ")");
  }
  if (!allowed_over_tcp(h.op) && h.op < kOpCount) {
    pc_.local_only_refused++;
    return fail(s, h, kErrLocalOnly, std::string(op_name(h.op)) +
                                         " hands out shared-memory offsets and is served on the node's Unix socket "
                                         "only; over TCP use PEER_PUT / PEER_GET (connection closed)");
  }
  if (h.body_len > peer_body_limit(h.op)) {
    pc_.bad_frames++;
    return fail(s, h, kErrBadFrame, std::string(peer_op_name(h.op)) + " body of " + std::to_string(h.body_len) +
                                        " bytes exceeds its limit of " + std::to_string(peer_body_limit(h.op)));
  }
  return true;
}

bool PeerDispatcher::serve(PeerSession& s, const Header& h, int wake_fd) {
  if (!check_header(s, h)) return false;
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  switch (h.op) {
    case kPeerPut: return put(s, h, deadline, wake_fd);
    case kPeerGet: return get(s, h, deadline, wake_fd);
    case kRdmaConnect: return rdma_connect(s, h, deadline, wake_fd);
    default: return delegate(s, h, deadline, wake_fd);
  }
}

// EXISTS, PREFETCH, REMOVE, REMOVE_ALL, STATS, PING, VIEW and unknown ops: the local Dispatcher.
bool PeerDispatcher::delegate(PeerSession& s, const Header& h, Clock::time_point deadline, int wake_fd) {
  if (s.rx.read_body(*s.stream, h, deadline, wake_fd) != 0) return false;
  if (h.op == kView) pc_.views++;
  Dispatcher::Outcome o = local_.handle(s, h, s.rx.body(h));
  s.rx.consume(h);
  if (o == Dispatcher::Outcome::kNoReply) return true;
  return send_reply(s, deadline) && o == Dispatcher::Outcome::kReply;
}

// ---- PEER_PUT -------------------------------------------------------------------------------

bool PeerDispatcher::put(PeerSession& s, const Header& h, Clock::time_point deadline, int wake_fd) {
  pc_.peer_puts++;
  if (h.body_len < 4) return fail(s, h, kErrBadFrame, "PEER_PUT body too short");
  if (s.rx.read_part(*s.stream, 4, deadline, wake_fd) != 0) return false;
  const uint32_t table_len = s.rx.part(4).u32();
  if (table_len > kRdmaMaxTable || 4ull + table_len > h.body_len) {
    pc_.bad_frames++;
    return fail(s, h, kErrBadFrame, "PEER_PUT table of " + std::to_string(table_len) + " bytes is out of bounds");
  }
  if (s.rx.read_part(*s.stream, 4 + table_len, deadline, wake_fd) != 0) return false;
  Reader r = s.rx.part(4 + table_len);
  r.u32();
  const uint8_t path = peek_data_path(r);
  uint64_t payload = 0;
  int64_t n = decode_put(s, r, &payload);
  if (n < 0 || 4ull + table_len + payload != h.body_len) {
    pc_.bad_frames++;
    return fail(s, h, kErrBadFrame, "malformed PEER_PUT table (counts, sizes or lengths out of bounds)");
  }
  int32_t code = 0;
  std::string why;
  ValueMover* m = mover(s, path, static_cast<uint32_t>(n), true, &code, &why);
  if (!m) return fail(s, h, code, "PEER_PUT: " + why);
  s.rx.consume_part(4 + table_len);
  s.res.assign(static_cast<size_t>(n), status_code(Status::kOk));
  if (!put_values(s, *m, deadline, wake_fd)) return false;
  s.w.begin(kPeerPut, h.request_id, kFlagReply | m->reply_flags(), s.version);
  s.w.reserve(put_reply_table(static_cast<uint32_t>(n)));
  s.w.u64(views_.epoch());
  s.w.u32(static_cast<uint32_t>(n));
  for (int32_t x : s.res) s.w.i32(x);
  return send_reply(s, deadline);
}

// A PEER_PUT table of either data path; *payload: the value bytes that follow it in the frame.
int64_t PeerDispatcher::decode_put(PeerSession& s, Reader& r, uint64_t* payload) {
  uint8_t path = 0;
  if (peek_data_path(r) != kRdma) return decode_put_table(r, &s.keys, &s.sizes, &s.depths, &path, payload);
  *payload = 0;  // the node reads the values from the peer's memory
  return decode_rdma_put_table(r, &s.keys, &s.sizes, &s.depths, &s.descs);
}

// Reserves, moves every value (into its slot, or dropped) and commits. false: the stream
// failed (the session's token table still holds what was reserved; the server aborts it).
bool PeerDispatcher::put_values(PeerSession& s, ValueMover& m, Clock::time_point deadline, int wake_fd) {
  const size_t n = s.keys.vec().size();
  store_.put_reserve(s.keys.vec(), s.sizes, s.depths, &s.put_t);
  hold_reservations(s, 0);
  s.pending.clear();
  uint8_t* base = store_.arena_base();
  for (size_t i = 0; i < n; i++) {
    if (s.put_t[i].status == status_code(Status::kNoSpace) && !s.pending.empty()) {
      if (m.move(deadline, wake_fd) != 0) return false;
      commit(s, m);
      reserve_again(s, i);  // the slots just committed can now be evicted
    }
    const PutTicket& t = s.put_t[i];
    if (t.status == status_code(Status::kOk)) {
      m.put_value(static_cast<uint32_t>(i), base + t.offset, s.sizes[i]);
      s.pending.push_back(static_cast<uint32_t>(i));
    } else {
      m.put_value(static_cast<uint32_t>(i), nullptr, s.sizes[i]);
      s.res[i] = t.status == kAlreadyStored ? status_code(Status::kOk) : t.status;
    }
  }
  if (m.move(deadline, wake_fd) != 0) return false;
  commit(s, m);
  return true;
}

// The session keeps the reservation of every ticket from `from` on that got a slot.
void PeerDispatcher::hold_reservations(PeerSession& s, size_t from) {
  uint64_t k = 0;
  for (size_t i = from; i < s.put_t.size(); i++) {
    if (s.put_t[i].status != status_code(Status::kOk)) continue;
    s.reservations.add(s.put_t[i].token);
    k++;
  }
  nc_.reservations_held += k;
}

// Publishes the slots of s.pending whose bytes have all arrived; gives back the others (their
// keys get the mover's failure).
void PeerDispatcher::commit(PeerSession& s, const ValueMover& m) {
  if (s.pending.empty()) return;
  s.held.clear();
  s.oks.clear();
  for (uint32_t i : s.pending) {
    s.held.push_back(s.put_t[i].token);
    s.reservations.take(s.put_t[i].token);
    s.oks.push_back(m.failure(i) == 0);
  }
  nc_.reservations_held -= s.held.size();
  std::vector<int32_t> out(s.held.size(), status_code(Status::kInvalidParams));
  store_.put_commit(s.held, s.oks, out.data());
  for (size_t k = 0; k < s.pending.size(); k++) {
    uint32_t i = s.pending[k];
    s.res[i] = s.oks[k] ? out[k] : m.failure(i);
    if (!s.oks[k]) continue;
    pc_.bytes_received += s.sizes[i];
    pc_.keys_put++;
  }
  s.pending.clear();
}

// Reserves again the keys from `from` on that got NO_SPACE.
void PeerDispatcher::reserve_again(PeerSession& s, size_t from) {
  std::vector<uint32_t> idx;
  std::vector<std::string> keys;
  std::vector<uint64_t> sizes;
  std::vector<uint32_t> depths;
  for (size_t i = from; i < s.put_t.size(); i++) {
    if (s.put_t[i].status != status_code(Status::kNoSpace)) continue;
    idx.push_back(static_cast<uint32_t>(i));
    keys.push_back(s.keys.vec()[i]);
    sizes.push_back(s.sizes[i]);
    depths.push_back(s.depths[i]);
  }
  std::vector<PutTicket> again;
  store_.put_reserve(keys, sizes, depths, &again);
  for (size_t k = 0; k < idx.size(); k++) s.put_t[idx[k]] = again[k];
  uint64_t held = 0;
  for (const PutTicket& t : again) {
    if (t.status != status_code(Status::kOk)) continue;
    s.reservations.add(t.token);
    held++;
  }
  nc_.reservations_held += held;
}

ValueMover* PeerDispatcher::mover(PeerSession& s, uint8_t data_path, uint32_t n, bool put, int32_t* code,
                                  std::string* msg) {
  if (data_path == kInline) return &s.inline_mover;
  if (data_path != kRdma || !rdma_) {
    *code = kErrDataPath;
    *msg = "data path " + std::to_string(data_path) + " is not served by this node" +
           (data_path == kRdma ? " (it serves TCP only)" : "");
    return nullptr;
  }
  if (!s.rdma_mover) s.rdma_mover = std::make_unique<RdmaMover>(s, *rdma_);
  if (s.rdma_mover->bind(s.descs, n, put, msg)) return s.rdma_mover.get();
  *code = kErrRdmaLane;
  return nullptr;
}

// ---- PEER_GET -------------------------------------------------------------------------------

bool PeerDispatcher::get(PeerSession& s, const Header& h, Clock::time_point deadline, int wake_fd) {
  pc_.peer_gets++;
  if (s.rx.read_body(*s.stream, h, deadline, wake_fd) != 0) return false;
  Reader r = s.rx.body(h);
  uint8_t path = peek_data_path(r);
  int64_t n = path == kRdma ? decode_rdma_get_table(r, &s.keys, &s.sizes, &s.descs)
                            : decode_get_table(r, &s.keys, &s.sizes, &path);  // sizes: the capacities
  s.rx.consume(h);
  if (n < 0) {
    pc_.bad_frames++;
    return fail(s, h, kErrBadFrame, "malformed PEER_GET table (counts or lengths out of bounds)");
  }
  int32_t code = 0;
  std::string why;
  ValueMover* m = mover(s, path, static_cast<uint32_t>(n), false, &code, &why);
  if (!m) return fail(s, h, code, "PEER_GET: " + why);
  store_.get_pin(s.keys.vec(), &s.get_t);
  s.held.clear();
  for (const GetTicket& t : s.get_t)
    if (t.status >= 0) s.pins.add(t.token), s.held.push_back(t.token);
  nc_.pins_held += s.held.size();
  for (size_t i = 0; i < s.get_t.size(); i++) {
    const GetTicket& t = s.get_t[i];
    if (t.status < 0 || static_cast<uint64_t>(t.status) > s.sizes[i]) continue;
    m->get_value(static_cast<uint32_t>(i), store_.arena_base() + t.offset, static_cast<uint64_t>(t.status));
  }
  int e = m->move(deadline, wake_fd);  // RDMA: the values are in the peer's buffers after it
  if (e == 0) {
    reply_get(s, h, *m, static_cast<uint32_t>(n));
    e = m->send_reply(s.w.data(), s.w.size(), deadline);
  }
  unpin(s);
  return e == 0;
}

// The reply frame in s.w: the status of each key (a value that failed to move is the mover's
// failure: a miss) and the body length the mover sends.
void PeerDispatcher::reply_get(PeerSession& s, const Header& h, ValueMover& m, uint32_t n) {
  s.w.begin(kPeerGet, h.request_id, kFlagReply | m.reply_flags(), s.version);
  s.w.reserve(get_reply_table(n));
  s.w.u64(views_.epoch());
  s.w.u32(n);
  uint64_t sent = 0;
  for (uint32_t i = 0; i < n; i++) {
    int64_t st = s.get_t[i].status;
    if (st >= 0 && m.failure(i)) st = m.failure(i);
    s.w.i64(st);
    if (st < 0 || static_cast<uint64_t>(st) > s.sizes[i]) continue;
    sent += static_cast<uint64_t>(st);
    pc_.keys_got++;
  }
  uint8_t* frame = const_cast<uint8_t*>(s.w.finish());
  set_body_len(frame, m.reply_body(get_reply_table(n)));
  pc_.bytes_sent += sent;
}

void PeerDispatcher::unpin(PeerSession& s) {
  for (uint64_t t : s.held) s.pins.take(t);
  nc_.pins_held -= s.held.size();
  if (!s.held.empty()) store_.get_unpin(s.held);
  s.held.clear();
}

// ---- RDMA_CONNECT -------------------------------------------------------------------------------

bool PeerDispatcher::rdma_connect(PeerSession& s, const Header& h, Clock::time_point deadline, int wake_fd) {
  pc_.rdma_connects++;
  if (s.rx.read_body(*s.stream, h, deadline, wake_fd) != 0) return false;
  Reader r = s.rx.body(h);
  RdmaConnect c;
  bool ok = decode_rdma_connect(r, &c);
  s.rx.consume(h);
  if (!ok) {
    pc_.bad_frames++;
    return fail(s, h, kErrBadFrame, "malformed RDMA_CONNECT");
  }
  if (!rdma_)
    return fail(s, h, kErrRdmaLane, "this node does not serve RDMA (its cluster.transport is tcp, or auto found no "
                                    "usable device): use TCP");
  RdmaConnectReply rep;
  std::string why;
  int32_t code = rdma_->connect(c, &rep, &why);
  if (code) return fail(s, h, code, "RDMA_CONNECT: " + why);
  s.w.begin(kRdmaConnect, h.request_id, kFlagReply, s.version);
  encode_rdma_connect_reply(s.w, rep);
  return send_reply(s, deadline);
}

}  // namespace mch
