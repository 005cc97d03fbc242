// The node's side of the protocol, over a real Unix socket with hand-built frames: each op's
// request and reply bodies as docs/protocol.md and protocol.h describe them, the errors that
// close a connection and those that do not, and the tokens a closing connection gives back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/checksum.h"
#include "common/status.h"
#include "node_test_util.h"

namespace mch {
namespace {

using namespace proto;
using namespace testing::codes;
using testing::Frame;
using testing::RawConn;
using testing::TestNode;

struct Reserved {
  int32_t status;
  uint64_t offset, token;
};

// PUT_RESERVE of keys, each of `size` bytes; flags kFlagKeepExisting asks to keep stored values.
std::vector<Reserved> put_reserve(RawConn& c, const std::vector<std::string>& keys, uint64_t size, uint32_t flags = 0) {
  std::vector<uint32_t> idx;
  for (uint32_t i = 0; i < keys.size(); i++) idx.push_back(i);
  Frame f = c.call(
      kPutReserve, [&](Writer& w) { encode_put_reserve(w, keys, idx, std::vector<uint64_t>(keys.size(), size), {}); },
      flags);
  std::vector<Reserved> out;
  EXPECT_EQ(f.h.op, kPutReserve);
  Reader r = f.reader();
  uint32_t n = r.u32();
  EXPECT_EQ(n, keys.size());
  EXPECT_EQ(r.remaining(), n * kReserveResultWire);
  for (uint32_t i = 0; i < n && r.ok(); i++) {
    Reserved x;
    x.status = r.i32();
    x.offset = r.u64();
    x.token = r.u64();
    out.push_back(x);
  }
  return out;
}

// PUT_COMMIT of (token, ok) pairs.
Frame put_commit(RawConn& c, const std::vector<std::pair<uint64_t, uint8_t>>& items) {
  return c.call(kPutCommit, [&](Writer& w) {
    w.u32(static_cast<uint32_t>(items.size()));
    for (const auto& [token, ok] : items) {
      w.u64(token);
      w.u8(ok);
    }
  });
}

// Commits the first n reservations (all when n < 0), each with ok = 1.
Frame commit_all(RawConn& c, const std::vector<Reserved>& rs, int n = -1) {
  std::vector<std::pair<uint64_t, uint8_t>> items;
  for (size_t i = 0; i < rs.size() && (n < 0 || static_cast<int>(i) < n); i++) items.emplace_back(rs[i].token, 1);
  return put_commit(c, items);
}

std::vector<int32_t> i32_list(const Frame& f) {
  Reader r = f.reader();
  uint32_t n = r.u32();
  std::vector<int32_t> out;
  for (uint32_t i = 0; i < n; i++) out.push_back(r.i32());
  EXPECT_TRUE(r.done());
  return out;
}

// The reader of a reply of `op` with n results of `wire` bytes each, past the count; a reader
// that is not ok() (after a failed EXPECT) when the reply is not that.
Reader results_of(const Frame& f, uint16_t op, uint32_t n, size_t wire) {
  Reader r = f.reader();
  EXPECT_EQ(f.h.op, op);
  EXPECT_EQ(r.u32(), n);
  EXPECT_EQ(r.remaining(), n * wire);
  if (f.h.op != op || r.remaining() != n * wire) r.fail();
  return r;
}

Frame keys_call(RawConn& c, uint16_t op, const std::vector<std::string>& keys) {
  std::vector<uint32_t> idx;
  for (uint32_t i = 0; i < keys.size(); i++) idx.push_back(i);
  return c.call(op, [&](Writer& w) { encode_keys(w, keys, idx); });
}

// Reads an ERROR frame's code (or 0 when the frame is not one).
int32_t error_code(const Frame& f) {
  if (f.h.op != kError) return 0;
  Reader r = f.reader();
  r.i32();
  EXPECT_EQ(r.u16(), kMinVersion);
  EXPECT_EQ(r.u16(), kVersion);
  r.str();
  EXPECT_TRUE(r.done()) << "ERROR body";
  ErrorReply e = decode_error(f.reader());
  EXPECT_FALSE(e.message.empty()) << "an error says what went wrong";
  return e.code;
}

bool closed_by_node(RawConn& c) {
  Frame f;
  return !c.recv(&f, 2000);
}

TEST(NodeServer, HelloNegotiatesTheVersionAndHandsOverTheArena) {
  TestNode node;
  RawConn c(node.path());
  ASSERT_TRUE(c.ok());
  Frame f = c.hello();
  ASSERT_EQ(f.h.op, kHello);
  EXPECT_TRUE(f.h.flags & kFlagReply);
  Reader r = f.reader();
  HelloReply hr;
  ASSERT_TRUE(decode_hello_reply(r, &hr));
  EXPECT_EQ(hr.version, kVersion);
  EXPECT_EQ(hr.node_pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(hr.instance, node.server().instance());
  EXPECT_EQ(hr.arena_size, node.store().arena_size());
  EXPECT_EQ(hr.max_batch, kMaxBatch);
  EXPECT_EQ(hr.max_key_len, kMaxKeyLen);
  ASSERT_NE(c.arena(), nullptr) << "the arena memfd rides on the reply";
}

TEST(NodeServer, HelloFromAClientOfOnlyNewerVersionsIsRefused) {
  TestNode node;
  RawConn c(node.path());
  Frame f = c.hello(kVersion + 1, kVersion + 5);
  EXPECT_EQ(error_code(f), kErrVersion);
  EXPECT_TRUE(closed_by_node(c));
  EXPECT_EQ(node.server().stats().version_mismatches, 1u);
}

TEST(NodeServer, PingEchoesItsBodyEvenBeforeHello) {
  TestNode node;
  RawConn c(node.path());
  Frame f = c.call(kPing, [](Writer& w) { w.str("echo me"); });
  ASSERT_EQ(f.h.op, kPing);
  Reader r = f.reader();
  EXPECT_EQ(r.str(), "echo me");
  EXPECT_TRUE(r.done());
}

TEST(NodeServer, ARequestBeforeHelloIsRefusedAndTheConnectionClosed) {
  TestNode node;
  RawConn c(node.path());
  Frame f = keys_call(c, kExists, {"a"});
  EXPECT_EQ(error_code(f), kErrHelloFirst);
  EXPECT_TRUE(closed_by_node(c));
}

TEST(NodeServer, PutReserveCopyCommitThenGetPinCopyUnpin) {
  TestNode node;
  RawConn c(node.path());
  ASSERT_EQ(c.hello().h.op, kHello);
  std::vector<std::string> keys = {"page-0", "page-1"};
  const size_t len = 10000;
  std::vector<Reserved> rs = put_reserve(c, keys, len);
  ASSERT_EQ(rs.size(), 2u);
  for (size_t i = 0; i < 2; i++) {
    ASSERT_EQ(rs[i].status, kOk);
    ASSERT_LE(rs[i].offset + len, c.arena_size());
    std::vector<uint8_t> v = testing::pattern(keys[i], len);
    memcpy(c.arena() + rs[i].offset, v.data(), len);
  }
  EXPECT_EQ(node.server().stats().reservations_held, 2u);
  Frame commit = commit_all(c, rs);
  ASSERT_EQ(commit.h.op, kPutCommit);
  EXPECT_EQ(i32_list(commit), (std::vector<int32_t>{kOk, kOk}));
  EXPECT_EQ(node.server().stats().reservations_held, 0u);

  EXPECT_EQ(i32_list(keys_call(c, kExists, {"page-0", "nope", "page-1"})), (std::vector<int32_t>{1, 0, 1}));

  Frame pin = keys_call(c, kGetPin, {"page-1", "nope"});
  Reader r = results_of(pin, kGetPin, 2, kPinResultWire);
  ASSERT_TRUE(r.ok());
  int64_t st = r.i64();
  uint64_t off = r.u64(), token = r.u64();
  uint8_t tier = r.u8();
  EXPECT_EQ(st, static_cast<int64_t>(len));
  EXPECT_EQ(tier, 1) << "found in DRAM";
  std::vector<uint8_t> want = testing::pattern("page-1", len);
  ASSERT_LE(off + len, c.arena_size());
  EXPECT_EQ(memcmp(c.arena() + off, want.data(), len), 0);
  EXPECT_EQ(r.i64(), kNotFound);
  EXPECT_EQ(node.server().stats().pins_held, 1u);

  Writer w;
  w.begin(kGetUnpin, c.next_id());
  w.u32(1);
  w.u64(token);
  ASSERT_TRUE(c.send(w));  // no reply; the next request's reply proves it was handled
  Frame stats = c.call(kStats, [](Writer&) {});
  ASSERT_EQ(stats.h.op, kStats);
  Reader sr = stats.reader();
  std::string json(sr.str());
  EXPECT_TRUE(sr.done());
  EXPECT_NE(json.find("\"node\":"), std::string::npos) << json;
  EXPECT_NE(json.find("\"dram\""), std::string::npos) << json;
  EXPECT_EQ(node.server().stats().pins_held, 0u);
}

// Reserves, fills with pattern(key, len) and commits each key; false if any step failed.
bool put_pattern(RawConn& c, const std::vector<std::string>& keys, size_t len, uint8_t salt = 0) {
  std::vector<Reserved> rs = put_reserve(c, keys, len);
  for (size_t i = 0; i < rs.size(); i++) {
    if (rs[i].status != kOk || rs[i].offset + len > c.arena_size()) return false;
    std::vector<uint8_t> v = testing::pattern(keys[i], len);
    v[0] ^= salt;
    memcpy(c.arena() + rs[i].offset, v.data(), len);
  }
  return rs.size() == keys.size() && i32_list(commit_all(c, rs)) == std::vector<int32_t>(keys.size(), kOk);
}

// GET_PIN of one key, its bytes copied out of the arena, then GET_UNPIN; empty on a miss.
std::vector<uint8_t> read_pinned(RawConn& c, const std::string& key) {
  Frame pin = keys_call(c, kGetPin, {key});
  Reader r = pin.reader();
  if (pin.h.op != kGetPin || r.u32() != 1) return {};
  int64_t st = r.i64();
  uint64_t off = r.u64(), token = r.u64();
  if (st < 0 || off + st > c.arena_size()) return {};
  std::vector<uint8_t> out(c.arena() + off, c.arena() + off + st);
  Writer w;
  w.begin(kGetUnpin, c.next_id());
  w.u32(1);
  w.u64(token);
  EXPECT_TRUE(c.send(w));
  return out;
}

TEST(NodeServer, AReserveReplacesAStoredValueUnlessTheClientAsksToKeepIt) {
  TestNode node;
  RawConn c(node.path());
  c.hello();
  const size_t len = 5000;
  ASSERT_TRUE(put_pattern(c, {"k"}, len));
  Reserved keep = put_reserve(c, {"k"}, len, kFlagKeepExisting).at(0);
  EXPECT_EQ(keep.status, 1) << "stored already: nothing to copy, no token";
  EXPECT_EQ(node.server().stats().reservations_held, 0u);
  std::vector<uint8_t> first = testing::pattern("k", len);
  EXPECT_TRUE(read_pinned(c, "k") == first);
  ASSERT_TRUE(put_pattern(c, {"k"}, len, /*salt=*/0x5a)) << "without the flag: a fresh slot";
  std::vector<uint8_t> second = first;
  second[0] ^= 0x5a;
  EXPECT_TRUE(read_pinned(c, "k") == second) << "the committed value replaced the stored one";
}

TEST(NodeServer, RemovePrefixAnswersTheCountOrUnsupportedWithoutKeptKeys) {
  auto remove_prefix = [](RawConn& c, const std::string& prefix) {
    Frame f = c.call(kRemovePrefix, [&](Writer& w) { w.str(prefix); });
    Reader r = f.reader();
    int64_t n = f.h.op == kRemovePrefix ? r.i64() : INT64_MIN;
    EXPECT_TRUE(r.done());
    return n;
  };
  {
    TestNode plain;
    RawConn c(plain.path());
    c.hello();
    EXPECT_EQ(remove_prefix(c, "p/"), kUnsupported) << "a DRAM-only node keeps digests, not keys";
  }
  TestNode node(2000, 8ull << 20, [](TieredOptions& o, const testing::TempDir&) { o.keep_keys = true; });
  RawConn c(node.path());
  c.hello();
  ASSERT_TRUE(put_pattern(c, {"p/1", "p/2", "q/1"}, 4096));
  EXPECT_EQ(remove_prefix(c, "p/"), 2);
  EXPECT_EQ(i32_list(keys_call(c, kExists, {"p/1", "p/2", "q/1"})), (std::vector<int32_t>{0, 0, 1}));
  Frame empty = c.call(kRemovePrefix, [](Writer& w) { w.str(""); });
  EXPECT_EQ(empty.reader().i64(), kInvalidParams);
}

// GET_LOCATE + OPEN_DATA + LOCATE_RELEASE: where an NVMe page lies in the data file the node
// sends, read here with the descriptor that rode on OPEN_DATA's reply.
TEST(NodeServer, GetLocateNamesWhereAPageLiesInTheDataFileOpenDataSends) {
  TestNode node(2000, 8ull << 20, [](TieredOptions& o, const testing::TempDir& dir) {
    o.has_nvme = true;
    o.write_through = true;  // every committed page is on NVMe too
    o.nvme.path = dir.file("nvme.data");
    o.nvme.capacity = 16ull << 20;
    o.nvme.region_size = 2ull << 20;
    o.nvme.queue_depth = 8;
  });
  RawConn c(node.path());
  c.hello();
  const size_t len = 10000;
  ASSERT_TRUE(put_pattern(c, {"on-disk"}, len));
  Frame data = c.call(kOpenData, [](Writer&) {});
  ASSERT_EQ(data.h.op, kOpenData);
  EXPECT_EQ(data.reader().i32(), kOk);
  ASSERT_GE(data.fd, 0) << "the data file rides on the reply";
  Frame loc = keys_call(c, kGetLocate, {"on-disk", "absent"});
  Reader r = results_of(loc, kGetLocate, 2, kLocateResultWire);
  ASSERT_TRUE(r.ok());
  int64_t st = r.i64();
  uint64_t off = r.u64(), sum = r.u64(), token = r.u64();
  EXPECT_EQ(st, static_cast<int64_t>(len));
  EXPECT_EQ(r.i64(), kNotFound);
  EXPECT_EQ(node.server().stats().locations_held, 1u);
  AlignedBuffer buf((len + 4095) / 4096 * 4096);  // the descriptor may be O_DIRECT
  ASSERT_EQ(pread(data.fd, buf.data(), buf.size(), static_cast<off_t>(off)), static_cast<ssize_t>(buf.size()));
  EXPECT_EQ(memcmp(buf.data(), testing::pattern("on-disk", len).data(), len), 0);
  EXPECT_EQ(checksum64(buf.data(), len), sum);
  Writer w;
  w.begin(kLocateRelease, c.next_id());
  w.u32(1);
  w.u64(token);
  ASSERT_TRUE(c.send(w));  // no reply; the next request's reply proves it was handled
  EXPECT_EQ(c.call(kPing, [](Writer&) {}).h.op, kPing);
  EXPECT_EQ(node.server().stats().locations_held, 0u);
}

TEST(NodeServer, CommitWithOkZeroGivesTheSlotBack) {
  TestNode node;
  RawConn c(node.path());
  c.hello();
  std::vector<Reserved> rs = put_reserve(c, {"abandoned"}, 4096);
  Frame commit = put_commit(c, {{rs[0].token, 0}});
  ASSERT_EQ(commit.h.op, kPutCommit);
  EXPECT_EQ(i32_list(keys_call(c, kExists, {"abandoned"})), (std::vector<int32_t>{0}));
}

TEST(NodeServer, TokensTheConnectionDoesNotOwnAreIgnored) {
  TestNode node;
  RawConn owner(node.path()), thief(node.path());
  owner.hello();
  thief.hello();
  std::vector<Reserved> rs = put_reserve(owner, {"mine"}, 4096);
  Frame commit = put_commit(thief, {{rs[0].token, 1}, {0xdeadbeef, 1}});
  EXPECT_EQ(i32_list(commit), (std::vector<int32_t>{kInvalidParams, kInvalidParams}));
  EXPECT_EQ(node.server().stats().unknown_tokens, 2u);
  EXPECT_EQ(node.server().stats().reservations_held, 1u) << "still the owner's";
}

TEST(NodeServer, PrefetchRemoveAndRemoveAllReplies) {
  TestNode node;
  RawConn c(node.path());
  c.hello();
  std::vector<Reserved> rs = put_reserve(c, {"a", "b"}, 4096);
  commit_all(c, rs);
  Frame pf = keys_call(c, kPrefetch, {"a", "b"});
  ASSERT_EQ(pf.h.op, kPrefetch);
  Reader pr = pf.reader();
  EXPECT_EQ(pr.i32(), 0) << "no NVMe tier: nothing to promote";
  EXPECT_TRUE(pr.done());
  EXPECT_EQ(i32_list(keys_call(c, kRemove, {"a", "a"})), (std::vector<int32_t>{kOk, kNotFound}));
  Frame all = c.call(kRemoveAll, [](Writer&) {});
  ASSERT_EQ(all.h.op, kRemoveAll);
  Reader ar = all.reader();
  EXPECT_EQ(ar.i32(), kOk);
  EXPECT_EQ(i32_list(keys_call(c, kExists, {"b"})), (std::vector<int32_t>{0}));
}

TEST(NodeServer, BadKeysGetStatusCodesNotErrors) {
  TestNode node;
  RawConn c(node.path());
  c.hello();
  EXPECT_EQ(i32_list(keys_call(c, kExists, {"", "fine"})), (std::vector<int32_t>{kInvalidParams, 0}));
}

TEST(NodeServer, AnUnknownOpIsAnErrorButTheConnectionStays) {
  TestNode node;
  RawConn c(node.path());
  c.hello();
  Frame f = c.call(200, [](Writer& w) { w.u64(1); });
  EXPECT_EQ(error_code(f), kErrUnknownOp);
  Frame ping = c.call(kPing, [](Writer&) {});
  EXPECT_EQ(ping.h.op, kPing);
}

TEST(NodeServer, MalformedFramesCloseTheConnectionWithAnError) {
  TestNode node;
  struct Case {
    const char* what;
    std::function<void(Writer&, std::vector<uint8_t>&)> make;  // builds the bytes to send
    int32_t code;
  };
  std::vector<Case> cases = {
      {"bad magic", [](Writer& w, std::vector<uint8_t>& b) { b[0] ^= 0xff; }, kErrBadFrame},
      {"unknown version", [](Writer& w, std::vector<uint8_t>& b) { store_le<uint16_t>(&b[4], kVersion + 9); }, kErrVersion},
      {"body too large", [](Writer& w, std::vector<uint8_t>& b) { store_le<uint64_t>(&b[16], kMaxBody + 1); }, kErrBadFrame},
      {"reply flag from a client", [](Writer& w, std::vector<uint8_t>& b) { store_le<uint32_t>(&b[12], kFlagReply); },
       kErrBadFrame},
      {"truncated key list", [](Writer& w, std::vector<uint8_t>& b) {
         b.resize(b.size() - 1);
         store_le<uint64_t>(&b[16], b.size() - kHeaderSize);
       }, kErrBadFrame},
      {"trailing bytes", [](Writer& w, std::vector<uint8_t>& b) {
         b.push_back(0);
         store_le<uint64_t>(&b[16], b.size() - kHeaderSize);
       }, kErrBadFrame},
      {"count larger than the body", [](Writer& w, std::vector<uint8_t>& b) { store_le<uint32_t>(&b[kHeaderSize], 1000); },
       kErrBadFrame},
  };
  for (const Case& k : cases) {
    RawConn c(node.path());
    ASSERT_EQ(c.hello().h.op, kHello);
    Writer w;
    w.begin(kExists, c.next_id());
    encode_keys(w, {"a", "b"}, {0, 1});
    const uint8_t* f = w.finish();
    std::vector<uint8_t> bytes(f, f + w.size());
    k.make(w, bytes);
    ASSERT_TRUE(c.send(bytes.data(), bytes.size()));
    Frame reply;
    ASSERT_TRUE(c.recv(&reply)) << k.what;
    EXPECT_EQ(error_code(reply), k.code) << k.what;
    EXPECT_TRUE(closed_by_node(c)) << k.what;
  }
  EXPECT_GE(node.server().stats().bad_frames, 5u);
}

TEST(NodeServer, AClosingConnectionGivesBackItsPinsAndReservations) {
  TestNode node;
  {
    RawConn c(node.path());
    c.hello();
    std::vector<Reserved> rs = put_reserve(c, {"kept", "left-open"}, 4096);
    commit_all(c, rs, 1);
    Frame pin = keys_call(c, kGetPin, {"kept"});
    ASSERT_EQ(pin.h.op, kGetPin);
    NodeStats s = node.server().stats();
    EXPECT_EQ(s.pins_held, 1u);
    EXPECT_EQ(s.reservations_held, 1u);
  }  // the client goes away without unpinning or committing
  ASSERT_TRUE(node.wait_idle());
  NodeStats s = node.server().stats();
  EXPECT_EQ(s.pins_held, 0u);
  EXPECT_EQ(s.reservations_held, 0u);
  EXPECT_EQ(s.released_pins, 1u);
  EXPECT_EQ(s.released_reservations, 1u);
  RawConn c(node.path());
  c.hello();
  EXPECT_EQ(i32_list(keys_call(c, kExists, {"kept", "left-open"})), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(i32_list(keys_call(c, kRemove, {"kept"})), (std::vector<int32_t>{kOk})) << "no pin left behind";
}

TEST(NodeServer, CountsRequestsByOp) {
  TestNode node;
  RawConn c(node.path());
  c.hello();
  keys_call(c, kExists, {"a"});
  keys_call(c, kExists, {"b"});
  EXPECT_EQ(node.by_op(kHello), 1u);
  EXPECT_EQ(node.by_op(kExists), 2u);
  NodeStats s = node.server().stats();
  EXPECT_EQ(s.connections, 1u);
  EXPECT_EQ(s.client_pids.size(), 1u);
}

}  // namespace
}  // namespace mch
