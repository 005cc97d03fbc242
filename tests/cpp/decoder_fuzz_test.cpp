// Decoder fuzz tests, in process: random and mutated inputs for the decoders that read bytes
// from outside the process: protocol bodies, frame headers, the node's dispatcher (every op's
// request parsing, fed whole frames) and record headers read from disk. node_fuzz_test.cpp does
// the same over real sockets. Each loop is bounded by a count and by time (MCH_FUZZ_SECONDS
// overrides), seeded by MCH_TEST_SEED. They assert no crash and errors reported as codes; under
// the ASan build every input sits in an exactly-sized heap buffer, so a read past its end is
// caught.
#include <gtest/gtest.h>

#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "node/dispatcher.h"
#include "node/session.h"
#include "node_test_util.h"
#include "nvme/record_format.h"

namespace mch {
namespace {

using namespace proto;
using testing::FuzzBudget;
using testing::Mutator;

// A valid body of one of the codecs in protocol.h, or of the token lists the node parses.
std::vector<uint8_t> valid_body(Mutator& m) {
  static const uint16_t ops[] = {kHello, kPutReserve, kPutCommit, kGetPin, kGetUnpin, kExists, kPing, kRemovePrefix};
  std::vector<uint8_t> frame = testing::valid_request(m, ops[m.below(std::size(ops))], 1, {});
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
  }
  RecordProperty("inputs", static_cast<int>(budget.done()));
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
    std::vector<uint8_t> block(disk::kBlock);
    std::string key = "record-" + std::to_string(m.below(1000)) + std::string(m.below(3000), 'k');
    key.resize(std::min(key.size(), kMaxKeyLen));
    if (m.one_in(4)) {
      for (auto& x : block) x = static_cast<uint8_t>(m.next());
      // Often a plausible magic, version and key length, so the checksum path runs.
      if (!m.one_in(3)) {
        store_le<uint32_t>(&block[0], disk::kRecordMagic);
        store_le<uint16_t>(&block[4], disk::kFormatVersion);
        store_le<uint32_t>(&block[8], static_cast<uint32_t>(m.below(kMaxKeyLen + 10)));
      }
    } else {
      disk::RecordHeader h{};
      KeyDigest d = KeyDigest::of(key);
      h.key_len = static_cast<uint32_t>(key.size());
      h.value_len = m.next();
      h.digest_lo = d.lo;
      h.digest_hi = d.hi;
      disk::encode_header(block.data(), h, key.data());
      std::vector<uint8_t> head(block.begin(), block.begin() + static_cast<long>(sizeof(disk::RecordHeader) + key.size()));
      m.mutate(head);
      head.resize(std::min(head.size(), disk::kBlock));
      std::copy(head.begin(), head.end(), block.begin());
    }
    disk::RecordHeader out{};
    if (disk::decode_header(block.data(), &out)) {
      ASSERT_GE(out.key_len, 1u);
      ASSERT_LE(out.key_len, kMaxKeyLen);
      KeyDigest d = KeyDigest::of(std::string_view(reinterpret_cast<const char*>(block.data() + sizeof out), out.key_len));
      ASSERT_EQ(d.lo, out.digest_lo);
      ASSERT_EQ(d.hi, out.digest_hi);
    } else {
      rejected++;
    }
    disk::RegionTrailer t;
    memcpy(&t, block.data(), sizeof t);
    disk::trailer_valid(t);
    disk::Superblock sb;
    memcpy(&sb, block.data(), sizeof sb);
    disk::superblock_valid(sb);
  }
  EXPECT_GT(rejected, 0u);
}

// ---- the dispatcher fed whole frames, in process ------------------------------------------

// A Stream that is never read or written (the dispatcher never touches its session's stream).
class NoStream final : public Stream {
 public:
  int send_all(const void*, size_t, Clock::time_point) override { return EPIPE; }
  int send_with_fd(const void*, size_t, int, Clock::time_point) override { return EPIPE; }
  ssize_t recv_some(void*, size_t, Clock::time_point, int, int*) override { return -ECONNRESET; }
  int wait_readable(Clock::time_point, int) override { return ECONNRESET; }
  bool quiet() override { return false; }
  void shutdown() override {}
  bool passes_fds() const override { return false; }
};

// Checks the reply the dispatcher left in s.w for `outcome`; collects its tokens.
void check_dispatch(Dispatcher::Outcome outcome, Session& s, const Header& req, std::vector<uint64_t>* tokens) {
  if (outcome == Dispatcher::Outcome::kNoReply) return;
  const uint8_t* f = s.w.finish();
  Header h = decode_header(f);
  ASSERT_EQ(h.body_len + kHeaderSize, s.w.size());
  ASSERT_EQ(h.request_id, req.request_id);
  ASSERT_TRUE(h.op == req.op || h.op == kError) << h.op;
  if (outcome == Dispatcher::Outcome::kFailed) {
    ASSERT_EQ(h.op, kError);
  }
  std::vector<uint8_t> body(f + kHeaderSize, f + s.w.size());
  testing::check_node_reply(h, Reader(body.data(), body.size()), tokens);
}

// What NodeServer does when a connection ends: the store gets back what the session held.
void end_session(TieredStore& store, Session& s) {
  uint64_t reservations = 0, pins = 0;
  release_held(s, store, &reservations, &pins);
  std::vector<uint64_t> locations;
  s.locations.drain(&locations);
  store.release_locations(locations);
}

// Hands one request frame (length field made to match, body in an exactly-sized buffer) to the
// dispatcher the way the server does (header check, then the body) and checks the reply.
Dispatcher::Outcome dispatch(Dispatcher& d, Session& s, std::vector<uint8_t>& frame, std::vector<uint64_t>* tokens) {
  store_le<uint64_t>(&frame[16], frame.size() - kHeaderSize);
  Header h = decode_header(frame.data());
  Dispatcher::Outcome o = d.check_header(s, h);
  if (o != Dispatcher::Outcome::kFailed) {
    std::vector<uint8_t> body(frame.begin() + kHeaderSize, frame.end());
    o = d.handle(s, h, Reader(body.data(), body.size()));
  }
  check_dispatch(o, s, h, tokens);
  return o;
}

TEST(DecoderFuzz, DispatcherAnswersEveryFrameWithAReplyOrAnErrorCode) {
  testing::TestNode node;  // the store; its server is not used here
  NodeCounters ctr;
  Dispatcher d(node.store(), ctr, 1, "fuzz", "", [] { return std::string("{}"); });
  Mutator m(testing::test_seed() + 6);
  FuzzBudget budget(100000, 2.0);
  std::unique_ptr<Session> s;
  std::vector<uint64_t> tokens;
  static const uint16_t ops[] = {kHello,     kPutReserve, kPutCommit, kGetPin,     kGetUnpin,      kExists,
                                 kPrefetch,  kRemove,     kRemoveAll, kStats,      kPing,          kValueSize,
                                 kOpenData,  kGetLocate,  kLocateRelease, kRemovePrefix, 77};
  while (budget.next()) {
    if (!s || m.one_in(50)) {  // a new connection, which (mostly) says HELLO first
      if (s) end_session(node.store(), *s);
      s = std::make_unique<Session>(std::make_unique<NoStream>());
      std::vector<uint8_t> hello = testing::valid_request(m, kHello, 1, tokens);
      if (!m.one_in(10)) {
        ASSERT_EQ(dispatch(d, *s, hello, &tokens), Dispatcher::Outcome::kReplyWithArena);
      }
    }
    std::vector<uint8_t> frame = testing::valid_request(m, ops[m.below(std::size(ops))], static_cast<uint32_t>(m.next()), tokens);
    if (m.one_in(2)) m.mutate(frame, kHeaderSize);  // the body; the header stays parseable
    if (frame.size() < kHeaderSize) continue;
    Dispatcher::Outcome o = dispatch(d, *s, frame, &tokens);
    if (HasFatalFailure()) {
      ADD_FAILURE() << "frame " << budget.done() << " (seed " << testing::test_seed() << ")";
      return;
    }
    if (o == Dispatcher::Outcome::kFailed) {  // the server closes such a connection
      end_session(node.store(), *s);
      s.reset();
    }
  }
  if (s) end_session(node.store(), *s);
  EXPECT_GT(ctr.requests.load(), budget.done() / 2) << "most frames must pass the session checks";
}

}  // namespace
}  // namespace mch
