// Dispatcher: see dispatcher.h; the bodies are in node/protocol.h.
#include "node/dispatcher.h"

#include <unistd.h>

#include <algorithm>

#include "node/limits.h"
#include "node/settings_check.h"

namespace mch {

using namespace proto;
using Outcome = Dispatcher::Outcome;

namespace {

void encode_ticket(Writer& w, const PutTicket& t) {
  w.i32(t.status);
  w.u64(t.offset);
  w.u64(t.token);
}
bool holds_slot(const PutTicket& t) { return t.status == status_code(Status::kOk); }
void encode_ticket(Writer& w, const GetTicket& t) {
  w.i64(t.status);
  w.u64(t.offset);
  w.u64(t.token);
  w.u8(t.tier);
}
bool holds_slot(const GetTicket& t) { return t.status >= 0; }

// Writes a PUT_RESERVE / GET_PIN reply: u32 n, n tickets. The session keeps the token of every
// ticket that holds a slot (a reservation or a pin); `held` counts them.
template <class Ticket>
void reply_tickets(Session& s, const Header& h, const std::vector<Ticket>& tickets, size_t wire, TokenTable& table,
                   std::atomic<uint64_t>& held) {
  s.w.begin(h.op, h.request_id, kFlagReply, s.version);
  s.w.reserve(4 + tickets.size() * wire);
  s.w.u32(static_cast<uint32_t>(tickets.size()));
  uint64_t n = 0;
  for (const Ticket& t : tickets) {
    encode_ticket(s.w, t);
    if (!holds_slot(t)) continue;
    table.add(t.token);
    n++;
  }
  held += n;
}

}  // namespace

Outcome Dispatcher::fail(Session& s, uint32_t request_id, int32_t code, const std::string& message) {
  encode_error(s.w, request_id, code, message);
  return Outcome::kFailed;
}

Outcome Dispatcher::bad_body(Session& s, const Header& h) {
  ctr_.bad_frames++;
  return fail(s, h.request_id, kErrBadFrame, std::string("malformed ") + op_name(h.op) + " body");
}

Outcome Dispatcher::check_session(Session& s, const Header& h) {
  if (h.flags & kFlagReply) {
    ctr_.bad_frames++;
    return fail(s, h.request_id, kErrBadFrame, "clients send requests, not replies");
  }
  if (s.hello && h.op != kHello && h.version != s.version) {
    ctr_.version_mismatches++;
    return fail(s, h.request_id, kErrVersion,
                "frame version " + std::to_string(h.version) + " differs from the version agreed at HELLO (" +
                    std::to_string(s.version) + ")");
  }
  return Outcome::kReply;
}

Outcome Dispatcher::check_header(Session& s, const Header& h) {
  if (h.magic != kMagic) {
    ctr_.bad_frames++;
    return fail(s, h.request_id, kErrBadFrame, "bad frame magic: not a mooncake-hicache client");
  }
  if (h.version < kMinVersion || h.version > kVersion) {
    ctr_.version_mismatches++;
    return fail(s, h.request_id, kErrVersion,
                "protocol version mismatch: this node speaks versions " + std::to_string(kMinVersion) + ".." +
                    std::to_string(kVersion) + ", the client sent a version " + std::to_string(h.version) +
                    " frame; run client and node from the same mooncake-hicache release");
  }
  if (!s.hello && !limits::allowed_before_hello(h.op))
    return fail(s, h.request_id, kErrHelloFirst, std::string("send HELLO before ") + op_name(h.op));
  if (h.body_len > limits::max_request_body(h.op)) {
    ctr_.bad_frames++;
    return fail(s, h.request_id, kErrBadFrame,
                std::string(op_name(h.op)) + " frame body of " + std::to_string(h.body_len) +
                    " bytes exceeds the limit of " + std::to_string(limits::max_request_body(h.op)) + " for that op");
  }
  return Outcome::kReply;
}

Outcome Dispatcher::handle(Session& s, const Header& h, Reader r) {
  if (check_session(s, h) == Outcome::kFailed) return Outcome::kFailed;
  ctr_.count_op(h.op);
  switch (h.op) {
    case kHello: return hello(s, h, r);
    case kPing: return ping(s, h, r);
    case kPutReserve: return put_reserve(s, h, r);
    case kPutCommit: return put_commit(s, h, r);
    case kGetPin: return get_pin(s, h, r);
    case kGetUnpin: return get_unpin(s, h, r);
    case kExists: return exists(s, h, r);
    case kPrefetch: return prefetch(s, h, r);
    case kRemove: return remove(s, h, r);
    case kRemoveAll: return remove_all(s, h, r);
    case kStats: return stats(s, h, r);
    case kValueSize: return value_size(s, h, r);
    case kOpenData: return open_data(s, h, r);
    case kGetLocate: return get_locate(s, h, r);
    case kLocateRelease: return locate_release(s, h, r);
    case kRemovePrefix: return remove_prefix(s, h, r);
    case kView:
      if (views_) return view(s, h, r);
      return unknown_op(s, h);
    default: return unknown_op(s, h);
  }
}

Outcome Dispatcher::unknown_op(Session& s, const Header& h) {
  encode_error(s.w, h.request_id, kErrUnknownOp,
               "op " + std::to_string(h.op) + " is not known to this node (protocol " + std::to_string(kVersion) + ")");
  return Outcome::kReply;  // framing is intact: keep serving
}

Outcome Dispatcher::hello(Session& s, const Header& h, Reader& r) {
  uint16_t cmin = r.u16(), cmax = r.u16();
  r.u32();  // client pid (the transport's peer credentials are what we trust)
  r.str(limits::kMaxClientInfo);
  // Appended field: the client's settings fingerprint (absent from older clients: not checked).
  std::string_view settings = r.remaining() ? r.str(limits::kMaxSettings) : std::string_view();
  if (!r.ok()) return bad_body(s, h);
  uint16_t chosen = std::min(cmax, kVersion);
  if (chosen < std::max(cmin, kMinVersion)) {
    ctr_.version_mismatches++;
    return fail(s, h.request_id, kErrVersion,
                "protocol version mismatch: this node speaks versions " + std::to_string(kMinVersion) + ".." +
                    std::to_string(kVersion) + ", the client speaks " + std::to_string(cmin) + ".." +
                    std::to_string(cmax) + "; run client and node from the same mooncake-hicache release");
  }
  std::string differ = differing_settings(settings_, std::string(settings));
  if (!differ.empty()) {
    ctr_.settings_mismatches++;
    return fail(s, h.request_id, kErrSettings,
                "the node on this socket was started with other settings: " + differ +
                    "; stop that node (it restarts with yours) or use its settings");
  }
  HelloReply hr;
  hr.version = chosen;
  hr.node_pid = static_cast<uint32_t>(getpid());
  hr.instance = instance_;
  hr.arena_size = store_.arena_size();
  hr.max_batch = kMaxBatch;
  hr.max_key_len = static_cast<uint32_t>(kMaxKeyLen);
  hr.info = info_;
  s.w.begin(kHello, h.request_id, kFlagReply, chosen);
  encode_hello_reply(s.w, hr);
  s.hello = true;
  s.version = chosen;
  return Outcome::kReplyWithArena;
}

Outcome Dispatcher::ping(Session& s, const Header& h, Reader& r) {
  s.w.begin(kPing, h.request_id, kFlagReply, h.version);
  s.w.bytes(r.pos(), r.remaining());  // echo
  return Outcome::kReply;
}

Outcome Dispatcher::put_reserve(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_put_reserve(r, &s.keys, &s.sizes, &s.depths);
  if (n < 0 || !r.done()) return bad_body(s, h);
  const PutMode mode = (h.flags & kFlagKeepExisting) ? PutMode::kKeepExisting : PutMode::kReplace;
  store_.put_reserve(s.keys.vec(), s.sizes, s.depths, &s.put_t, mode);
  reply_tickets(s, h, s.put_t, kReserveResultWire, s.reservations, ctr_.reservations_held);
  return Outcome::kReply;
}

bool Dispatcher::take_commit_tokens(Session& s, Reader& r, uint32_t n) {
  s.tokens.clear();
  s.oks.clear();
  s.owned.assign(n, -1);
  uint64_t unknown = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t t = r.u64();
    uint8_t ok = r.u8();
    if (!r.ok()) break;
    if (!s.reservations.take(t)) {
      unknown++;
      continue;
    }
    s.owned[i] = static_cast<int64_t>(s.tokens.size());
    s.tokens.push_back(t);
    s.oks.push_back(ok ? 1 : 0);
  }
  ctr_.reservations_held -= s.tokens.size();
  ctr_.unknown_tokens += unknown;
  if (r.done()) return true;
  // Hand what we took back to the table so disconnect cleanup aborts them.
  for (uint64_t t : s.tokens) s.reservations.add(t);
  ctr_.reservations_held += s.tokens.size();
  return false;
}

Outcome Dispatcher::put_commit(Session& s, const Header& h, Reader& r) {
  uint32_t n = r.count(9);
  if (!r.ok() || !take_commit_tokens(s, r, n)) return bad_body(s, h);
  s.res.assign(s.tokens.size(), status_code(Status::kInvalidParams));
  if (!s.tokens.empty()) store_.put_commit(s.tokens, s.oks, s.res.data());
  s.w.begin(kPutCommit, h.request_id, kFlagReply, s.version);
  s.w.reserve(4 + 4 * static_cast<size_t>(n));
  s.w.u32(n);
  for (uint32_t i = 0; i < n; i++)
    s.w.i32(s.owned[i] < 0 ? status_code(Status::kInvalidParams) : s.res[s.owned[i]]);
  return Outcome::kReply;
}

Outcome Dispatcher::get_pin(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_keys(r, &s.keys);
  if (n < 0 || !r.done()) return bad_body(s, h);
  store_.get_pin(s.keys.vec(), &s.get_t);
  reply_tickets(s, h, s.get_t, kPinResultWire, s.pins, ctr_.pins_held);
  return Outcome::kReply;
}

// A list of tokens given back (GET_UNPIN, LOCATE_RELEASE): those `table` holds go to s.tokens,
// the others are counted and ignored. False for a malformed body.
bool Dispatcher::take_given_back(Session& s, Reader& r, TokenTable& table, std::atomic<uint64_t>& held) {
  uint32_t n = r.count(8);
  if (!r.ok()) return false;
  s.tokens.clear();
  uint64_t unknown = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t t = r.u64();
    if (table.take(t))
      s.tokens.push_back(t);
    else
      unknown++;
  }
  ctr_.unknown_tokens += unknown;
  held -= s.tokens.size();
  return r.done();
}

Outcome Dispatcher::get_unpin(Session& s, const Header& h, Reader& r) {
  bool ok = take_given_back(s, r, s.pins, ctr_.pins_held);
  if (!s.tokens.empty()) store_.get_unpin(s.tokens);
  return ok ? Outcome::kNoReply : bad_body(s, h);
}

Outcome Dispatcher::exists(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_keys(r, &s.keys);
  if (n < 0 || !r.done()) return bad_body(s, h);
  s.res.resize(static_cast<size_t>(n));
  if (n) store_.batch_exists(s.keys.vec(), s.res.data());
  s.w.begin(kExists, h.request_id, kFlagReply, s.version);
  s.w.reserve(4 + 4 * static_cast<size_t>(n));
  s.w.u32(static_cast<uint32_t>(n));
  for (int64_t i = 0; i < n; i++) s.w.i32(s.res[static_cast<size_t>(i)]);
  return Outcome::kReply;
}

Outcome Dispatcher::prefetch(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_keys(r, &s.keys);
  uint32_t step = r.ok() && r.remaining() == 4 ? r.u32() : 0;  // optional trailing step
  if (n < 0 || !r.done()) return bad_body(s, h);
  int32_t q = n ? store_.prefetch(s.keys.vec(), step) : 0;
  s.w.begin(kPrefetch, h.request_id, kFlagReply, s.version);
  s.w.i32(q);
  return Outcome::kReply;
}

Outcome Dispatcher::remove(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_keys(r, &s.keys);
  if (n < 0 || !r.done()) return bad_body(s, h);
  s.w.begin(kRemove, h.request_id, kFlagReply, s.version);
  s.w.u32(static_cast<uint32_t>(n));
  for (int64_t i = 0; i < n; i++) s.w.i32(store_.remove(s.keys.vec()[static_cast<size_t>(i)]));
  return Outcome::kReply;
}

Outcome Dispatcher::remove_all(Session& s, const Header& h, Reader& r) {
  if (!r.done()) return bad_body(s, h);
  int32_t rc = store_.remove_all();
  s.w.begin(kRemoveAll, h.request_id, kFlagReply, s.version);
  s.w.i32(rc);
  return Outcome::kReply;
}

Outcome Dispatcher::value_size(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_keys(r, &s.keys);
  if (n < 0 || !r.done()) return bad_body(s, h);
  s.w.begin(kValueSize, h.request_id, kFlagReply, s.version);
  s.w.reserve(4 + 8 * static_cast<size_t>(n));
  s.w.u32(static_cast<uint32_t>(n));
  for (int64_t i = 0; i < n; i++) s.w.i64(store_.value_size(s.keys.vec()[static_cast<size_t>(i)]));
  return Outcome::kReply;
}

Outcome Dispatcher::remove_prefix(Session& s, const Header& h, Reader& r) {
  std::string_view prefix = r.str(kMaxKeyLen);
  if (!r.done()) return bad_body(s, h);
  int64_t n = store_.remove_prefix(std::string(prefix));
  s.w.begin(kRemovePrefix, h.request_id, kFlagReply, s.version);
  s.w.i64(n);
  return Outcome::kReply;
}

Outcome Dispatcher::open_data(Session& s, const Header& h, Reader& r) {
  if (!r.done()) return bad_body(s, h);
  const bool have = store_.data_fd() >= 0 && s.stream->passes_fds();
  s.w.begin(kOpenData, h.request_id, kFlagReply, s.version);
  s.w.i32(have ? status_code(Status::kOk) : status_code(Status::kNotFound));
  return have ? Outcome::kReplyWithDataFile : Outcome::kReply;
}

Outcome Dispatcher::get_locate(Session& s, const Header& h, Reader& r) {
  int64_t n = decode_keys(r, &s.keys);
  if (n < 0 || !r.done()) return bad_body(s, h);
  store_.locate(s.keys.vec(), &s.locs);
  s.w.begin(kGetLocate, h.request_id, kFlagReply, s.version);
  s.w.reserve(4 + s.locs.size() * kLocateResultWire);
  s.w.u32(static_cast<uint32_t>(s.locs.size()));
  uint64_t held = 0;
  for (const TieredStore::Location& l : s.locs) {
    s.w.i64(l.status);
    s.w.u64(l.offset);
    s.w.u64(l.checksum);
    s.w.u64(l.token);
    if (l.status < 0) continue;
    s.locations.add(l.token);
    held++;
  }
  ctr_.locations_held += held;
  return Outcome::kReply;
}

Outcome Dispatcher::locate_release(Session& s, const Header& h, Reader& r) {
  bool ok = take_given_back(s, r, s.locations, ctr_.locations_held);
  if (!s.tokens.empty()) store_.release_locations(s.tokens);
  return ok ? Outcome::kNoReply : bad_body(s, h);
}

Outcome Dispatcher::stats(Session& s, const Header& h, Reader& r) {
  if (!r.done()) return bad_body(s, h);
  std::string json = stats_json_();
  s.w.begin(kStats, h.request_id, kFlagReply, s.version);
  s.w.str(json);
  return Outcome::kReply;
}

Outcome Dispatcher::view(Session& s, const Header& h, Reader& r) {
  if (!r.done()) return bad_body(s, h);
  s.w.begin(kView, h.request_id, kFlagReply, s.version);
  views_->encode(s.w);
  return Outcome::kReply;
}

}  // namespace mch
