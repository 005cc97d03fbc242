// PeerPolicy: who may be on the other end of a node connection. A node serves clients of its
// own uid plus an explicit allow-list (node.allowed_uids); a client talks only to a node run by
// its own uid or one on the same list. A connected client can read and write every page in the
// node's arena, and a node receives every page its clients store, so the uid is the trust
// boundary, checked on both sides with the kernel's peer credentials (SO_PEERCRED).
//
// Transports that carry no credentials (TCP) report uid -1 and pass this check: there the
// cluster's handshake decides. Immutable after construction; thread-safe.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mch {

class PeerPolicy {
 public:
  explicit PeerPolicy(std::vector<uint32_t> allowed = {}) : self_(geteuid()), allowed_(std::move(allowed)) {}

  bool allows(int64_t uid) const {
    if (uid < 0) return true;  // no credentials on this transport
    auto u = static_cast<uint32_t>(uid);
    return u == self_ || std::find(allowed_.begin(), allowed_.end(), u) != allowed_.end();
  }
  uint32_t self() const { return self_; }

  // Why a peer of `uid` is refused, for the user: `peer` names it ("a client", "the node").
  std::string refusal(int64_t uid, const std::string& peer, const std::string& where) const {
    return peer + " on " + where + " runs as uid " + std::to_string(uid) + ", not as this process's uid " +
           std::to_string(self_) + "; if you trust it, add " + std::to_string(uid) +
           " to node.allowed_uids";
  }

 private:
  uint32_t self_;
  std::vector<uint32_t> allowed_;
};

}  // namespace mch
