// The client <-> node wire protocol: frame header, op codes, body encoders and decoders, and
// the small socket helpers both ends use. docs/protocol.md is the prose version of this file.
//
// A frame is a fixed 24-byte header followed by `body_len` bytes of body, every integer
// little-endian:
//
//   offset 0  u32 magic       kMagic ("MCHK" on the wire)
//          4  u16 version     protocol version the body is encoded in
//          6  u16 op          Op below
//          8  u32 request_id  chosen by the requester, echoed in the reply
//         12  u32 flags       kFlagReply on replies; other bits are reserved (sent 0, ignored)
//         16  u64 body_len    at most kMaxBody
//
// Keys are u32 length + bytes; lists are u32 count + items. Bodies of each op are described
// next to their encoder below. Nothing here depends on the transport: the Unix socket
// (node_server / node_client) moves only frames and lets bytes travel through the shared arena;
// TCP and RDMA will carry the same frames (see docs/protocol.md).
//
// Owns nothing global. Writer and Reader are plain values owned by one connection; every
// function is thread-safe.
#pragma once
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/keys.h"

namespace mch {
namespace proto {

constexpr uint32_t kMagic = 0x4B48434Du;  // 'M' 'C' 'H' 'K' in wire (little-endian) order
constexpr uint16_t kVersion = 1;          // the newest version this build speaks
constexpr uint16_t kMinVersion = 1;       // the oldest version this build speaks
constexpr size_t kHeaderSize = 24;
// Largest body accepted. Shared-memory frames carry only keys and tickets (a 128-key batch with
// 2 KiB keys is ~270 KiB); the limit only bounds what a broken peer can make us allocate.
constexpr uint64_t kMaxBody = 64ull << 20;
constexpr uint32_t kMaxBatch = 1u << 16;  // keys per request
using mch::kMaxKeyLen;                    // common/keys.h

constexpr uint32_t kFlagReply = 1u << 0;

enum Op : uint16_t {
  kHello = 1,
  kPutReserve = 2,
  kPutCommit = 3,
  kGetPin = 4,
  kGetUnpin = 5,  // no reply
  kExists = 6,
  kPrefetch = 7,
  kRemove = 8,
  kRemoveAll = 9,
  kStats = 10,
  kPing = 11,
  kOpCount = 12,  // one past the last request op (array sizes)
  kError = 255,   // node -> client only: the request `request_id` failed
};

// Codes carried by an ERROR frame.
enum ErrorCode : int32_t {
  kErrVersion = 1,      // the frame's version is not one the node speaks (connection closed)
  kErrBadFrame = 2,     // malformed header or body (connection closed)
  kErrHelloFirst = 3,   // a request before HELLO (connection closed)
  kErrUnknownOp = 4,    // op not known to this node (connection kept)
  kErrInternal = 5,     // the node failed the request (connection closed)
  kErrShuttingDown = 6, // the node is stopping
  kErrTooManyConnections = 7,  // sent unasked (request_id 0) before closing a new connection
};

inline const char* op_name(uint16_t op) {
  switch (op) {
    case kHello: return "hello";
    case kPutReserve: return "put_reserve";
    case kPutCommit: return "put_commit";
    case kGetPin: return "get_pin";
    case kGetUnpin: return "get_unpin";
    case kExists: return "exists";
    case kPrefetch: return "prefetch";
    case kRemove: return "remove";
    case kRemoveAll: return "remove_all";
    case kStats: return "stats";
    case kPing: return "ping";
    case kError: return "error";
    default: return "unknown";
  }
}

// ---- little-endian scalars --------------------------------------------------------------

template <typename T>
inline T to_le(T v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  if constexpr (sizeof(T) == 2) return static_cast<T>(__builtin_bswap16(static_cast<uint16_t>(v)));
  if constexpr (sizeof(T) == 4) return static_cast<T>(__builtin_bswap32(static_cast<uint32_t>(v)));
  if constexpr (sizeof(T) == 8) return static_cast<T>(__builtin_bswap64(static_cast<uint64_t>(v)));
#endif
  return v;
}
template <typename T>
inline void store_le(uint8_t* p, T v) {
  v = to_le(v);
  memcpy(p, &v, sizeof(T));
}
template <typename T>
inline T load_le(const uint8_t* p) {
  T v;
  memcpy(&v, p, sizeof(T));
  return to_le(v);
}

// ---- header -----------------------------------------------------------------------------

struct Header {
  uint32_t magic = kMagic;
  uint16_t version = kVersion;
  uint16_t op = 0;
  uint32_t request_id = 0;
  uint32_t flags = 0;
  uint64_t body_len = 0;
};

inline void encode_header(uint8_t* p, const Header& h) {
  store_le(p + 0, h.magic);
  store_le(p + 4, h.version);
  store_le(p + 6, h.op);
  store_le(p + 8, h.request_id);
  store_le(p + 12, h.flags);
  store_le(p + 16, h.body_len);
}
inline Header decode_header(const uint8_t* p) {
  Header h;
  h.magic = load_le<uint32_t>(p + 0);
  h.version = load_le<uint16_t>(p + 4);
  h.op = load_le<uint16_t>(p + 6);
  h.request_id = load_le<uint32_t>(p + 8);
  h.flags = load_le<uint32_t>(p + 12);
  h.body_len = load_le<uint64_t>(p + 16);
  return h;
}

// ---- Writer: builds one frame (header + body) in a reusable buffer ------------------------

class Writer {
 public:
  // Starts a frame; the header's body_len is filled in by finish().
  void begin(uint16_t op, uint32_t request_id, uint32_t flags = 0, uint16_t version = kVersion) {
    len_ = 0;
    hdr_ = Header{};
    hdr_.op = op;
    hdr_.request_id = request_id;
    hdr_.flags = flags;
    hdr_.version = version;
    grow(kHeaderSize);
    len_ = kHeaderSize;
  }
  void u8(uint8_t v) { *put(1) = v; }
  void u16(uint16_t v) { store_le(put(2), v); }
  void u32(uint32_t v) { store_le(put(4), v); }
  void u64(uint64_t v) { store_le(put(8), v); }
  void i32(int32_t v) { store_le(put(4), v); }
  void i64(int64_t v) { store_le(put(8), v); }
  void bytes(const void* p, size_t n) {
    if (n) memcpy(put(n), p, n);
  }
  void str(std::string_view s) {  // u32 length + bytes
    u32(static_cast<uint32_t>(s.size()));
    bytes(s.data(), s.size());
  }
  // Reserves room for n more bytes (one growth instead of many for a known-size body).
  void reserve(size_t n) { grow(len_ + n); }
  // Writes the header; returns the whole frame.
  const uint8_t* finish() {
    hdr_.body_len = len_ - kHeaderSize;
    encode_header(buf_.data(), hdr_);
    return buf_.data();
  }
  size_t size() const { return len_; }
  const uint8_t* data() const { return buf_.data(); }

 private:
  uint8_t* put(size_t n) {
    grow(len_ + n);
    uint8_t* p = buf_.data() + len_;
    len_ += n;
    return p;
  }
  void grow(size_t need) {
    if (buf_.size() < need) buf_.resize(std::max(need, buf_.size() * 2 + 4096));
  }
  std::vector<uint8_t> buf_;
  size_t len_ = 0;
  Header hdr_;
};

// ---- Reader: bounds-checked cursor over one body ----------------------------------------

class Reader {
 public:
  Reader() = default;
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  uint8_t u8() { return take(1) ? p_[-1] : 0; }
  uint16_t u16() { return take(2) ? load_le<uint16_t>(p_ - 2) : 0; }
  uint32_t u32() { return take(4) ? load_le<uint32_t>(p_ - 4) : 0; }
  uint64_t u64() { return take(8) ? load_le<uint64_t>(p_ - 8) : 0; }
  int32_t i32() { return take(4) ? load_le<int32_t>(p_ - 4) : 0; }
  int64_t i64() { return take(8) ? load_le<int64_t>(p_ - 8) : 0; }
  // u32 length + bytes, at most max_len; a view into the body.
  std::string_view str(size_t max_len = kMaxBody) {
    uint32_t n = u32();
    if (!ok_ || n > max_len || !take(n)) {
      ok_ = false;
      return {};
    }
    return std::string_view(reinterpret_cast<const char*>(p_ - n), n);
  }
  // A list count that the rest of the body can actually hold (each item >= min_item bytes).
  uint32_t count(size_t min_item) {
    uint32_t n = u32();
    if (!ok_ || n > kMaxBatch || static_cast<uint64_t>(n) * min_item > remaining()) {
      ok_ = false;
      return 0;
    }
    return n;
  }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  const uint8_t* pos() const { return p_; }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && p_ == end_; }  // fully and correctly consumed
  void fail() { ok_ = false; }

 private:
  bool take(size_t n) {
    if (!ok_ || remaining() < n) {
      ok_ = false;
      return false;
    }
    p_ += n;
    return true;
  }
  const uint8_t* p_ = nullptr;
  const uint8_t* end_ = nullptr;
  bool ok_ = true;
};

// ---- bodies -----------------------------------------------------------------------------
// Request bodies are written by the client and read by the node; reply bodies the other way.
// `idx` selects which of the caller's keys go into the request (the client leaves out keys it
// rejects itself), so no key is copied into a temporary list.

// HELLO request: u16 min_version, u16 max_version, u32 client pid, str client info.
//   Sent with header version = the client's min_version.
// HELLO reply: u16 version (chosen), u16 reserved, u32 node pid, u64 instance id (random per
//   node start: a changed id means a new arena), u64 arena size, u32 max batch, u32 max key
//   length, str node info. The arena memfd rides along (SCM_RIGHTS on the Unix socket).
struct HelloReply {
  uint16_t version = 0;
  uint32_t node_pid = 0;
  uint64_t instance = 0;
  uint64_t arena_size = 0;
  uint32_t max_batch = 0;
  uint32_t max_key_len = 0;
  std::string info;
};
inline void encode_hello_reply(Writer& w, const HelloReply& h) {
  w.u16(h.version);
  w.u16(0);
  w.u32(h.node_pid);
  w.u64(h.instance);
  w.u64(h.arena_size);
  w.u32(h.max_batch);
  w.u32(h.max_key_len);
  w.str(h.info);
}
inline bool decode_hello_reply(Reader& r, HelloReply* h) {
  h->version = r.u16();
  r.u16();
  h->node_pid = r.u32();
  h->instance = r.u64();
  h->arena_size = r.u64();
  h->max_batch = r.u32();
  h->max_key_len = r.u32();
  h->info = std::string(r.str(4096));
  return r.ok();  // trailing bytes allowed: later versions may append fields
}

// Key lists (GET_PIN, EXISTS, PREFETCH, REMOVE requests): u32 n, n x key.
inline void encode_keys(Writer& w, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx) {
  size_t total = 4;
  for (uint32_t i : idx) total += 4 + keys[i].size();
  w.reserve(total);
  w.u32(static_cast<uint32_t>(idx.size()));
  for (uint32_t i : idx) w.str(keys[i]);
}
// A list of exactly n keys that keeps its strings' storage across batches: shrinking parks the
// surplus strings (with their buffers) in a spare list instead of freeing them, so a warm
// connection decodes a batch without allocating.
class KeyList {
 public:
  std::vector<std::string>& resize(size_t n) {
    while (keys_.size() > n) {
      spare_.push_back(std::move(keys_.back()));
      keys_.pop_back();
    }
    while (keys_.size() < n) {
      if (spare_.empty()) {
        keys_.emplace_back();
      } else {
        keys_.push_back(std::move(spare_.back()));
        spare_.pop_back();
      }
    }
    return keys_;
  }
  std::vector<std::string>& vec() { return keys_; }

 private:
  std::vector<std::string> keys_, spare_;
};

// Decodes a key list into `keys` (exactly n entries). Returns n, or -1 for a malformed body.
inline int64_t decode_keys(Reader& r, KeyList* keys) {
  uint32_t n = r.count(4);
  if (!r.ok()) return -1;
  std::vector<std::string>& k = keys->resize(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string_view s = r.str(kMaxKeyLen);
    if (!r.ok()) return -1;
    k[i].assign(s.data(), s.size());
  }
  return n;
}

// PUT_RESERVE request: u32 n, n x {key, u64 size, u32 depth}.
inline void encode_put_reserve(Writer& w, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                               const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths) {
  size_t total = 4;
  for (uint32_t i : idx) total += 16 + keys[i].size();
  w.reserve(total);
  w.u32(static_cast<uint32_t>(idx.size()));
  for (uint32_t i : idx) {
    w.str(keys[i]);
    w.u64(sizes[i]);
    w.u32(i < depths.size() ? depths[i] : 0);
  }
}
inline int64_t decode_put_reserve(Reader& r, KeyList* keys, std::vector<uint64_t>* sizes,
                                  std::vector<uint32_t>* depths) {
  uint32_t n = r.count(16);
  if (!r.ok()) return -1;
  std::vector<std::string>& k = keys->resize(n);
  sizes->resize(n);
  depths->resize(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string_view s = r.str(kMaxKeyLen);
    (*sizes)[i] = r.u64();
    (*depths)[i] = r.u32();
    if (!r.ok()) return -1;
    k[i].assign(s.data(), s.size());
  }
  return n;
}

// PUT_RESERVE reply: u32 n, n x {i32 status, u64 offset, u64 token}.
//   status 0: copy the value to arena+offset, then commit the token; 1: the same key with the
//   same size is stored already (nothing to copy, no token); < 0: a Status (common/status.h).
struct ReserveResult {
  int32_t status = 0;
  uint64_t offset = 0;
  uint64_t token = 0;
};
constexpr size_t kReserveResultWire = 20;

// PUT_COMMIT request: u32 n, n x {u64 token, u8 ok}. ok = 0 gives the slot back (the client
//   could not fill it). Reply: u32 n, n x i32 result (0 or a negative Status).
// GET_UNPIN request: u32 n, n x u64 token. No reply.

// GET_PIN reply: u32 n, n x {i64 status, u64 offset, u64 token, u8 tier}.
//   status >= 0: value length, pinned at arena+offset until the token is unpinned;
//   < 0: a Status (NOT_FOUND for a miss). tier: 1 DRAM, 2 NVMe (promoted into DRAM).
struct PinResult {
  int64_t status = 0;
  uint64_t offset = 0;
  uint64_t token = 0;
  uint8_t tier = 0;
};
constexpr size_t kPinResultWire = 25;

// EXISTS reply: u32 n, n x i32 (1 present, 0 absent, < 0 bad key).
// PREFETCH reply: i32 keys queued for promotion.
// REMOVE reply: u32 n, n x i32 (0 or NOT_FOUND). REMOVE_ALL request: empty; reply: i32.
// STATS request: empty; reply: str (a JSON object).
// PING: any body; the reply echoes it.
// ERROR (node -> client, flags kFlagReply, request_id of the failed request):
//   i32 code (ErrorCode), u16 node min version, u16 node max version, str message.

// ---- socket helpers (stream sockets: Unix today, TCP later) -------------------------------

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline` (0 when passed).
inline int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

// Sends all n bytes before `deadline`. Returns 0 or an errno value (ETIMEDOUT on the deadline).
inline int send_all(int fd, const void* buf, size_t n, Clock::time_point deadline) {
  const uint8_t* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int left = ms_left(deadline);
      if (left == 0) return ETIMEDOUT;
      pollfd pfd{fd, POLLOUT, 0};
      int pr = ::poll(&pfd, 1, left);
      if (pr == 0) return ETIMEDOUT;
      if (pr < 0 && errno != EINTR) return errno;
      continue;
    }
    return r < 0 ? errno : EPIPE;
  }
  return 0;
}

// Receives exactly n bytes before `deadline`. Returns 0, ECONNRESET for an orderly close by the
// peer, ETIMEDOUT, or another errno value.
inline int recv_all(int fd, void* buf, size_t n, Clock::time_point deadline) {
  uint8_t* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return ECONNRESET;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int left = ms_left(deadline);
      if (left == 0) return ETIMEDOUT;
      pollfd pfd{fd, POLLIN, 0};
      int pr = ::poll(&pfd, 1, left);
      if (pr == 0) return ETIMEDOUT;
      if (pr < 0 && errno != EINTR) return errno;
      continue;
    }
    return errno;
  }
  return 0;
}

}  // namespace proto
}  // namespace mch
