// Peer authentication: see auth.h.
#include "transport/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <initializer_list>
#include <utility>

#include "common/error.h"

namespace mch {

namespace {

struct Part {
  const void* p;
  size_t n;
};

// One-shot HMAC() over the parts laid end to end (HMAC_CTX is deprecated in OpenSSL 3).
Mac hmac(const std::string& key, std::initializer_list<Part> parts) {
  std::string msg;
  for (const Part& part : parts) msg.append(static_cast<const char*>(part.p), part.n);
  Mac out{};
  unsigned int len = 0;
  unsigned char* r = HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                          reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len);
  if (!r || len != kMacLen) throw EngineError(EngineError::kIo, "HMAC-SHA256 failed (OpenSSL)");
  return out;
}

}  // namespace

Secret::Secret(std::string key) : key_(std::move(key)) {
  if (key_.empty()) throw EngineError(EngineError::kInvalid, "the cluster secret is empty");
}

Secret::~Secret() { OPENSSL_cleanse(key_.data(), key_.size()); }

Mac Secret::client_mac(uint16_t version, const Nonce& nonce_s, const Nonce& nonce_c) const {
  uint8_t v[2] = {static_cast<uint8_t>(version), static_cast<uint8_t>(version >> 8)};
  return hmac(key_, {{"mch-client", 10}, {v, 2}, {nonce_s.data(), kNonceLen}, {nonce_c.data(), kNonceLen}});
}

Mac Secret::server_mac(uint16_t version, const Nonce& nonce_c, const Nonce& nonce_s, std::string_view node_id) const {
  uint8_t v[2] = {static_cast<uint8_t>(version), static_cast<uint8_t>(version >> 8)};
  return hmac(key_, {{"mch-server", 10}, {v, 2}, {nonce_c.data(), kNonceLen}, {nonce_s.data(), kNonceLen},
                     {node_id.data(), node_id.size()}});
}

Nonce random_nonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1)
    throw EngineError(EngineError::kIo, "cannot draw random bytes (OpenSSL RAND_bytes)");
  return n;
}

bool macs_equal(const Mac& a, const Mac& b) { return CRYPTO_memcmp(a.data(), b.data(), kMacLen) == 0; }

}  // namespace mch
