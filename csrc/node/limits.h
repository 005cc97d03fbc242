// Limits: every bound the node puts on what a peer can make it do, in one place, so every
// listener (the Unix socket today, the cluster's TCP listener) applies the same ones.
//
//   * max_request_body(op): the largest body each op may announce. The server checks it on the
//     24-byte header, before one body byte is buffered; and a FrameReader grows its buffer only
//     as bytes actually arrive, so a header alone allocates nothing.
//   * Before HELLO only HELLO and PING are accepted, both small (kMaxHelloBody, kMaxPingBody).
//   * ServerLimits: how many connections, how long a new one may stay silent before HELLO, and
//     when an idle connection may be closed to make room for a new client.
//
// docs/architecture.md ("Trust and limits") lists every limit with its default. Pure data and
// pure functions: thread-safe.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/keys.h"
#include "node/protocol.h"
#include "transport/frame.h"

namespace mch {
namespace limits {

constexpr size_t kMaxClientInfo = 4096;   // HELLO's free-text client description
constexpr size_t kMaxSettings = 8192;     // HELLO's settings fingerprint (node/settings_check.h)
constexpr uint64_t kMaxHelloBody = 8 + 4 + kMaxClientInfo + 4 + kMaxSettings;
constexpr uint64_t kMaxPingBody = 4096;
constexpr uint64_t kMaxProbeBody = 64 * 1024;  // an op this node does not know (answered ERROR 4)

// A list of at most kMaxBatch items of at most `item` bytes, within the frame limit.
constexpr uint64_t list_body(uint64_t item) {
  return std::min<uint64_t>(proto::kMaxBody, 4 + uint64_t(proto::kMaxBatch) * item);
}

// The largest request body a node accepts for `op` (0: the op carries none).
constexpr uint64_t max_request_body(uint16_t op) {
  switch (op) {
    case proto::kHello: return kMaxHelloBody;
    case proto::kPing: return kMaxPingBody;
    case proto::kPutReserve: return list_body(4 + kMaxKeyLen + 8 + 4);  // key, size, depth
    case proto::kPutCommit: return list_body(8 + 1);                    // token, ok
    case proto::kGetPin:
    case proto::kExists:
    case proto::kPrefetch:
    case proto::kRemove:
    case proto::kValueSize:
    case proto::kGetLocate: return list_body(4 + kMaxKeyLen);
    case proto::kGetUnpin:
    case proto::kLocateRelease: return list_body(8);
    case proto::kRemovePrefix: return 4 + kMaxKeyLen;
    case proto::kRemoveAll:
    case proto::kStats:
    case proto::kOpenData: return 0;
    default: return kMaxProbeBody;
  }
}

// Ops a connection may send before its HELLO.
constexpr bool allowed_before_hello(uint16_t op) { return op == proto::kHello || op == proto::kPing; }

constexpr uint32_t kDefaultMaxConnections = 1024;

struct ServerLimits {
  // A frame that has started must finish arriving, and a reply must be taken, within it.
  int timeout_ms = 5000;
  // A new connection must send HELLO within it, or it is closed (0: timeout_ms).
  int hello_timeout_ms = 0;
  // Connections served at once (one thread each). At the cap a new connection takes the place
  // of a silent one (no HELLO yet) or of one idle for evict_idle_after_ms holding no tokens;
  // when every connection is busy it gets ERROR 7 (too many connections).
  uint32_t max_connections = kDefaultMaxConnections;
  int evict_idle_after_ms = 1000;

  int hello_deadline_ms() const { return hello_timeout_ms > 0 ? hello_timeout_ms : timeout_ms; }
};

}  // namespace limits
}  // namespace mch
