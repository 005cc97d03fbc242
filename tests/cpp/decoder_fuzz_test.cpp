// Decoder fuzz tests: random and mutated inputs for every decoder that reads bytes from outside
// the process (protocol bodies, frames at a live node, replies at a client, record headers on
// disk). Each loop is bounded by a count and by time (MCH_FUZZ_SECONDS overrides), seeded by
// MCH_TEST_SEED. They assert no crash, no hang and errors reported as codes; under the ASan build
// every input sits in an exactly-sized heap buffer, so a read past its end is caught.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/status.h"
#include "fuzz_util.h"
#include "node/node_client.h"
#include "node_test_util.h"
#include "nvme/record_format.h"

namespace mch {
namespace {

using namespace proto;
using testing::FuzzBudget;
using testing::Mutator;

// A valid body of one of the codecs in protocol.h, or of the token lists the node parses.
std::vector<uint8_t> valid_body(Mutator& m) {
  static const uint16_t ops[] = {kHello, kPutReserve, kPutCommit, kGetPin, kGetUnpin, kExists, kPing};
  std::vector<uint8_t> frame = testing::valid_request(m, ops[m.below(7)], 1, {});
  if (m.one_in(4)) {  // a HELLO reply body instead
    Writer w;
    w.begin(kHello, 1, kFlagReply);
    HelloReply h;
    h.info = std::string(m.below(100), 'i');
    encode_hello_reply(w, h);
    const uint8_t* f = w.finish();
    frame.assign(f, f + w.size());
  }
  return std::vector<uint8_t>(frame.begin() + kHeaderSize, frame.end());
}

// Runs every body decoder on `body`; checks what a successful decode promises.
void decode_everything(const std::vector<uint8_t>& body) {
  const uint8_t* p = body.empty() ? nullptr : body.data();
  {
    Reader r(p, body.size());
    KeyList keys;
    int64_t n = decode_keys(r, &keys);
    if (n >= 0) {
      ASSERT_LE(n, static_cast<int64_t>(kMaxBatch));
      ASSERT_EQ(keys.vec().size(), static_cast<size_t>(n));
      for (const std::string& k : keys.vec()) ASSERT_LE(k.size(), kMaxKeyLen);
    } else {
      ASSERT_EQ(n, -1);
      ASSERT_FALSE(r.ok());
    }
  }
  {
    Reader r(p, body.size());
    KeyList keys;
    std::vector<uint64_t> sizes;
    std::vector<uint32_t> depths;
    int64_t n = decode_put_reserve(r, &keys, &sizes, &depths);
    if (n >= 0) {
      ASSERT_EQ(sizes.size(), static_cast<size_t>(n));
      ASSERT_EQ(depths.size(), static_cast<size_t>(n));
    } else {
      ASSERT_EQ(n, -1);
    }
  }
  {
    Reader r(p, body.size());
    HelloReply h;
    if (decode_hello_reply(r, &h)) { ASSERT_LE(h.info.size(), 4096u); }
  }
  {
    // The node's PUT_COMMIT / GET_UNPIN parsing: a bounded count of fixed-size items.
    Reader r(p, body.size());
    uint32_t n = r.count(9);
    for (uint32_t i = 0; i < n && r.ok(); i++) {
      r.u64();
      r.u8();
    }
    ASSERT_LE(r.remaining(), body.size());
  }
}

TEST(DecoderFuzz, ProtocolBodyDecodersRejectBadInputWithACode) {
  Mutator m(testing::test_seed());
  FuzzBudget budget(200000, 2.0);
  uint64_t decoded = 0;
  while (budget.next()) {
    std::vector<uint8_t> body = m.one_in(3) ? m.random_bytes(256) : valid_body(m);
    if (!m.one_in(5)) m.mutate(body);
    std::vector<uint8_t> exact(body);  // exactly sized: ASan sees any read past the end
    exact.shrink_to_fit();
    decode_everything(exact);
    if (HasFatalFailure()) {
      ADD_FAILURE() << "input of " << exact.size() << " bytes, iteration " << budget.done();
      return;
    }
    decoded++;
  }
  EXPECT_GT(decoded, 1000u);
}

TEST(DecoderFuzz, FrameHeaderDecodesAnyBytes) {
  Mutator m(testing::test_seed() + 1);
  FuzzBudget budget(100000, 1.0);
  while (budget.next()) {
    std::vector<uint8_t> b = m.random_bytes(kHeaderSize);
    b.resize(kHeaderSize);
    Header h = decode_header(b.data());
    uint8_t back[kHeaderSize];
    encode_header(back, h);
    ASSERT_EQ(memcmp(back, b.data(), kHeaderSize), 0) << "the header codec is a bijection";
  }
}

TEST(DecoderFuzz, RecordHeaderDecoderRejectsDamagedBlocks) {
  Mutator m(testing::test_seed() + 2);
  FuzzBudget budget(50000, 2.0);
  uint64_t rejected = 0;
  while (budget.next()) {
    std::vector<uint8_t> block(fmt::kBlock);
    std::string key = "record-" + std::to_string(m.below(1000)) + std::string(m.below(3000), 'k');
    key.resize(std::min(key.size(), fmt::kMaxKeyLen));
    if (m.one_in(4)) {
      for (auto& x : block) x = static_cast<uint8_t>(m.next());
      // Often a plausible magic, version and key length, so the checksum path runs.
      if (!m.one_in(3)) {
        proto::store_le<uint32_t>(&block[0], fmt::kRecordMagic);
        proto::store_le<uint16_t>(&block[4], fmt::kFormatVersion);
        proto::store_le<uint32_t>(&block[8], static_cast<uint32_t>(m.below(fmt::kMaxKeyLen + 10)));
      }
    } else {
      fmt::RecordHeader h{};
      KeyDigest d = KeyDigest::of(key);
      h.key_len = static_cast<uint32_t>(key.size());
      h.value_len = m.next();
      h.digest_lo = d.lo;
      h.digest_hi = d.hi;
      fmt::encode_header(block.data(), h, key.data());
      std::vector<uint8_t> head(block.begin(), block.begin() + static_cast<long>(sizeof(fmt::RecordHeader) + key.size()));
      m.mutate(head);
      head.resize(std::min(head.size(), fmt::kBlock));
      std::copy(head.begin(), head.end(), block.begin());
    }
    fmt::RecordHeader out{};
    if (fmt::decode_header(block.data(), &out)) {
      ASSERT_GE(out.key_len, 1u);
      ASSERT_LE(out.key_len, fmt::kMaxKeyLen);
      KeyDigest d = KeyDigest::of(std::string_view(reinterpret_cast<const char*>(block.data() + sizeof out), out.key_len));
      ASSERT_EQ(d.lo, out.digest_lo);
      ASSERT_EQ(d.hi, out.digest_hi);
    } else {
      rejected++;
    }
    fmt::RegionTrailer t;
    memcpy(&t, block.data(), sizeof t);
    fmt::trailer_valid(t);
    fmt::Superblock sb;
    memcpy(&sb, block.data(), sizeof sb);
    fmt::superblock_valid(sb);
  }
  EXPECT_GT(rejected, 0u);
}

// ---- a live node fed random and mutated frames ----------------------------------------------

struct ServerFuzzState {
  std::vector<uint64_t> tokens;  // tokens seen in replies (so commits and unpins can hit them)
  uint64_t replies = 0, errors = 0, closed_early = 0;
};

// Checks one frame the node sent; collects tokens from reserve and pin replies.
void check_reply(const testing::Frame& f, ServerFuzzState* st) {
  ASSERT_EQ(f.h.magic, kMagic);
  ASSERT_TRUE(f.h.flags & kFlagReply);
  ASSERT_GE(f.h.version, kMinVersion);
  ASSERT_LE(f.h.version, kVersion);
  st->replies++;
  Reader r = f.reader();
  if (f.h.op == kError) {
    st->errors++;
    int32_t code = r.i32();
    ASSERT_GE(code, kErrVersion);
    ASSERT_LE(code, kErrTooManyConnections);
    r.u16();
    r.u16();
    r.str();
    ASSERT_TRUE(r.done()) << "ERROR body";
    return;
  }
  ASSERT_LT(f.h.op, kOpCount);
  if (f.h.op == kPutReserve || f.h.op == kGetPin) {
    uint32_t n = r.u32();
    size_t item = f.h.op == kPutReserve ? kReserveResultWire : kPinResultWire;
    ASSERT_EQ(r.remaining(), n * item);
    for (uint32_t i = 0; i < n; i++) {
      if (f.h.op == kPutReserve) r.i32(); else r.i64();
      r.u64();
      st->tokens.push_back(r.u64());
      if (f.h.op == kGetPin) r.u8();
    }
    if (st->tokens.size() > 64) st->tokens.erase(st->tokens.begin(), st->tokens.begin() + 32);
  }
}

// One connection: (usually) HELLO, a few valid requests, then one fuzzed frame; then the client
// stops sending and reads until the node closes. The node must answer or close, never hang.
void fuzz_one_connection(testing::TestNode& node, Mutator& m, ServerFuzzState* st) {
  static const uint16_t ops[] = {kHello, kPutReserve, kPutCommit, kGetPin, kGetUnpin, kExists,
                                 kPrefetch, kRemove, kRemoveAll, kStats, kPing};
  testing::RawConn c(node.path());
  ASSERT_TRUE(c.ok());
  if (!m.one_in(10)) { ASSERT_EQ(c.hello(kMinVersion, kVersion, /*map=*/false).h.op, kHello); }
  int valid = static_cast<int>(m.below(3));
  for (int i = 0; i < valid; i++) {
    uint16_t op = ops[1 + m.below(10)];
    std::vector<uint8_t> f = testing::valid_request(m, op, c.next_id(), st->tokens);
    if (!c.send(f.data(), f.size())) return;
    if (op == kGetUnpin) continue;
    testing::Frame reply;
    if (!c.recv(&reply, 5000)) return;  // closed (e.g. no HELLO): fine
    check_reply(reply, st);
    if (::testing::Test::HasFatalFailure()) return;
  }
  std::vector<uint8_t> bad;
  if (m.one_in(4)) {
    bad = m.random_bytes(96);
    if (bad.size() >= 4 && !m.one_in(4)) store_le<uint32_t>(bad.data(), kMagic);
  } else {
    bad = testing::valid_request(m, ops[m.below(11)], c.next_id(), st->tokens);
    m.mutate(bad, m.one_in(2) ? kHeaderSize : 0);
    if (bad.size() >= kHeaderSize && m.one_in(2))  // keep the length field honest half the time
      store_le<uint64_t>(&bad[16], bad.size() - kHeaderSize);
  }
  if (!bad.empty() && !c.send(bad.data(), bad.size())) return;
  c.shutdown_write();
  testing::Frame reply;
  auto t0 = std::chrono::steady_clock::now();
  while (c.recv(&reply, 5000)) {
    check_reply(reply, st);
    if (::testing::Test::HasFatalFailure()) return;
  }
  ASSERT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4)) << "the node neither answered nor closed";
}

TEST(DecoderFuzz, NodeSurvivesRandomAndMutatedFramesAndLeaksNoTokens) {
  testing::TestNode node(/*timeout_ms=*/1000);
  Mutator m(testing::test_seed() + 3);
  ServerFuzzState st;
  FuzzBudget budget(3000, 3.0);
  while (budget.next()) {
    fuzz_one_connection(node, m, &st);
    if (HasFatalFailure()) {
      ADD_FAILURE() << "connection " << budget.done() << " (seed " << testing::test_seed() << ")";
      return;
    }
  }
  ASSERT_TRUE(node.wait_idle()) << "connections still open";
  NodeServerStats s = node.server().stats();
  EXPECT_EQ(s.pins_held, 0u) << "a closed connection left pins behind";
  EXPECT_EQ(s.reservations_held, 0u) << "a closed connection left reservations behind";
  EXPECT_GT(s.bad_frames, 0u);
  EXPECT_GT(st.replies, 0u);
  // The node still works for a well-behaved client.
  testing::RawConn c(node.path());
  ASSERT_EQ(c.hello().h.op, kHello);
  testing::Frame ping = c.call(kPing, [](Writer& w) { w.u32(7); });
  EXPECT_EQ(ping.h.op, kPing);
  RecordProperty("connections", static_cast<int>(budget.done()));
}

// ---- a client fed random and mutated replies by a rogue node ---------------------------------

// Accepts connections on a Unix socket and answers each request with a plausible reply of the
// right shape, mutated half of the time (sometimes an ERROR, sometimes silence).
class RogueNode {
 public:
  RogueNode(const std::string& path, uint64_t seed) : path_(path), m_(seed) {
    arena_fd_ = memfd_create("rogue-arena", MFD_CLOEXEC);
    ftruncate(arena_fd_, kArena);
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    listen(listen_fd_, 16);
    thread_ = std::thread([this] { run(); });
  }
  ~RogueNode() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
    ::close(arena_fd_);
    unlink(path_.c_str());
  }
  static constexpr uint64_t kArena = 4ull << 20;
  uint64_t requests() const { return requests_.load(); }

 private:
  void run() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      serve(fd);
      ::close(fd);
    }
  }
  bool recv_frame(int fd, Header* h, std::vector<uint8_t>* body) {
    uint8_t hdr[kHeaderSize];
    for (;;) {  // wait in short steps so stop_ is seen
      if (stop_) return false;
      int e = recv_all(fd, hdr, kHeaderSize, Clock::now() + std::chrono::milliseconds(50));
      if (e == 0) break;
      if (e != ETIMEDOUT) return false;
    }
    *h = decode_header(hdr);
    if (h->body_len > (1u << 20)) return false;
    body->resize(static_cast<size_t>(h->body_len));
    return body->empty() || recv_all(fd, body->data(), body->size(), Clock::now() + std::chrono::seconds(2)) == 0;
  }
  void serve(int fd) {
    Header h;
    std::vector<uint8_t> body;
    while (recv_frame(fd, &h, &body)) {
      requests_++;
      if (h.op == kGetUnpin) continue;
      if (m_.one_in(20)) return;  // hang up without answering
      Writer w;
      build_reply(h, body, w);
      const uint8_t* f = w.finish();
      std::vector<uint8_t> out(f, f + w.size());
      if (m_.one_in(2)) {
        m_.mutate(out, m_.one_in(2) ? kHeaderSize : 0);
        // Mostly keep the length field honest: a frame cut short costs the client a timeout.
        if (out.size() >= kHeaderSize && !m_.one_in(8)) store_le<uint64_t>(&out[16], out.size() - kHeaderSize);
      }
      if (h.op == kHello && out.size() >= 1) {
        send_with_fd(fd, out);
      } else if (send_all(fd, out.data(), out.size(), Clock::now() + std::chrono::seconds(1)) != 0) {
        return;
      }
    }
  }
  void send_with_fd(int fd, const std::vector<uint8_t>& out) {
    iovec iov{const_cast<uint8_t*>(out.data()), out.size()};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &arena_fd_, sizeof arena_fd_);
    sendmsg(fd, &msg, MSG_NOSIGNAL);
  }
  // A reply of the right shape for the request; values random, often on the bounds.
  void build_reply(const Header& h, const std::vector<uint8_t>& body, Writer& w) {
    if (m_.one_in(10)) {
      w.begin(kError, h.request_id, kFlagReply, h.version);
      w.i32(static_cast<int32_t>(m_.below(9)));
      w.u16(kMinVersion);
      w.u16(kVersion);
      w.str("rogue error");
      return;
    }
    w.begin(h.op, m_.one_in(30) ? h.request_id + 1 : h.request_id, kFlagReply, h.version);
    Reader r(body.data(), body.size());
    uint32_t n = h.op == kHello || h.op == kStats || h.op == kRemoveAll || h.op == kPing ? 0 : r.u32();
    if (m_.one_in(10)) n = static_cast<uint32_t>(m_.below(n + 3));  // a wrong count now and then
    switch (h.op) {
      case kHello: return hello_body(w);
      case kPutReserve: return reserve_body(w, n);
      case kGetPin: return pin_body(w, n);
      case kPutCommit:
      case kExists:
      case kRemove: return status_list(w, n);
      case kStats: return w.str(m_.one_in(2) ? "{\"dram\":{}}" : "not json");
      case kPing: return w.bytes(body.data(), body.size());
      default: return w.i32(static_cast<int32_t>(m_.next()));  // PREFETCH, REMOVE_ALL
    }
  }
  uint64_t offset() { return m_.one_in(5) ? m_.interesting() : m_.below(kArena); }
  void hello_body(Writer& w) {
    HelloReply hr;
    hr.version = kVersion;
    hr.instance = 1 + m_.below(3);
    hr.arena_size = m_.one_in(10) ? m_.interesting() : kArena;
    hr.max_batch = kMaxBatch;
    hr.max_key_len = kMaxKeyLen;
    encode_hello_reply(w, hr);
  }
  void reserve_body(Writer& w, uint32_t n) {
    static const int32_t st[] = {kOk, 1, kNoSpace, kValueTooLarge, 7, -1};
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
      w.i64(static_cast<int64_t>(m_.one_in(4) ? m_.interesting() : m_.below(64 * 1024)));
      w.u64(offset());
      w.u64(m_.next());
      w.u8(static_cast<uint8_t>(m_.below(3)));
    }
  }
  void status_list(Writer& w, uint32_t n) {
    w.u32(n);
    for (uint32_t i = 0; i < n; i++) w.i32(static_cast<int32_t>(m_.one_in(3) ? m_.next() : m_.below(2)));
  }

  std::string path_;
  Mutator m_;
  int arena_fd_ = -1, listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> requests_{0};
  std::thread thread_;
};

// One random client call against the rogue node; checks what the client promises its caller.
void client_call(NodeClient& client, Mutator& m) {
  std::vector<std::string> keys;
  size_t n = 1 + m.below(4);
  for (size_t i = 0; i < n; i++) keys.push_back("rogue-" + std::to_string(m.below(10)));
  const size_t cap = 16 * 1024;
  std::vector<std::vector<uint8_t>> bufs(n, std::vector<uint8_t>(cap, 0x11));
  std::vector<SgList> sgs;
  for (auto& b : bufs) sgs.push_back({Segment{b.data(), 1 + m.below(cap)}});
  switch (m.below(8)) {
    case 0: {
      std::vector<int32_t> res(n, 99);
      client.batch_put(keys, sgs, {}, res.data());
      // Every key gets a result (the client passes the node's commit codes through as they come).
      for (int32_t r : res) ASSERT_NE(r, 99);
      break;
    }
    case 1: {
      std::vector<int64_t> res(n, 99);
      client.batch_get(keys, sgs, res.data());
      for (size_t i = 0; i < n; i++) {
        ASSERT_NE(res[i], 99);
        if (res[i] >= 0) { ASSERT_LE(static_cast<uint64_t>(res[i]), sgs[i][0].len) << "more bytes than the buffer holds"; }
      }
      break;
    }
    case 2: {
      std::vector<int32_t> res(n, 99);
      client.batch_exists(keys, res.data());
      for (int32_t r : res) ASSERT_NE(r, 99);
      break;
    }
    case 3:
      client.prefetch(keys);
      break;
    case 4:
      client.remove(keys[0]);
      client.remove_all();
      break;
    case 5: {
      std::string s;
      client.stats_json(&s);
      client.ping();
      break;
    }
    case 6: {
      std::vector<uint8_t> dst;
      int64_t r = client.get_value(keys[0], [&](size_t len) -> uint8_t* {
        if (len > RogueNode::kArena) return nullptr;
        dst.resize(len);
        return dst.data();
      });
      if (r >= 0) { ASSERT_EQ(static_cast<size_t>(r), dst.size()); }
      break;
    }
    default:
      client.value_size(keys[0]);
      break;
  }
}

TEST(DecoderFuzz, ClientSurvivesARogueNodesRepliesAndNeverHangs) {
  testing::TempDir dir;
  std::string path = dir.file("rogue.sock");
  RogueNode rogue(path, testing::test_seed() + 4);
  const int timeout_ms = 50;
  NodeClient client(path, timeout_ms);
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
    // out so the next call reaches the node again.
    if (took >= std::chrono::milliseconds(timeout_ms / 2))
      std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms + 5));
  }
  client.close();
  EXPECT_GT(rogue.requests(), budget.done() / 2) << "most calls must reach the node";
  RecordProperty("calls", static_cast<int>(budget.done()));
  RecordProperty("requests", static_cast<int>(rogue.requests()));
}

}  // namespace
}  // namespace mch
