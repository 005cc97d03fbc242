// The client <-> node protocol: op codes, ERROR codes, and the body encoders and decoders of
// every op. Frames (header, Writer, Reader) are transport/frame.h; docs/protocol.md is the prose
// version of both files.
//
// Keys are u32 length + bytes; lists are u32 count + items. Bodies of each op are described
// next to their encoder below. Nothing here depends on the transport: the Unix socket moves only
// frames and lets bytes travel through the shared arena; TCP and RDMA will carry the same frames
// (see docs/protocol.md).
//
// Owns nothing global; every function is thread-safe.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/keys.h"
#include "common/put_waves.h"
#include "transport/frame.h"

namespace mch {
namespace proto {

using mch::kMaxKeyLen;  // common/keys.h

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
  kValueSize = 12,
  kOpenData = 13,       // the reply carries the NVMe data file, read-only (SCM_RIGHTS)
  kGetLocate = 14,
  kLocateRelease = 15,  // no reply
  kRemovePrefix = 16,
  kOpCount = 17,  // one past the last request op (array sizes)
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
  kErrNotAllowed = 8,   // the client's uid may not use this node (sent unasked, then closed)
  kErrSettings = 9,     // the node was started with other settings than the client's (closed)
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
    case kValueSize: return "value_size";
    case kOpenData: return "open_data";
    case kGetLocate: return "get_locate";
    case kLocateRelease: return "locate_release";
    case kRemovePrefix: return "remove_prefix";
    case kError: return "error";
    default: return "unknown";
  }
}

// ---- bodies -----------------------------------------------------------------------------
// Request bodies are written by the client and read by the node; reply bodies the other way.
// `idx` selects which of the caller's keys go into the request (the client leaves out keys it
// rejects itself), so no key is copied into a temporary list.

// HELLO request: u16 min_version, u16 max_version, u32 client pid, str client info, and
//   (optional, appended) str settings: the client's settings fingerprint (node/settings_check.h).
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

// PUT_RESERVE header flag kFlagKeepExisting: PutMode::kKeepExisting (a stored key keeps its
//   value); without it a committed value replaces the stored one everywhere.
constexpr uint32_t kFlagKeepExisting = 1u << 1;
// PUT_RESERVE reply: u32 n, n x {i32 status, u64 offset, u64 token}.
//   status 0: copy the value to arena+offset, then commit the token; 1: kKeepExisting and the key
//   is stored already (nothing to copy, no token); < 0: a Status (common/status.h).
using ReserveResult = Reservation;  // common/put_waves.h
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

// EXISTS reply: u32 n, n x i32 (where each key is: 1 DRAM, 2 NVMe only, 0 absent, < 0 bad key).
// PREFETCH request: the key list, then optionally u32 step (pages promoted per step; absent or 0:
//   the node's default). Reply: i32 keys queued for promotion.
// REMOVE reply: u32 n, n x i32 (0 or NOT_FOUND). REMOVE_ALL request: empty; reply: i32.
// REMOVE_PREFIX request: str prefix (1 to kMaxKeyLen bytes); reply: i64 (keys removed, or a
//   Status).
// VALUE_SIZE request: a key list; reply: u32 n, n x i64 (the value's length, or a Status). The
//   node only looks at its indexes: no page moves, no hit is counted.
// Direct reads: an NVMe page the node does not stage in DRAM (no slot is free, or issue 15's
//   policy says staging does not pay) is read by the client itself, straight into its buffers.
// OPEN_DATA request: empty; reply: i32 status (0: the NVMe data file rides along, read-only;
//   NOT_FOUND: the node has no NVMe tier). The client keeps the descriptor per node instance.
// GET_LOCATE request: a key list; reply: u32 n, n x {i64 status, u64 offset, u64 checksum,
//   u64 token}: status is the value's length (or a Status), the value lies at `offset` in the data
//   file and its XXH3-64 is `checksum` (the client verifies it: a mismatch is a miss); its region
//   is not reclaimed until the token is given back with LOCATE_RELEASE (or the connection ends).
// LOCATE_RELEASE request: u32 n, n x u64 token. No reply.
struct LocateResult {
  int64_t status = 0;
  uint64_t offset = 0;
  uint64_t checksum = 0;
  uint64_t token = 0;
};
constexpr size_t kLocateResultWire = 32;
// STATS request: empty; reply: str (a JSON object).
// PING: any body; the reply echoes it.
// ERROR (node -> client, flags kFlagReply, request_id of the failed request):
//   i32 code (ErrorCode), u16 node min version, u16 node max version, str message.
inline void encode_error(Writer& w, uint32_t request_id, int32_t code, std::string_view message) {
  w.begin(kError, request_id, kFlagReply, kVersion);
  w.i32(code);
  w.u16(kMinVersion);
  w.u16(kVersion);
  w.str(message);
}
struct ErrorReply {
  int32_t code = 0;
  std::string message;
};
inline ErrorReply decode_error(Reader r) {
  ErrorReply e;
  e.code = r.i32();
  r.u16();
  r.u16();
  e.message = std::string(r.str(4096));
  return e;
}

}  // namespace proto
}  // namespace mch
