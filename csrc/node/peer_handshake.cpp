// PeerHandshake: see peer_handshake.h and transport/auth.h.
#include "node/peer_handshake.h"

#include <errno.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace mch {

using namespace proto;

namespace {

// A frame built on the stack (the handshake allocates nothing): at most 256 bytes; strings that
// do not fit are cut.
class FixedFrame {
 public:
  FixedFrame(uint16_t op, uint32_t request_id, uint16_t version) {
    h_.op = op;
    h_.request_id = request_id;
    h_.flags = kFlagReply;
    h_.version = version;
  }
  void u16(uint16_t v) { put(&v, 2); }
  void i32(int32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void bytes(const void* p, size_t n) { put(p, n); }
  void str(std::string_view s) {
    uint32_t n = static_cast<uint32_t>(std::min(s.size(), sizeof b_ - n_ - 4));
    put(&n, 4);
    put(s.data(), n);
  }
  const uint8_t* finish() {
    h_.body_len = n_ - kHeaderSize;
    encode_header(b_, h_);
    return b_;
  }
  size_t size() const { return n_; }

 private:
  void put(const void* p, size_t n) {  // host order == wire order (little-endian hosts only)
    n = std::min(n, sizeof b_ - n_);
    memcpy(b_ + n_, p, n);
    n_ += n;
  }
  uint8_t b_[256];
  size_t n_ = kHeaderSize;
  Header h_;
};
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "FixedFrame writes host-order integers");

}  // namespace

bool PeerHandshake::send_now(int fd, const uint8_t* p, size_t n) const {
  ssize_t r;
  do {
    r = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  return r == static_cast<ssize_t>(n);  // a fresh socket's buffer always takes a handshake frame
}

bool PeerHandshake::begin(HandshakeSlot& slot, int fd, int timeout_ms) const {
  slot.fd = fd;
  slot.generation++;
  slot.started = Clock::now();
  slot.deadline = slot.started + std::chrono::milliseconds(timeout_ms);
  slot.nonce = random_nonce();
  slot.have = 0;
  FixedFrame f(kAuthChallenge, 0, kVersion);
  f.u16(kMinVersion);
  f.u16(kVersion);
  f.bytes(slot.nonce.data(), kNonceLen);
  f.str(node_id_);
  const uint8_t* p = f.finish();
  return send_now(fd, p, f.size());
}

void PeerHandshake::send_error(int fd, int32_t code, const std::string& msg, uint32_t request_id) const {
  FixedFrame f(kError, request_id, kVersion);
  f.i32(code);
  f.u16(kMinVersion);
  f.u16(kVersion);
  f.str(msg);
  const uint8_t* p = f.finish();
  send_now(fd, p, f.size());
}

PeerHandshake::Result PeerHandshake::reject(HandshakeSlot& slot, uint32_t request_id, int32_t code,
                                            const std::string& msg) const {
  send_error(slot.fd, code, msg, request_id);
  return Result::kRejected;
}

PeerHandshake::Result PeerHandshake::on_input(HandshakeSlot& slot, uint64_t epoch, uint16_t* version,
                                              std::string* peer_info, Reason* why) const {
  for (;;) {
    size_t need = kHeaderSize;
    if (slot.have >= kHeaderSize) {
      Header h = decode_header(slot.buf);
      if (slot.have == kHeaderSize) {  // the header just arrived: check it before reading on
        if (h.magic != kMagic || h.op != kAuth || (h.flags & kFlagReply) || h.body_len > kAuthMaxBody) {
          *why = Reason::kBadFrame;
          return reject(slot, h.request_id, kErrBadFrame, "expected an AUTH frame: not a mooncake-hicache peer");
        }
        if (h.version < kMinVersion || h.version > kVersion) {
          *why = Reason::kVersion;
          return reject(slot, h.request_id, kErrVersion,
                        "protocol version mismatch: this node speaks versions " + std::to_string(kMinVersion) + ".." +
                            std::to_string(kVersion) + ", the peer sent " + std::to_string(h.version) +
                            "; run the same mooncake-hicache release on every host");
        }
      }
      need = kHeaderSize + static_cast<size_t>(h.body_len);
      if (slot.have == need) return finish(slot, h, epoch, version, peer_info, why);
    }
    ssize_t r = ::recv(slot.fd, slot.buf + slot.have, need - slot.have, MSG_DONTWAIT);
    if (r == 0) return Result::kClosed;
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? Result::kPending : Result::kClosed;
    }
    slot.have += static_cast<size_t>(r);
  }
}

PeerHandshake::Result PeerHandshake::finish(HandshakeSlot& slot, const Header& h, uint64_t epoch, uint16_t* version,
                                            std::string* peer_info, Reason* why) const {
  Reader r(slot.buf + kHeaderSize, static_cast<size_t>(h.body_len));
  AuthRequest a;
  if (!decode_auth(r, &a) || a.version != h.version) {
    *why = Reason::kBadFrame;
    return reject(slot, h.request_id, kErrBadFrame, "malformed AUTH body");
  }
  if (!macs_equal(secret_.client_mac(a.version, slot.nonce, a.nonce), a.mac)) {
    *why = Reason::kMac;
    return reject(slot, h.request_id, kErrAuthFailed,
                  "authentication failed: the peer does not know this cluster's secret (check cluster.secret_file "
                  "on both hosts)");
  }
  FixedFrame f(kAuth, h.request_id, a.version);
  Mac mac = secret_.server_mac(a.version, a.nonce, slot.nonce, node_id_);
  f.bytes(mac.data(), kMacLen);
  f.u64(instance_);
  f.u64(epoch);
  f.str(node_id_);
  const uint8_t* p = f.finish();
  if (!send_now(slot.fd, p, f.size())) return Result::kClosed;
  *version = a.version;
  *peer_info = a.info;
  *why = Reason::kNone;
  return Result::kDone;
}

}  // namespace mch
