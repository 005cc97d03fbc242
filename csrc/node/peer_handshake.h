// PeerHandshake: the server side of the TCP handshake (transport/auth.h), as a non-blocking
// state machine driven by the peer server's poller, in a fixed-size slot: nothing is allocated
// for a connection until it has proved it knows the cluster secret.
//
//   begin()     sends AUTH_CHALLENGE (version range, nonce_s, this node's id)
//   on_input()  reads the AUTH frame into the slot's buffer as it arrives; when it is whole,
//               checks version and MAC (constant time) and answers: the node's proof, or an
//               ERROR (kErrVersion / kErrAuthFailed / kErrBadFrame) before the slot is closed.
//
// A slot belongs to the poller thread only.
#pragma once
#include <cstdint>
#include <string>

#include "node/peer_protocol.h"
#include "transport/auth.h"
#include "transport/stream.h"

namespace mch {

struct HandshakeSlot {
  int fd = -1;                  // -1: free
  uint64_t generation = 0;      // bumped per use, so a stale epoll event is recognised
  Clock::time_point started{}, deadline{};
  Nonce nonce{};
  uint8_t buf[proto::kHeaderSize + proto::kAuthMaxBody];
  size_t have = 0;
};

class PeerHandshake {
 public:
  enum class Result {
    kPending,   // wait for more bytes
    kDone,      // authenticated; *version holds the agreed version; the fd moves to a session
    kRejected,  // an ERROR was sent (best effort); close the slot
    kClosed,    // the peer went away or the socket failed; close the slot
  };
  // Why a handshake was rejected, for counters and the log.
  enum class Reason { kNone, kBadFrame, kVersion, kMac };

  PeerHandshake(const Secret& secret, std::string node_id, uint64_t instance)
      : secret_(secret), node_id_(std::move(node_id)), instance_(instance) {}

  // Starts a slot on an accepted non-blocking socket: sends the challenge. false: the socket failed.
  bool begin(HandshakeSlot& slot, int fd, int timeout_ms) const;
  // Sends an ERROR frame (best effort); request_id 0: unasked (a connection refused at accept).
  void send_error(int fd, int32_t code, const std::string& msg, uint32_t request_id = 0) const;
  // The socket is readable. epoch: the view's epoch, sent with the node's proof.
  Result on_input(HandshakeSlot& slot, uint64_t epoch, uint16_t* version, std::string* peer_info,
                  Reason* why) const;

 private:
  Result finish(HandshakeSlot& slot, const proto::Header& h, uint64_t epoch, uint16_t* version,
                std::string* peer_info, Reason* why) const;
  Result reject(HandshakeSlot& slot, uint32_t request_id, int32_t code, const std::string& msg) const;
  bool send_now(int fd, const uint8_t* p, size_t n) const;

  const Secret& secret_;
  const std::string node_id_;
  const uint64_t instance_;
};

}  // namespace mch
