// Peer authentication: the cluster's mutual challenge-response handshake (docs/protocol.md,
// "The TCP side"). Both ends prove they know the shared secret without sending it:
//
//   server -> client  nonce_s (32 random bytes)
//   client -> server  nonce_c, mac_c = HMAC-SHA256(secret, "mch-client" | version | nonce_s | nonce_c)
//   server -> client  mac_s = HMAC-SHA256(secret, "mch-server" | version | nonce_c | nonce_s | node_id)
//
// version is the u16 protocol version the client chose (little-endian), node_id the server's
// member id, so a reply cannot be replayed into another session, version or member. MACs are
// compared in constant time (CRYPTO_memcmp). Nonces come from OpenSSL's RAND_bytes.
//
// Secret owns a copy of the key and wipes it on destruction. Every function is thread-safe.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace mch {

constexpr size_t kNonceLen = 32;
constexpr size_t kMacLen = 32;
using Nonce = std::array<uint8_t, kNonceLen>;
using Mac = std::array<uint8_t, kMacLen>;

class Secret {
 public:
  explicit Secret(std::string key);  // EngineError(kInvalid) when empty
  ~Secret();
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;

  Mac client_mac(uint16_t version, const Nonce& nonce_s, const Nonce& nonce_c) const;
  Mac server_mac(uint16_t version, const Nonce& nonce_c, const Nonce& nonce_s, std::string_view node_id) const;

 private:
  std::string key_;
};

// Fresh random bytes (EngineError(kIo) if the generator fails).
Nonce random_nonce();
// Constant-time equality of two MACs.
bool macs_equal(const Mac& a, const Mac& b);

}  // namespace mch
