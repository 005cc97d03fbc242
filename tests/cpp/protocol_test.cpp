// Protocol codec (node/protocol.h): the frame header's wire layout, Writer/Reader bounds, and
// every body codec the header declares, including truncation at every length.
#include "node/protocol.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mch::proto {
namespace {

// The body of the frame in `w` (after finish()) as its own exactly-sized buffer.
std::vector<uint8_t> body_of(Writer& w) {
  const uint8_t* f = w.finish();
  return std::vector<uint8_t>(f + kHeaderSize, f + w.size());
}

TEST(Protocol, HeaderHasTheDocumentedWireLayout) {
  uint8_t buf[kHeaderSize];
  Header h;
  h.op = kGetPin;
  h.request_id = 0x01020304;
  h.flags = kFlagReply;
  h.body_len = 0x0a0b0c0d0e0full;
  encode_header(buf, h);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 4), "MCHK");
  EXPECT_EQ(buf[4], kVersion);
  EXPECT_EQ(buf[5], 0);
  EXPECT_EQ(buf[6], kGetPin);
  EXPECT_EQ(buf[8], 0x04);  // little-endian request id
  EXPECT_EQ(buf[11], 0x01);
  EXPECT_EQ(buf[12], 1);  // reply flag
  EXPECT_EQ(buf[16], 0x0f);
  EXPECT_EQ(buf[21], 0x0a);
  EXPECT_EQ(buf[23], 0x00);
  Header back = decode_header(buf);
  EXPECT_EQ(back.magic, kMagic);
  EXPECT_EQ(back.version, kVersion);
  EXPECT_EQ(back.op, kGetPin);
  EXPECT_EQ(back.request_id, h.request_id);
  EXPECT_EQ(back.flags, kFlagReply);
  EXPECT_EQ(back.body_len, h.body_len);
}

TEST(Protocol, WriterFinishFillsInTheBodyLength) {
  Writer w;
  w.begin(kPing, 7, 0, kVersion);
  w.u8(1);
  w.u16(2);
  w.u32(3);
  w.u64(4);
  w.i32(-5);
  w.i64(-6);
  w.str("seven");
  w.bytes("\x08\x09", 2);
  const uint8_t* f = w.finish();
  Header h = decode_header(f);
  EXPECT_EQ(h.body_len, w.size() - kHeaderSize);
  EXPECT_EQ(h.op, kPing);
  EXPECT_EQ(h.request_id, 7u);
  Reader r(f + kHeaderSize, h.body_len);
  EXPECT_EQ(r.u8(), 1);
  EXPECT_EQ(r.u16(), 2);
  EXPECT_EQ(r.u32(), 3u);
  EXPECT_EQ(r.u64(), 4u);
  EXPECT_EQ(r.i32(), -5);
  EXPECT_EQ(r.i64(), -6);
  EXPECT_EQ(r.str(), "seven");
  EXPECT_EQ(r.u8(), 8);
  EXPECT_EQ(r.u8(), 9);
  EXPECT_TRUE(r.done());
}

TEST(Protocol, WriterReusedForASecondFrameStartsFromEmpty) {
  Writer w;
  w.begin(kStats, 1);
  w.str(std::string(10000, 'x'));
  w.finish();
  w.begin(kRemoveAll, 2);
  const uint8_t* f = w.finish();
  EXPECT_EQ(w.size(), kHeaderSize);
  EXPECT_EQ(decode_header(f).body_len, 0u);
  EXPECT_EQ(decode_header(f).op, kRemoveAll);
}

TEST(Protocol, ReaderPastTheEndFailsAndReturnsZero) {
  uint8_t b[3] = {1, 2, 3};
  Reader r(b, 3);
  EXPECT_EQ(r.u16(), 0x0201);
  EXPECT_EQ(r.u32(), 0u);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.u8(), 0) << "a failed reader stays failed";
  EXPECT_FALSE(r.done());
}

TEST(Protocol, ReaderStringLongerThanItsLimitOrTheBodyFails) {
  Writer w;
  w.begin(kPing, 1);
  w.str("abcdef");
  std::vector<uint8_t> body = body_of(w);
  Reader ok(body.data(), body.size());
  EXPECT_EQ(ok.str(6), "abcdef");
  Reader over_limit(body.data(), body.size());
  over_limit.str(5);
  EXPECT_FALSE(over_limit.ok());
  Reader truncated(body.data(), body.size() - 1);
  truncated.str();
  EXPECT_FALSE(truncated.ok());
}

TEST(Protocol, ReaderCountRejectsListsTheBodyCannotHold) {
  Writer w;
  w.begin(kGetUnpin, 1);
  w.u32(3);
  for (int i = 0; i < 3; i++) w.u64(i);
  std::vector<uint8_t> body = body_of(w);
  Reader fits(body.data(), body.size());
  EXPECT_EQ(fits.count(8), 3u);
  EXPECT_TRUE(fits.ok());
  Reader too_big_items(body.data(), body.size());
  too_big_items.count(9);
  EXPECT_FALSE(too_big_items.ok());
  uint8_t huge[4];
  store_le<uint32_t>(huge, kMaxBatch + 1);
  Reader over_batch(huge, 4);
  over_batch.count(0);
  EXPECT_FALSE(over_batch.ok()) << "more keys than kMaxBatch, even with zero-sized items";
}

TEST(Protocol, HelloReplyRoundTripsAndToleratesAppendedFields) {
  HelloReply h;
  h.version = 1;
  h.node_pid = 4242;
  h.instance = 0x1122334455667788ull;
  h.arena_size = 1ull << 33;
  h.max_batch = kMaxBatch;
  h.max_key_len = kMaxKeyLen;
  h.info = "node on /tmp/x.sock";
  Writer w;
  w.begin(kHello, 1, kFlagReply);
  encode_hello_reply(w, h);
  w.u64(0xfeed);  // a field a later version appends
  std::vector<uint8_t> body = body_of(w);
  Reader r(body.data(), body.size());
  HelloReply out;
  ASSERT_TRUE(decode_hello_reply(r, &out));
  EXPECT_EQ(out.version, h.version);
  EXPECT_EQ(out.node_pid, h.node_pid);
  EXPECT_EQ(out.instance, h.instance);
  EXPECT_EQ(out.arena_size, h.arena_size);
  EXPECT_EQ(out.max_batch, h.max_batch);
  EXPECT_EQ(out.max_key_len, h.max_key_len);
  EXPECT_EQ(out.info, h.info);
}

TEST(Protocol, HelloReplyTruncatedAnywhereFails) {
  HelloReply h;
  h.info = "info";
  Writer w;
  w.begin(kHello, 1, kFlagReply);
  encode_hello_reply(w, h);
  std::vector<uint8_t> body = body_of(w);
  for (size_t n = 0; n < body.size(); n++) {
    std::vector<uint8_t> cut(body.begin(), body.begin() + static_cast<long>(n));
    Reader r(cut.data(), cut.size());
    HelloReply out;
    EXPECT_FALSE(decode_hello_reply(r, &out)) << n << " of " << body.size() << " bytes";
  }
}

TEST(Protocol, KeyListEncodesOnlyTheSelectedKeys) {
  std::vector<std::string> keys = {"k0", "", "k2-longer", std::string(kMaxKeyLen, 'z')};
  Writer w;
  w.begin(kExists, 1);
  encode_keys(w, keys, {0, 2, 3});
  std::vector<uint8_t> body = body_of(w);
  Reader r(body.data(), body.size());
  KeyList out;
  ASSERT_EQ(decode_keys(r, &out), 3);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(out.vec(), (std::vector<std::string>{"k0", "k2-longer", keys[3]}));
}

TEST(Protocol, KeyListRejectsAKeyLongerThanTheLimit) {
  std::vector<std::string> keys = {std::string(kMaxKeyLen + 1, 'z')};
  Writer w;
  w.begin(kExists, 1);
  encode_keys(w, keys, {0});
  std::vector<uint8_t> body = body_of(w);
  Reader r(body.data(), body.size());
  KeyList out;
  EXPECT_EQ(decode_keys(r, &out), -1);
}

TEST(Protocol, KeyListTruncatedAnywhereFails) {
  std::vector<std::string> keys = {"alpha", "beta", "gamma"};
  Writer w;
  w.begin(kRemove, 1);
  encode_keys(w, keys, {0, 1, 2});
  std::vector<uint8_t> body = body_of(w);
  for (size_t n = 0; n < body.size(); n++) {
    std::vector<uint8_t> cut(body.begin(), body.begin() + static_cast<long>(n));
    Reader r(cut.data(), cut.size());
    KeyList out;
    EXPECT_EQ(decode_keys(r, &out), -1) << n;
  }
}

TEST(Protocol, EmptyKeyListRoundTrips) {
  Writer w;
  w.begin(kPrefetch, 1);
  encode_keys(w, {}, {});
  std::vector<uint8_t> body = body_of(w);
  Reader r(body.data(), body.size());
  KeyList out;
  EXPECT_EQ(decode_keys(r, &out), 0);
  EXPECT_TRUE(r.done());
}

TEST(Protocol, KeyListKeepsItsStringBuffersAcrossBatches) {
  KeyList kl;
  std::vector<std::string>& v = kl.resize(3);
  for (auto& s : v) s.assign(1000, 'a');
  const char* first = v[0].data();
  kl.resize(1);
  std::vector<std::string>& again = kl.resize(3);
  EXPECT_EQ(again.size(), 3u);
  EXPECT_EQ(again[0].data(), first) << "the surviving string kept its buffer";
  EXPECT_GE(again[2].capacity(), 1000u) << "a parked string came back with its buffer";
}

TEST(Protocol, PutReserveRoundTripsSizesAndDepths) {
  std::vector<std::string> keys = {"a", "bb", "ccc"};
  std::vector<uint64_t> sizes = {1, 1ull << 40, 4096};
  std::vector<uint32_t> depths = {5, 6};  // shorter than the keys: missing depths are 0
  Writer w;
  w.begin(kPutReserve, 1);
  encode_put_reserve(w, keys, {2, 0, 1}, sizes, depths);
  std::vector<uint8_t> body = body_of(w);
  Reader r(body.data(), body.size());
  KeyList k;
  std::vector<uint64_t> s;
  std::vector<uint32_t> d;
  ASSERT_EQ(decode_put_reserve(r, &k, &s, &d), 3);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(k.vec(), (std::vector<std::string>{"ccc", "a", "bb"}));
  EXPECT_EQ(s, (std::vector<uint64_t>{4096, 1, 1ull << 40}));
  EXPECT_EQ(d, (std::vector<uint32_t>{0, 5, 6}));
}

TEST(Protocol, PutReserveTruncatedAnywhereFails) {
  std::vector<std::string> keys = {"a", "bb"};
  Writer w;
  w.begin(kPutReserve, 1);
  encode_put_reserve(w, keys, {0, 1}, {10, 20}, {1, 2});
  std::vector<uint8_t> body = body_of(w);
  for (size_t n = 0; n < body.size(); n++) {
    std::vector<uint8_t> cut(body.begin(), body.begin() + static_cast<long>(n));
    Reader r(cut.data(), cut.size());
    KeyList k;
    std::vector<uint64_t> s;
    std::vector<uint32_t> d;
    EXPECT_EQ(decode_put_reserve(r, &k, &s, &d), -1) << n;
  }
}

TEST(Protocol, ReplyRecordSizesMatchTheirFields) {
  // Wire sizes the client checks replies against: {i32 status, u64 offset, u64 token} and
  // {i64 status, u64 offset, u64 token, u8 tier}.
  EXPECT_EQ(kReserveResultWire, 4u + 8 + 8);
  EXPECT_EQ(kPinResultWire, 8u + 8 + 8 + 1);
}

TEST(Protocol, EveryRequestOpHasAName) {
  for (uint16_t op = kHello; op < kOpCount; op++) EXPECT_STRNE(op_name(op), "unknown") << op;
  EXPECT_STREQ(op_name(kError), "error");
  EXPECT_STREQ(op_name(0), "unknown");
  EXPECT_STREQ(op_name(kOpCount), "unknown");
}

TEST(Protocol, ErrorFrameRoundTrips) {
  Writer w;
  encode_error(w, 42, kErrUnknownOp, "op 200 is not known");
  const uint8_t* f = w.finish();
  Header h = decode_header(f);
  EXPECT_EQ(h.op, kError);
  EXPECT_EQ(h.request_id, 42u);
  EXPECT_TRUE(h.flags & kFlagReply);
  std::vector<uint8_t> body(f + kHeaderSize, f + w.size());
  ErrorReply e = decode_error(Reader(body.data(), body.size()));
  EXPECT_EQ(e.code, kErrUnknownOp);
  EXPECT_EQ(e.message, "op 200 is not known");
}

}  // namespace
}  // namespace mch::proto
