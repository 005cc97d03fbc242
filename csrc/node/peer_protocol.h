// The TCP side of the protocol (peers: the ranks and nodes of other hosts), next to the local
// protocol of node/protocol.h: same frames (transport/frame.h), more ops. docs/protocol.md
// ("The TCP side") is the prose version of this file.
//
// Over TCP no arena is shared, so value bytes travel inline in the frames: PEER_PUT carries a
// key table and then the values back to back; the PEER_GET reply carries a status table and
// then the values. Every request table starts with a data-path byte: kInline, or kRdma, where the
// table carries per key descriptors of the client's registered memory ({addr, len, rkey} per
// segment) and the node moves the bytes with one-sided RDMA READ / WRITE over a lane (an RC queue
// pair) set up with RDMA_CONNECT on the same authenticated connection.
// Ops that do not touch the arena (EXISTS, PREFETCH, REMOVE, REMOVE_ALL, STATS, PING) are the
// local protocol's, with the same bodies. HELLO, PUT_RESERVE, PUT_COMMIT, GET_PIN and GET_UNPIN
// hand out arena offsets and are refused over TCP. VIEW is served on both sides.
//
// Every count and length a peer sends is bounded here, per op, before anything is allocated.
// Owns nothing; every function is thread-safe.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "node/limits.h"
#include "node/protocol.h"
#include "transport/auth.h"
#include "transport/frame.h"
#include "transport/rdma/transfer.h"

namespace mch {
namespace proto {

// Op numbers 64.. are the cluster's (1..63 stay the local protocol's).
enum PeerOp : uint16_t {
  kAuthChallenge = 64,  // node -> peer, unasked, right after accept
  kAuth = 65,           // peer -> node; reply: the node's proof
  kPeerPut = 66,        // key table + value bytes; reply: results
  kPeerGet = 67,        // key table; reply: status table + value bytes
  kView = 68,           // the membership view the node serves (local socket and TCP)
  kRdmaConnect = 69,    // sets up (or updates) an RDMA lane: queue pair endpoints, client memory
};

// ERROR codes of the TCP side (the local ones are in protocol.h).
constexpr int32_t kErrAuthFailed = 32;  // the handshake failed: wrong MAC or malformed (closed)
constexpr int32_t kErrLocalOnly = 33;   // an arena op over TCP (connection kept)
constexpr int32_t kErrDataPath = 34;    // a data path this node does not serve (closed)
constexpr int32_t kErrRdmaLane = 35;    // no RDMA here, or the lane named is unknown, stale or broken (closed)

// Reply flag of PEER_PUT / PEER_GET over RDMA: the lane broke during this request (its queue
// pair is in error); set it up again before using it.
constexpr uint32_t kFlagLaneDown = 2;

// How value bytes travel (the first byte of every PEER_PUT / PEER_GET table).
enum DataPath : uint8_t { kInline = 0, kRdma = 1 };

// Bounds, checked before anything is allocated.
constexpr uint32_t kPeerMaxKeys = 4096;          // keys per request
constexpr uint64_t kPeerMaxValue = 1ull << 30;   // bytes of one value
constexpr uint64_t kPeerMaxPayload = 4ull << 30; // value bytes of one request or reply
constexpr size_t kMaxIdLen = 64;                 // member ids (config.py allows 64)
constexpr size_t kMaxHostLen = 255;
constexpr size_t kMaxInfoLen = 256;
constexpr uint32_t kMaxMembers = 4096;
// The largest key table: data-path head + count + kPeerMaxKeys x {key, u64, u32}.
constexpr uint64_t kPeerMaxTable = 8 + uint64_t(kPeerMaxKeys) * (4 + kMaxKeyLen + 12);
// RDMA descriptors: per value, per request, and the regions a client announces per lane.
constexpr uint32_t kRdmaMaxSegs = 4096;
constexpr uint32_t kRdmaMaxDescs = 65536;
constexpr uint32_t kRdmaMaxRegions = 4096;
constexpr uint64_t kRdmaDescBytes = 20;  // u64 addr, u64 len, u32 rkey
// The largest table of a data-path kRdma request: the key table, the lane head, a segment count
// per key and the descriptors.
constexpr uint64_t kRdmaMaxTable = kPeerMaxTable + 16 + 4ull * kPeerMaxKeys + kRdmaDescBytes * kRdmaMaxDescs;
constexpr uint64_t kRdmaConnectMaxBody = 64 + 4 + kRdmaDescBytes * kRdmaMaxRegions;
constexpr uint64_t kAuthMaxBody = 4 + 2 * kNonceLen + 4 + kMaxInfoLen;
constexpr uint64_t kChallengeMaxBody = 4 + kNonceLen + 4 + kMaxIdLen;

inline const char* peer_op_name(uint16_t op) {
  switch (op) {
    case kAuthChallenge: return "auth_challenge";
    case kAuth: return "auth";
    case kPeerPut: return "peer_put";
    case kPeerGet: return "peer_get";
    case kView: return "view";
    case kRdmaConnect: return "rdma_connect";
    default: return op_name(op);
  }
}

// Whether a local-protocol op may be sent over TCP (it does not touch the arena).
inline bool allowed_over_tcp(uint16_t op) {
  switch (op) {
    case kExists: case kPrefetch: case kRemove: case kRemoveAll: case kStats: case kPing:
    case kPeerPut: case kPeerGet: case kView: case kRdmaConnect:
      return true;
    default:
      return false;
  }
}

// The most body bytes an authenticated peer may announce for `op` (PEER_PUT: the 4-byte table
// length, the table and the payload). Checked on the header, before anything is read. The ops
// shared with the Unix socket have its bounds (node/limits.h).
inline uint64_t peer_body_limit(uint16_t op) {
  switch (op) {
    case kPeerPut: return 4 + kRdmaMaxTable + kPeerMaxPayload;
    case kPeerGet: return kRdmaMaxTable;
    case kView: return 0;
    case kRdmaConnect: return kRdmaConnectMaxBody;
    default: return allowed_over_tcp(op) ? limits::max_request_body(op) : limits::kMaxProbeBody;
  }
}

// A frame whose body_len also counts bytes sent after it (values): rewrites the header's length.
inline void set_body_len(uint8_t* frame, uint64_t body_len) { store_le(frame + 16, body_len); }

// ---- handshake ------------------------------------------------------------------------------
// AUTH_CHALLENGE (node -> peer, request_id 0, flags REPLY): u16 min_version, u16 max_version,
//   nonce_s[32], str node_id.
// AUTH request: u16 version (chosen), u16 0, nonce_c[32], mac_c[32], str client_info.
// AUTH reply: mac_s[32], u64 instance, u64 epoch, str node_id. A wrong MAC or version gets an
//   ERROR (kErrAuthFailed / kErrVersion) and the connection is closed.
template <size_t N>
inline bool read_array(Reader& r, std::array<uint8_t, N>* out) {  // N raw bytes
  const uint8_t* p = r.raw(N);
  if (p) memcpy(out->data(), p, N);
  return p != nullptr;
}
struct Challenge {
  uint16_t min_version = 0, max_version = 0;
  Nonce nonce{};
  std::string node_id;
};
inline void encode_challenge(Writer& w, const Challenge& c) {
  w.u16(c.min_version);
  w.u16(c.max_version);
  w.bytes(c.nonce.data(), kNonceLen);
  w.str(c.node_id);
}
inline bool decode_challenge(Reader& r, Challenge* c) {
  c->min_version = r.u16();
  c->max_version = r.u16();
  read_array(r, &c->nonce);
  c->node_id = std::string(r.str(kMaxIdLen));
  return r.done();
}

struct AuthRequest {
  uint16_t version = 0;
  Nonce nonce{};
  Mac mac{};
  std::string info;
};
inline void encode_auth(Writer& w, const AuthRequest& a) {
  w.u16(a.version);
  w.u16(0);
  w.bytes(a.nonce.data(), kNonceLen);
  w.bytes(a.mac.data(), kMacLen);
  w.str(a.info);
}
inline bool decode_auth(Reader& r, AuthRequest* a) {
  a->version = r.u16();
  r.u16();
  read_array(r, &a->nonce);
  read_array(r, &a->mac);
  a->info = std::string(r.str(kMaxInfoLen));
  return r.done();
}

struct AuthReply {
  Mac mac{};
  uint64_t instance = 0;
  uint64_t epoch = 0;
  std::string node_id;
};
inline void encode_auth_reply(Writer& w, const AuthReply& a) {
  w.bytes(a.mac.data(), kMacLen);
  w.u64(a.instance);
  w.u64(a.epoch);
  w.str(a.node_id);
}
inline bool decode_auth_reply(Reader& r, AuthReply* a) {
  read_array(r, &a->mac);
  a->instance = r.u64();
  a->epoch = r.u64();
  a->node_id = std::string(r.str(kMaxIdLen));
  return r.done();
}

// ---- PEER_PUT -------------------------------------------------------------------------------
// Request body: u32 table_len, table, payload.
//   table: u8 data_path, u8 0, u16 0, then PUT_RESERVE's list (u32 n, n x {key, u64 size, u32 depth})
//   payload (inline): the n values back to back; body_len = 4 + table_len + sum(size).
// Reply: u64 epoch, u32 n, n x i32 (0 or a negative Status; NO_SPACE: no slot could be freed).

// The first bytes of every PEER_PUT / PEER_GET table: how the value bytes travel (and, for
// kRdma, the client's lane number).
inline void encode_table_head(Writer& w, uint8_t path = kInline, uint16_t lane = 0) {
  w.u8(path);
  w.u8(0);
  w.u16(lane);
}
inline uint8_t decode_table_head(Reader& r, uint16_t* lane = nullptr) {
  uint8_t path = r.u8();
  r.u8();
  uint16_t l = r.u16();
  if (lane) *lane = l;
  return path;
}
// The data path of a table without consuming it (the first byte).
inline uint8_t peek_data_path(const Reader& r) { return r.remaining() ? *r.pos() : 0xff; }

inline void encode_put_table(Writer& w, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                             const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths) {
  size_t len = 8;
  for (uint32_t i : idx) len += 16 + keys[i].size();
  w.reserve(4 + len);
  w.u32(static_cast<uint32_t>(len));
  encode_table_head(w);
  encode_put_reserve(w, keys, idx, sizes, depths);
}

// Decodes a PEER_PUT table (r spans exactly the table). Returns n, or -1 for a malformed or
// out-of-bounds table (a count over kPeerMaxKeys, a size over kPeerMaxValue, a payload over
// kPeerMaxPayload); *payload gets the sum of the sizes.
inline int64_t decode_put_table(Reader& r, KeyList* keys, std::vector<uint64_t>* sizes, std::vector<uint32_t>* depths,
                                uint8_t* data_path, uint64_t* payload) {
  *data_path = decode_table_head(r);
  if (r.remaining() < 4 || load_le<uint32_t>(r.pos()) > kPeerMaxKeys) return -1;  // before anything is allocated
  int64_t n = decode_put_reserve(r, keys, sizes, depths);
  if (n < 0 || n > kPeerMaxKeys || !r.done()) return -1;
  *payload = 0;
  for (uint64_t size : *sizes) {
    if (size > kPeerMaxValue) return -1;
    *payload += size;
  }
  return *payload <= kPeerMaxPayload ? n : -1;
}

// ---- PEER_GET -------------------------------------------------------------------------------
// Request body: u8 data_path, u8 0, u16 0, u32 n, n x {key, u64 capacity}.
// Reply: u64 epoch, u32 n, n x i64 status, then the values: value i follows when
//   0 <= status_i <= capacity_i (status = its length); a value larger than the capacity asked
//   for is reported with its length and not sent (the client says BUFFER_TOO_SMALL, or asks for
//   the size that way); < 0 is a Status (NOT_FOUND; NO_SPACE: on NVMe but no DRAM slot free to
//   stage it now). body_len = 12 + 8n + the bytes of the values sent.
constexpr size_t kGetItemMin = 4 + 1 + 8;

inline void encode_get_table(Writer& w, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                             const std::vector<uint64_t>& capacity) {
  size_t len = 8;
  for (uint32_t i : idx) len += 12 + keys[i].size();
  w.reserve(len);
  encode_table_head(w);
  w.u32(static_cast<uint32_t>(idx.size()));
  for (uint32_t i : idx) {
    w.str(keys[i]);
    w.u64(capacity[i]);
  }
}
inline int64_t decode_get_table(Reader& r, KeyList* keys, std::vector<uint64_t>* capacity, uint8_t* data_path) {
  *data_path = decode_table_head(r);
  uint32_t n = r.count(kGetItemMin);
  if (!r.ok() || n > kPeerMaxKeys) return -1;
  std::vector<std::string>& k = keys->resize(n);
  capacity->resize(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string_view s = r.str(kMaxKeyLen);
    (*capacity)[i] = r.u64();
    if (!r.ok()) return -1;
    k[i].assign(s.data(), s.size());
  }
  return r.done() ? n : -1;
}
// Bytes of a PEER_GET / PEER_PUT reply table for n keys.
inline uint64_t get_reply_table(uint32_t n) { return 12 + 8ull * n; }
inline uint64_t put_reply_table(uint32_t n) { return 12 + 4ull * n; }

// ---- VIEW -----------------------------------------------------------------------------------
// Request: empty. Reply: u64 epoch, u32 grace_ms, str self_id, u32 n, n x member,
//   u64 previous epoch (0: none), u32 m, m x member.
//   member: str id, str host, u16 port, u8 healthy, u8 0, u64 weight (IEEE-754 bits).
// grace_ms: how much longer reads should also ask the previous view's holders.
struct MemberInfo {
  std::string id, host;
  uint16_t port = 0;
  double weight = 0;
  bool healthy = true;
  bool operator==(const MemberInfo& o) const {
    return id == o.id && host == o.host && port == o.port && weight == o.weight && healthy == o.healthy;
  }
};
struct ViewInfo {
  uint64_t epoch = 0;      // 0: no cluster (the node is not a member of any)
  uint32_t grace_ms = 0;
  std::string self_id;     // the serving node's member id ("": not a member)
  std::vector<MemberInfo> members;
  uint64_t prev_epoch = 0;
  std::vector<MemberInfo> prev_members;
};

inline void encode_members(Writer& w, const std::vector<MemberInfo>& ms) {
  w.u32(static_cast<uint32_t>(ms.size()));
  for (const MemberInfo& m : ms) {
    w.str(m.id);
    w.str(m.host);
    w.u16(m.port);
    w.u8(m.healthy ? 1 : 0);
    w.u8(0);
    uint64_t bits;
    memcpy(&bits, &m.weight, sizeof bits);
    w.u64(bits);
  }
}
inline bool decode_members(Reader& r, std::vector<MemberInfo>* ms) {
  uint32_t n = r.count(20);
  if (!r.ok() || n > kMaxMembers) return false;
  ms->resize(n);
  for (MemberInfo& m : *ms) {
    m.id = std::string(r.str(kMaxIdLen));
    m.host = std::string(r.str(kMaxHostLen));
    m.port = r.u16();
    m.healthy = r.u8() != 0;
    r.u8();
    uint64_t bits = r.u64();
    memcpy(&m.weight, &bits, sizeof bits);
    if (!r.ok()) return false;
  }
  return true;
}
inline void encode_view(Writer& w, const ViewInfo& v) {
  w.u64(v.epoch);
  w.u32(v.grace_ms);
  w.str(v.self_id);
  encode_members(w, v.members);
  w.u64(v.prev_epoch);
  encode_members(w, v.prev_members);
}
inline bool decode_view(Reader& r, ViewInfo* v) {
  v->epoch = r.u64();
  v->grace_ms = r.u32();
  v->self_id = std::string(r.str(kMaxIdLen));
  if (!decode_members(r, &v->members)) return false;
  v->prev_epoch = r.u64();
  return decode_members(r, &v->prev_members) && r.done();
}

// ---- RDMA (data path kRdma) -----------------------------------------------------------------
// PEER_GET table: u8 kRdma, u8 0, u16 lane, u64 client, u64 node_instance, u32 n,
//   n x {key, u32 nseg, nseg x {u64 addr, u64 len, u32 rkey}}; the capacity of a key is the sum
//   of its segments' lengths. Reply: as inline, but no value bytes follow (body_len = 12 + 8n):
//   a status >= 0 means the value has been written into the segments, in order.
// PEER_PUT: u32 table_len, table: u8 kRdma, u8 0, u16 lane, u64 client, u64 node_instance, u32 n,
//   n x {key, u64 size, u32 depth, u32 nseg, nseg x {u64 addr, u64 len, u32 rkey}} (the segments
//   add up to size); nothing follows the table (body_len = 4 + table_len). Reply: as inline.
// client: the pool client's instance (random per client); node_instance: the node instance the
// lane was connected to (a node that restarted refuses it: ERROR kErrRdmaLane).
// RDMA_CONNECT request: u64 client, u16 lane, u16 0, u64 node_instance (expected; 0 = any),
//   endpoint, u32 n, n x region {u64 addr, u64 len, u32 rkey} (the client's registered memory on
//   the lane's device: descriptors must lie inside one of them). Reply: u64 node_instance,
//   endpoint, str device. endpoint: u32 qpn, u32 psn, u8[16] gid, u16 lid, u8 mtu, u8 link_layer.
//   The same lane connected again with the same endpoint only replaces its regions.
using RemoteSeg = rdma::RemoteRange;  // one descriptor: {addr, len, rkey}

// The descriptors of one kRdma request, in request order: key k's segments are
// segs[first[k] .. first[k+1]).
struct RdmaDescs {
  uint16_t lane = 0;
  uint64_t client = 0;
  uint64_t node_instance = 0;
  std::vector<RemoteSeg> segs;
  std::vector<uint32_t> first = {0};
  void clear() {
    segs.clear();
    first.assign(1, 0);
  }
  void end_key() { first.push_back(static_cast<uint32_t>(segs.size())); }
  uint64_t bytes(uint32_t k) const {
    uint64_t n = 0;
    for (uint32_t j = first[k]; j < first[k + 1]; j++) n += segs[j].len;
    return n;
  }
};

// One descriptor {u64 addr, u64 len, u32 rkey}.
inline void encode_seg(Writer& w, const RemoteSeg& s) {
  w.u64(s.addr);
  w.u64(s.len);
  w.u32(s.rkey);
}
inline RemoteSeg decode_seg(Reader& r) {
  RemoteSeg s;
  s.addr = r.u64();
  s.len = r.u64();
  s.rkey = r.u32();
  return s;
}

inline void encode_segs(Writer& w, const RdmaDescs& d, uint32_t k) {
  w.u32(d.first[k + 1] - d.first[k]);
  for (uint32_t j = d.first[k]; j < d.first[k + 1]; j++) encode_seg(w, d.segs[j]);
}
// One key's segments; false when out of bounds (a count over kRdmaMaxSegs, the request's total
// over kRdmaMaxDescs, an empty or oversized segment, a sum over kPeerMaxValue).
inline bool decode_segs(Reader& r, RdmaDescs* d) {
  uint32_t n = r.u32();
  if (!r.ok() || n > kRdmaMaxSegs || d->segs.size() + n > kRdmaMaxDescs || uint64_t(n) * kRdmaDescBytes > r.remaining())
    return false;
  uint64_t sum = 0;
  for (uint32_t j = 0; j < n; j++) {
    RemoteSeg s = decode_seg(r);
    sum += s.len;
    if (s.len == 0 || s.len > kPeerMaxValue || sum > kPeerMaxValue || s.addr + s.len < s.addr) return false;
    d->segs.push_back(s);
  }
  d->end_key();
  return r.ok();
}

inline void encode_rdma_head(Writer& w, const RdmaDescs& d) {
  encode_table_head(w, kRdma, d.lane);
  w.u64(d.client);
  w.u64(d.node_instance);
}
inline uint8_t decode_rdma_head(Reader& r, RdmaDescs* d) {
  uint8_t path = decode_table_head(r, &d->lane);
  d->client = r.u64();
  d->node_instance = r.u64();
  d->clear();
  return path;
}

// d.first is indexed by position in idx.
inline void encode_rdma_get_table(Writer& w, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                                  const RdmaDescs& d) {
  w.reserve(24 + idx.size() * 8 + d.segs.size() * kRdmaDescBytes);
  encode_rdma_head(w, d);
  w.u32(static_cast<uint32_t>(idx.size()));
  for (uint32_t k = 0; k < idx.size(); k++) {
    w.str(keys[idx[k]]);
    encode_segs(w, d, k);
  }
}
// caps get each key's capacity (the sum of its segments). n, or -1 when malformed.
inline int64_t decode_rdma_get_table(Reader& r, KeyList* keys, std::vector<uint64_t>* caps, RdmaDescs* d) {
  if (decode_rdma_head(r, d) != kRdma) return -1;
  uint32_t n = r.count(kGetItemMin);
  if (!r.ok() || n > kPeerMaxKeys) return -1;
  std::vector<std::string>& k = keys->resize(n);
  caps->resize(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string_view s = r.str(kMaxKeyLen);
    if (!r.ok() || !decode_segs(r, d)) return -1;
    k[i].assign(s.data(), s.size());
    (*caps)[i] = d->bytes(i);
  }
  return r.done() ? n : -1;
}

inline void encode_rdma_put_table(Writer& w, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                                  const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths,
                                  const RdmaDescs& d) {
  size_t len = 24;
  for (uint32_t k = 0; k < idx.size(); k++)
    len += 20 + keys[idx[k]].size() + (d.first[k + 1] - d.first[k]) * kRdmaDescBytes;
  w.reserve(4 + len);
  w.u32(static_cast<uint32_t>(len));
  encode_rdma_head(w, d);
  w.u32(static_cast<uint32_t>(idx.size()));
  for (uint32_t k = 0; k < idx.size(); k++) {
    uint32_t i = idx[k];
    w.str(keys[i]);
    w.u64(sizes[i]);
    w.u32(i < depths.size() ? depths[i] : 0);
    encode_segs(w, d, k);
  }
}
// n, or -1 when malformed (segments that do not add up to the size, bounds as above, values
// over kPeerMaxPayload in all).
inline int64_t decode_rdma_put_table(Reader& r, KeyList* keys, std::vector<uint64_t>* sizes,
                                     std::vector<uint32_t>* depths, RdmaDescs* d) {
  if (decode_rdma_head(r, d) != kRdma) return -1;
  uint32_t n = r.count(4 + 1 + 16);
  if (!r.ok() || n > kPeerMaxKeys) return -1;
  std::vector<std::string>& k = keys->resize(n);
  sizes->resize(n);
  depths->resize(n);
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    std::string_view s = r.str(kMaxKeyLen);
    (*sizes)[i] = r.u64();
    (*depths)[i] = r.u32();
    if (!r.ok() || !decode_segs(r, d) || d->bytes(i) != (*sizes)[i]) return -1;
    total += (*sizes)[i];
    k[i].assign(s.data(), s.size());
  }
  return r.done() && total <= kPeerMaxPayload ? n : -1;
}

// RDMA_CONNECT.
struct RdmaEndpoint {
  uint32_t qpn = 0, psn = 0;
  uint8_t gid[16] = {};
  uint16_t lid = 0;
  uint8_t mtu = 0, link_layer = 0;
};
inline void encode_endpoint(Writer& w, const RdmaEndpoint& e) {
  w.u32(e.qpn);
  w.u32(e.psn);
  w.bytes(e.gid, 16);
  w.u16(e.lid);
  w.u8(e.mtu);
  w.u8(e.link_layer);
}
inline bool decode_endpoint(Reader& r, RdmaEndpoint* e) {
  e->qpn = r.u32();
  e->psn = r.u32();
  const uint8_t* g = r.raw(16);
  if (g) memcpy(e->gid, g, 16);
  e->lid = r.u16();
  e->mtu = r.u8();
  e->link_layer = r.u8();
  return r.ok();
}

struct RdmaConnect {
  uint64_t client = 0;
  uint16_t lane = 0;
  uint64_t node_instance = 0;  // the node instance the client expects (0: any)
  RdmaEndpoint ep;
  std::vector<RemoteSeg> regions;
};
inline void encode_rdma_connect(Writer& w, const RdmaConnect& c) {
  w.reserve(64 + c.regions.size() * kRdmaDescBytes);
  w.u64(c.client);
  w.u16(c.lane);
  w.u16(0);
  w.u64(c.node_instance);
  encode_endpoint(w, c.ep);
  w.u32(static_cast<uint32_t>(c.regions.size()));
  for (const RemoteSeg& s : c.regions) encode_seg(w, s);
}
inline bool decode_rdma_connect(Reader& r, RdmaConnect* c) {
  c->client = r.u64();
  c->lane = r.u16();
  r.u16();
  c->node_instance = r.u64();
  if (!decode_endpoint(r, &c->ep)) return false;
  uint32_t n = r.u32();
  if (!r.ok() || n > kRdmaMaxRegions || uint64_t(n) * kRdmaDescBytes != r.remaining()) return false;
  c->regions.resize(n);
  for (RemoteSeg& s : c->regions) {
    s = decode_seg(r);
    if (s.addr + s.len < s.addr) return false;
  }
  return r.done();
}

struct RdmaConnectReply {
  uint64_t node_instance = 0;
  RdmaEndpoint ep;
  std::string device;
};
inline void encode_rdma_connect_reply(Writer& w, const RdmaConnectReply& a) {
  w.u64(a.node_instance);
  encode_endpoint(w, a.ep);
  w.str(a.device);
}
inline bool decode_rdma_connect_reply(Reader& r, RdmaConnectReply* a) {
  a->node_instance = r.u64();
  if (!decode_endpoint(r, &a->ep)) return false;
  a->device = std::string(r.str(kMaxIdLen));
  return r.done();
}

}  // namespace proto
}  // namespace mch
