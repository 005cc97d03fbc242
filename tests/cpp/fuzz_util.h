// Input generation for the decoder fuzz tests: random byte strings, valid request frames of
// every op, and mutations of them (bit flips, interesting integers in length and count fields,
// truncation, extension, spliced chunks).
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "node/protocol.h"

namespace mch::testing {

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  uint64_t next() { return rng_(); }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  bool one_in(uint64_t n) { return below(n) == 0; }

  std::vector<uint8_t> random_bytes(size_t max_len) {
    std::vector<uint8_t> b(below(max_len + 1));
    for (auto& x : b) x = static_cast<uint8_t>(rng_());
    return b;
  }

  // Values that sit on the bounds the decoders check.
  uint64_t interesting() {
    static const uint64_t k[] = {0, 1, 2, 3, 4, 7, 8, 9, 16, 24, 255, 256, 4095, 4096, 4097, 2047, 2048, 2049,
                                 proto::kMaxBatch - 1, proto::kMaxBatch, proto::kMaxBatch + 1, 0x7fffffff,
                                 0x80000000, 0xfffffffe, 0xffffffff, proto::kMaxBody, proto::kMaxBody + 1,
                                 0x7fffffffffffffffull, 0x8000000000000000ull, ~0ull};
    return k[below(sizeof k / sizeof k[0])];
  }

  // Applies 1..4 mutations in place. `protect` leading bytes are left alone (e.g. a header
  // that must stay intact to reach the body decoder); pass 0 to mutate everything.
  void mutate(std::vector<uint8_t>& b, size_t protect = 0) {
    int n = 1 + static_cast<int>(below(4));
    for (int i = 0; i < n; i++) mutate_once(b, protect);
  }

 private:
  void mutate_once(std::vector<uint8_t>& b, size_t protect) {
    size_t body = b.size() > protect ? b.size() - protect : 0;
    auto pos = [&]() { return protect + below(body); };
    switch (below(8)) {
      case 0:  // flip one bit
        if (body) b[pos()] ^= static_cast<uint8_t>(1u << below(8));
        break;
      case 1:  // random byte
        if (body) b[pos()] = static_cast<uint8_t>(rng_());
        break;
      case 2:  // interesting u32 (a length or a count)
        if (body >= 4) {
          size_t p = protect + below(body - 3);
          proto::store_le<uint32_t>(&b[p], static_cast<uint32_t>(interesting()));
        }
        break;
      case 3:  // interesting u64 (a size, an offset or a token)
        if (body >= 8) {
          size_t p = protect + below(body - 7);
          proto::store_le<uint64_t>(&b[p], interesting());
        }
        break;
      case 4:  // truncate
        b.resize(protect + below(body + 1));
        break;
      case 5: {  // append random bytes
        size_t k = 1 + below(64);
        for (size_t i = 0; i < k; i++) b.push_back(static_cast<uint8_t>(rng_()));
        break;
      }
      case 6:  // delete a chunk
        if (body) {
          size_t p = pos(), k = 1 + below(std::min<size_t>(16, b.size() - p));
          b.erase(b.begin() + static_cast<long>(p), b.begin() + static_cast<long>(p + k));
        }
        break;
      default:  // duplicate a chunk
        if (body) {
          size_t p = pos(), k = 1 + below(std::min<size_t>(16, b.size() - p));
          std::vector<uint8_t> chunk(b.begin() + static_cast<long>(p), b.begin() + static_cast<long>(p + k));
          b.insert(b.begin() + static_cast<long>(pos()), chunk.begin(), chunk.end());
        }
        break;
    }
  }

  std::mt19937_64 rng_;
};

// Bodies of valid requests, one writer per shape (valid_request picks by op).
struct RequestBody {
  Mutator& m;
  const std::vector<uint64_t>& tokens;
  proto::Writer& w;
  std::vector<std::string> keys;  // from a small pool, so that gets can hit what puts stored
  std::vector<uint32_t> idx;

  RequestBody(Mutator& mut, const std::vector<uint64_t>& t, proto::Writer& out) : m(mut), tokens(t), w(out) {
    for (size_t i = 0, n = m.below(6); i < n; i++) {
      keys.push_back("fuzz-key-" + std::to_string(m.below(20)));
      idx.push_back(static_cast<uint32_t>(i));
    }
  }
  uint64_t token() { return tokens.empty() || m.one_in(4) ? m.next() : tokens[m.below(tokens.size())]; }
  void hello() {
    w.u16(proto::kMinVersion);
    w.u16(proto::kVersion);
    w.u32(1);
    w.str("fuzz");
  }
  void reserve() {
    std::vector<uint64_t> sizes;
    std::vector<uint32_t> depths;
    for (size_t i = 0; i < keys.size(); i++) {
      sizes.push_back(m.one_in(8) ? m.interesting() : 1 + m.below(64 * 1024));
      depths.push_back(static_cast<uint32_t>(m.below(5)));
    }
    proto::encode_put_reserve(w, keys, idx, sizes, depths);
  }
  void commit() {  // (token, ok) pairs
    w.u32(static_cast<uint32_t>(keys.size()));
    for (size_t i = 0; i < keys.size(); i++) {
      w.u64(token());
      w.u8(static_cast<uint8_t>(m.below(2)));
    }
  }
  void token_list() {  // GET_UNPIN, LOCATE_RELEASE
    w.u32(static_cast<uint32_t>(keys.size()));
    for (size_t i = 0; i < keys.size(); i++) w.u64(token());
  }
  void prefetch() {  // the key list, then (half of the time) the optional step
    proto::encode_keys(w, keys, idx);
    if (m.one_in(2)) w.u32(static_cast<uint32_t>(m.one_in(8) ? m.interesting() : m.below(5)));
  }
  void prefix() {  // "fuzz-key-1" takes 1 and 10..19; now and then an empty prefix
    w.str(m.one_in(8) ? std::string() : "fuzz-key-" + std::to_string(m.below(20)));
  }
};

// A valid request frame of `op`; tokens from `tokens`, which the caller fills from earlier replies.
inline std::vector<uint8_t> valid_request(Mutator& m, uint16_t op, uint32_t id, const std::vector<uint64_t>& tokens) {
  proto::Writer w;
  w.begin(op, id);
  RequestBody b(m, tokens, w);
  switch (op) {
    case proto::kHello: b.hello(); break;
    case proto::kPutReserve: b.reserve(); break;
    case proto::kPutCommit: b.commit(); break;
    case proto::kGetUnpin:
    case proto::kLocateRelease: b.token_list(); break;
    case proto::kGetPin:
    case proto::kExists:
    case proto::kRemove:
    case proto::kValueSize:
    case proto::kGetLocate: proto::encode_keys(w, b.keys, b.idx); break;
    case proto::kPrefetch: b.prefetch(); break;
    case proto::kRemovePrefix: b.prefix(); break;
    case proto::kPing: w.str("ping"); break;
    default: break;  // REMOVE_ALL, STATS, OPEN_DATA: empty bodies
  }
  const uint8_t* f = w.finish();
  return std::vector<uint8_t>(f, f + w.size());
}

// Checks one frame a node sent (header h, body r): a reply header, a body of the op's shape, a
// known code in an ERROR frame. Appends the tokens of PUT_RESERVE, GET_PIN and GET_LOCATE
// replies to *tokens (the most recent 64), so later requests can use them.
inline void check_node_reply(const proto::Header& h, proto::Reader r, std::vector<uint64_t>* tokens) {
  using namespace proto;
  ASSERT_EQ(h.magic, kMagic);
  ASSERT_TRUE(h.flags & kFlagReply);
  ASSERT_GE(h.version, kMinVersion);
  ASSERT_LE(h.version, kVersion);
  if (h.op == kError) {
    int32_t code = r.i32();
    ASSERT_GE(code, kErrVersion);
    ASSERT_LE(code, kErrTooManyConnections);
    r.u16();
    r.u16();
    ASSERT_FALSE(r.str().empty()) << "an ERROR frame says what went wrong";
    ASSERT_TRUE(r.done()) << "ERROR body";
    return;
  }
  ASSERT_LT(h.op, kOpCount);
  if (h.op != kPutReserve && h.op != kGetPin && h.op != kGetLocate) return;
  uint32_t n = r.u32();
  const size_t wire = h.op == kPutReserve ? kReserveResultWire : h.op == kGetPin ? kPinResultWire : kLocateResultWire;
  ASSERT_EQ(r.remaining(), n * wire);
  for (uint32_t i = 0; i < n; i++) {
    if (h.op == kPutReserve) {
      r.i32();
    } else {
      r.i64();
    }
    r.u64();
    if (h.op == kGetLocate) r.u64();  // the checksum
    tokens->push_back(r.u64());
    if (h.op == kGetPin) r.u8();
  }
  if (tokens->size() > 64) tokens->erase(tokens->begin(), tokens->end() - 32);
}

}  // namespace mch::testing
