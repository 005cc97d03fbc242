// Fuzz tests over real Unix sockets: a live node fed random and mutated frames (it must answer
// or close, never hang, and give back every token of a closed connection), and a NodeClient fed
// mutated replies by a rogue node (it must never crash, hang past its timeouts or copy outside
// its buffers). Bounded by count and time (MCH_FUZZ_SECONDS), seeded by MCH_TEST_SEED.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "fuzz_util.h"
#include "node/node_client.h"
#include "node_test_util.h"

namespace mch {
namespace {

using namespace proto;
using testing::Frame;
using testing::FuzzBudget;
using testing::Mutator;

const uint16_t kAllOps[] = {kHello,     kPutReserve, kPutCommit, kGetPin,   kGetUnpin,  kExists,
                            kPrefetch,  kRemove,     kRemoveAll, kStats,    kPing,      kValueSize,
                            kOpenData,  kGetLocate,  kLocateRelease, kRemovePrefix};
constexpr size_t kOps = std::size(kAllOps);
constexpr uint32_t kSentinelId = 0xfffffff0u;

// A frame that is random bytes (often with the right magic) or a mutated valid request.
std::vector<uint8_t> fuzzed_frame(Mutator& m, uint32_t id, const std::vector<uint64_t>& tokens) {
  std::vector<uint8_t> bad;
  if (m.one_in(4)) {
    bad = m.random_bytes(96);
    if (bad.size() >= 4 && !m.one_in(4)) store_le<uint32_t>(bad.data(), kMagic);
    return bad;
  }
  bad = testing::valid_request(m, kAllOps[m.below(kOps)], id, tokens);
  m.mutate(bad, m.one_in(2) ? kHeaderSize : 0);
  if (bad.size() >= kHeaderSize && !m.one_in(4))  // mostly keep the length field honest
    store_le<uint64_t>(&bad[16], bad.size() - kHeaderSize);
  return bad;
}

// One connection: (usually) HELLO, a few valid requests, one fuzzed frame, then a PING whose
// reply marks the end. The node must answer or close the connection; a read that waits past
// two seconds means it hung.
void fuzz_one_connection(testing::TestNode& node, Mutator& m, std::vector<uint64_t>* tokens, uint64_t* replies) {
  testing::RawConn c(node.path());
  ASSERT_TRUE(c.ok());
  if (!m.one_in(10)) {
    ASSERT_EQ(c.hello(kMinVersion, kVersion, /*map=*/false).h.op, kHello);
  }
  for (int i = static_cast<int>(m.below(3)); i > 0; i--) {
    uint16_t op = kAllOps[1 + m.below(kOps - 1)];
    std::vector<uint8_t> f = testing::valid_request(m, op, c.next_id(), *tokens);
    if (!c.send(f.data(), f.size())) return;
    if (op == kGetUnpin || op == kLocateRelease) continue;
    Frame reply;
    if (!c.recv(&reply)) return;  // closed (e.g. no HELLO): fine
    testing::check_node_reply(reply.h, reply.reader(), tokens);
    if (::testing::Test::HasFatalFailure()) return;
  }
  std::vector<uint8_t> bad = fuzzed_frame(m, c.next_id(), *tokens);
  Writer ping;
  ping.begin(kPing, kSentinelId);
  if (!c.send(bad.data(), bad.size()) || !c.send(ping)) return;
  for (Frame reply; c.recv(&reply, 2000);) {
    testing::check_node_reply(reply.h, reply.reader(), tokens);
    ++*replies;
    if (::testing::Test::HasFatalFailure() || (reply.h.op == kPing && reply.h.request_id == kSentinelId)) return;
  }
}

TEST(NodeFuzz, NodeSurvivesRandomAndMutatedFramesAndLeaksNoTokens) {
  // A short timeout: a frame whose body never completes costs the node (and the test) 100 ms.
  // An NVMe tier that every put reaches (GET_LOCATE finds pages) and kept keys (REMOVE_PREFIX).
  testing::TestNode node(/*timeout_ms=*/100, 8ull << 20, [](TieredOptions& o, const testing::TempDir& dir) {
    o.keep_keys = true;
    o.has_nvme = true;
    o.write_through = true;
    o.nvme.path = dir.file("nvme.data");
    o.nvme.capacity = 16ull << 20;
    o.nvme.region_size = 2ull << 20;
    o.nvme.queue_depth = 8;
  });
  Mutator m(testing::test_seed() + 3);
  std::vector<uint64_t> tokens;
  uint64_t replies = 0;
  FuzzBudget budget(3000, 3.0);
  while (budget.next()) {
    auto t0 = std::chrono::steady_clock::now();
    fuzz_one_connection(node, m, &tokens, &replies);
    if (HasFatalFailure()) {
      ADD_FAILURE() << "connection " << budget.done() << " (seed " << testing::test_seed() << ")";
      return;
    }
    ASSERT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3)) << "the node neither answered nor closed";
  }
  ASSERT_TRUE(node.wait_idle()) << "connections still open";
  NodeStats s = node.server().stats();
  EXPECT_EQ(s.pins_held, 0u) << "a closed connection left pins behind";
  EXPECT_EQ(s.reservations_held, 0u) << "a closed connection left reservations behind";
  EXPECT_EQ(s.locations_held, 0u) << "a closed connection left NVMe regions pinned";
  EXPECT_GT(s.bad_frames, 0u);
  EXPECT_GT(replies, budget.done() / 2);
  // The node still serves a well-behaved client.
  testing::RawConn c(node.path());
  ASSERT_EQ(c.hello().h.op, kHello);
  EXPECT_EQ(c.call(kPing, [](Writer& w) { w.u32(7); }).h.op, kPing);
  RecordProperty("connections", static_cast<int>(budget.done()));
}

// ---- a client fed by a rogue node --------------------------------------------------------

constexpr uint64_t kRogueArena = 4ull << 20;

// Answers each request with a reply of the right shape (values random, often on the bounds),
// half of the time mutated; now and then an ERROR, silence, or a hang-up.
class Rogue {
 public:
  explicit Rogue(uint64_t seed) : m_(seed) {}
  uint64_t located() const { return located_.load(); }  // GET_LOCATE requests seen
  testing::FakeNode::Action answer(const Frame& req, std::vector<uint8_t>* out) {
    using Action = testing::FakeNode::Action;
    if (req.h.op == kGetLocate) located_++;
    if (req.h.op == kGetUnpin || req.h.op == kLocateRelease) return Action::kSilent;
    if (m_.one_in(20)) return Action::kHangUp;
    Writer w;
    build(req, w);
    *out = testing::frame_bytes(w);
    if (m_.one_in(2)) {
      m_.mutate(*out, m_.one_in(2) ? kHeaderSize : 0);
      // Mostly keep the length field honest: a frame cut short costs the client a timeout.
      if (out->size() >= kHeaderSize && !m_.one_in(8)) store_le<uint64_t>(&(*out)[16], out->size() - kHeaderSize);
    }
    // HELLO's arena; OPEN_DATA's "data file" is that arena too, half of the time (reads from it
    // fail their checksums: misses), else no descriptor at all.
    bool fd = req.h.op == kHello || (req.h.op == kOpenData && m_.one_in(2));
    return fd ? Action::kSendWithArena : Action::kSend;
  }

 private:
  void build(const Frame& req, Writer& w) {
    const Header& h = req.h;
    if (m_.one_in(10)) return encode_error(w, h.request_id, static_cast<int32_t>(m_.below(9)), "rogue error");
    w.begin(h.op, m_.one_in(30) ? h.request_id + 1 : h.request_id, kFlagReply, h.version);
    Reader r = req.reader();
    uint32_t n = h.op == kHello || h.op == kStats || h.op == kRemoveAll || h.op == kPing ? 0 : r.u32();
    if (m_.one_in(10)) n = static_cast<uint32_t>(m_.below(n + 3));  // a wrong count now and then
    body(req, n, w);
  }
  void body(const Frame& req, uint32_t n, Writer& w) {
    switch (req.h.op) {
      case kHello: return hello_body(w);
      case kPutReserve: return reserve_body(w, n);
      case kGetPin: return pin_body(w, n);
      case kPutCommit:
      case kExists:
      case kRemove: return status_list(w, n);
      case kValueSize: return i64_list(w, n);
      case kGetLocate: return locate_body(w, n);
      case kRemovePrefix: return w.i64(static_cast<int64_t>(m_.one_in(3) ? m_.next() : m_.below(5)));
      case kOpenData: return w.i32(m_.one_in(4) ? -704 : 0);
      case kStats: return w.str(m_.one_in(2) ? "{\"dram\":{}}" : "not json");
      case kPing: return w.bytes(req.body.data(), req.body.size());
      default: return w.i32(static_cast<int32_t>(m_.next()));  // PREFETCH, REMOVE_ALL
    }
  }
  uint64_t offset() { return m_.one_in(5) ? m_.interesting() : m_.below(kRogueArena); }
  void hello_body(Writer& w) {
    HelloReply hr;
    hr.version = kVersion;
    hr.instance = 1 + m_.below(3);
    hr.arena_size = m_.one_in(10) ? m_.interesting() : kRogueArena;
    hr.max_batch = kMaxBatch;
    hr.max_key_len = kMaxKeyLen;
    encode_hello_reply(w, hr);
  }
  void reserve_body(Writer& w, uint32_t n) {
    static const int32_t st[] = {0, 1, -802, -602, 7, -1};
    w.u32(n);
    for (uint32_t i = 0; i < n; i++) {
      w.i32(st[m_.below(6)]);
      w.u64(offset());
      w.u64(m_.next());
    }
  }
  void pin_body(Writer& w, uint32_t n) {
    w.u32(n);
    for (uint32_t i = 0; i < n; i++) {
      // NO_SPACE now and then: the page is on NVMe but not staged, so the client locates it.
      w.i64(m_.one_in(6) ? -200 : static_cast<int64_t>(m_.one_in(4) ? m_.interesting() : m_.below(64 * 1024)));
      w.u64(offset());
      w.u64(m_.next());
      w.u8(static_cast<uint8_t>(m_.below(3)));
    }
  }
  void locate_body(Writer& w, uint32_t n) {
    w.u32(n);
    for (uint32_t i = 0; i < n; i++) {
      w.i64(static_cast<int64_t>(m_.one_in(4) ? m_.interesting() : m_.below(64 * 1024)));
      w.u64(m_.one_in(2) ? 4096 * m_.below(64) : offset());  // mostly block aligned
      w.u64(m_.next());                                      // a checksum that will not match
      w.u64(m_.next());
    }
  }
  void i64_list(Writer& w, uint32_t n) {
    w.u32(n);
    for (uint32_t i = 0; i < n; i++) w.i64(static_cast<int64_t>(m_.one_in(3) ? m_.interesting() : m_.below(64 * 1024)));
  }
  void status_list(Writer& w, uint32_t n) {
    w.u32(n);
    for (uint32_t i = 0; i < n; i++) w.i32(static_cast<int32_t>(m_.one_in(3) ? m_.next() : m_.below(2)));
  }

  Mutator m_;
  std::atomic<uint64_t> located_{0};
};

// One random client call; checks what the client promises its caller whatever the node sends:
// every key gets a result, and no get reports more bytes than its buffer holds.
void client_call(NodeClient& client, Mutator& m) {
  std::vector<std::string> keys;
  size_t n = 1 + m.below(4);
  for (size_t i = 0; i < n; i++) keys.push_back("rogue-" + std::to_string(m.below(10)));
  const size_t cap = 16 * 1024;
  std::vector<std::vector<uint8_t>> bufs(n, std::vector<uint8_t>(cap, 0x11));
  std::vector<SgList> sgs;
  for (auto& b : bufs) sgs.push_back({Segment{b.data(), 1 + m.below(cap)}});
  std::vector<int32_t> res32(n, 99);
  std::vector<int64_t> res64(n, 99);
  switch (m.below(6)) {
    case 0:
      client.batch_put(keys, sgs, {}, res32.data());
      for (int32_t r : res32) ASSERT_NE(r, 99);
      break;
    case 1:
      client.batch_get(keys, sgs, res64.data());
      for (size_t i = 0; i < n; i++) {
        ASSERT_NE(res64[i], 99);
        if (res64[i] >= 0) {
          ASSERT_LE(static_cast<uint64_t>(res64[i]), sgs[i][0].len) << "more bytes than the buffer holds";
        }
      }
      break;
    case 2:
      client.batch_exists(keys, res32.data());
      for (int32_t r : res32) ASSERT_NE(r, 99);
      break;
    case 3: {
      std::vector<uint8_t> dst;
      int64_t r = client.get_value(keys[0], [&](size_t len) -> uint8_t* {
        if (len > kRogueArena) return nullptr;
        dst.resize(len);
        return dst.data();
      });
      if (r >= 0) {
        ASSERT_EQ(static_cast<size_t>(r), dst.size());
      }
      break;
    }
    case 4: {
      std::string s;
      client.stats_json(&s);
      client.ping();
      client.prefetch(keys);
      break;
    }
    default:
      client.remove(keys[0]);
      client.remove_all();
      client.value_size(keys[0]);
      client.remove_prefix(keys[0]);
      client.locate_and_hold(keys[0]);
      break;
  }
}

TEST(NodeFuzz, ClientSurvivesARogueNodesRepliesAndNeverHangs) {
  testing::TempDir dir;
  Rogue rogue(testing::test_seed() + 4);
  testing::FakeNode node(dir.file("rogue.sock"), kRogueArena,
                         [&](const Frame& req, std::vector<uint8_t>* out) { return rogue.answer(req, out); });
  const int timeout_ms = 50;
  NodeClient client(dir.file("rogue.sock"), timeout_ms);
  Mutator m(testing::test_seed() + 5);
  FuzzBudget budget(3000, 3.0);
  while (budget.next()) {
    auto t0 = std::chrono::steady_clock::now();
    client_call(client, m);
    if (HasFatalFailure()) {
      ADD_FAILURE() << "call " << budget.done() << " (seed " << testing::test_seed() << ")";
      return;
    }
    auto took = std::chrono::steady_clock::now() - t0;
    ASSERT_LT(took, std::chrono::seconds(3)) << "a call outlived its timeouts";
    // After a timeout the client fails calls at once for timeout_ms (its cool-down): wait it
    // out so that the next call reaches the node again.
    if (took >= std::chrono::milliseconds(timeout_ms / 2))
      std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms + 5));
  }
  client.close();
  EXPECT_GT(node.requests(), budget.done() / 2) << "most calls must reach the node";
  EXPECT_GT(rogue.located(), 0u) << "no call reached the direct-read path";
  RecordProperty("calls", static_cast<int>(budget.done()));
  RecordProperty("requests", static_cast<int>(node.requests()));
}

}  // namespace
}  // namespace mch
