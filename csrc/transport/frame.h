// Frames: the unit every transport moves. A frame is a fixed 24-byte header followed by
// `body_len` bytes of body, every integer little-endian:
//
//   offset 0  u32 magic       kMagic ("MCHK" on the wire)
//          4  u16 version     protocol version the body is encoded in
//          6  u16 op          what the body is (node/protocol.h lists the ops)
//          8  u32 request_id  chosen by the requester, echoed in the reply
//         12  u32 flags       kFlagReply on replies; other bits are reserved (sent 0, ignored)
//         16  u64 body_len    at most kMaxBody
//
// Writer builds one frame in a reusable buffer; Reader is a bounds-checked cursor over a body
// (a malformed body fails the Reader, never reads past the end). Both are plain values owned by
// one connection; every function is thread-safe. Nothing here knows a socket.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace mch {
namespace proto {

constexpr uint32_t kMagic = 0x4B48434Du;  // 'M' 'C' 'H' 'K' in wire (little-endian) order
constexpr uint16_t kVersion = 1;          // the newest version this build speaks
constexpr uint16_t kMinVersion = 1;       // the oldest version this build speaks
constexpr size_t kHeaderSize = 24;
// Largest body accepted. Shared-memory frames carry only keys and tickets (a 128-key batch with
// 2 KiB keys is ~270 KiB); the limit only bounds what a broken peer can make us allocate.
constexpr uint64_t kMaxBody = 64ull << 20;
constexpr uint32_t kMaxBatch = 1u << 16;  // items per list
constexpr uint32_t kFlagReply = 1u << 0;

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
  // n raw bytes (a view into the body), or nullptr when fewer remain.
  const uint8_t* raw(size_t n) { return take(n) ? p_ - n : nullptr; }
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
}  // namespace proto
}  // namespace mch
