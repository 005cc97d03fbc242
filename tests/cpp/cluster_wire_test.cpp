// The cluster's TCP side in process: the TCP transport on loopback (vectored I/O, connect
// deadline, refused connections, the bound address), the handshake MACs, the peer protocol's
// codecs and their bounds, a decoder fuzz of every peer-protocol decoder (random and mutated
// bodies; bounded by count and time), and a PoolClient against two PeerServers over real sockets.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cluster/pool_client.h"
#include "node/node_server.h"
#include "node/peer_protocol.h"
#include "node/peer_server.h"
#include "tiering/tiered_store.h"
#include "transport/auth.h"
#include "transport/io_vec.h"
#include "transport/tcp.h"

namespace mch {
namespace {

using namespace proto;
using std::chrono::milliseconds;

Clock::time_point in(int ms) { return Clock::now() + milliseconds(ms); }

// ---- transport ------------------------------------------------------------------------------

TEST(TcpTransport, MovesVectoredBytesOverLoopback) {
  TcpListener l("127.0.0.1", 0);
  ASSERT_GT(l.port(), 0);
  TcpEndpoint ep("127.0.0.1", l.port());
  int err = 0;
  std::string msg;
  std::unique_ptr<Stream> c = ep.connect(1000, &err, &msg);
  ASSERT_TRUE(c) << msg;
  std::unique_ptr<Stream> s = l.accept(-1, 1000);
  ASSERT_TRUE(s);
  std::vector<uint8_t> a(3 << 20), b(5 << 20 | 123);
  for (size_t i = 0; i < a.size(); i++) a[i] = static_cast<uint8_t>(i * 7);
  for (size_t i = 0; i < b.size(); i++) b[i] = static_cast<uint8_t>(i * 13 + 1);
  std::thread sender([&] {
    iovec iov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
    EXPECT_EQ(c->send_vec(iov, 2, in(5000)), 0);
  });
  std::vector<uint8_t> x(b.size()), y(a.size());  // split differently from the sender's ranges
  IoVec v;
  v.add(x.data(), x.size());
  v.add(y.data(), y.size());
  EXPECT_EQ(recv_iov(*s, v, in(5000), -1), 0);
  sender.join();
  std::vector<uint8_t> all(a);
  all.insert(all.end(), b.begin(), b.end());
  EXPECT_EQ(0, memcmp(all.data(), x.data(), x.size()));
  EXPECT_EQ(0, memcmp(all.data() + x.size(), y.data(), y.size()));
}

TEST(TcpTransport, ConnectFailsFastWhenRefusedAndWithinItsDeadlineWhenUnanswered) {
  uint16_t port;
  {
    TcpListener gone("127.0.0.1", 0);
    port = gone.port();
  }
  int err = 0;
  std::string msg;
  EXPECT_FALSE(TcpEndpoint("127.0.0.1", port).connect(1000, &err, &msg));
  EXPECT_EQ(err, ECONNREFUSED) << msg;
  // A listener that never accepts, with its backlog full: SYNs are dropped, connect() waits.
  TcpListener full("127.0.0.1", 0, {}, 0);
  std::vector<std::unique_ptr<Stream>> held;
  auto t0 = Clock::now();
  for (int i = 0; i < 8 && err != ETIMEDOUT; i++) {
    std::unique_ptr<Stream> s = TcpEndpoint("127.0.0.1", full.port()).connect(200, &err, &msg);
    if (s) held.push_back(std::move(s));
  }
  EXPECT_EQ(err, ETIMEDOUT) << msg;
  EXPECT_LT(Clock::now() - t0, milliseconds(8 * 200 + 1000));
}

TEST(TcpTransport, ListensOnTheGivenAddressOnly) {
  TcpListener l("127.0.0.1", 0);
  int err = 0;
  std::string msg;
  EXPECT_FALSE(TcpEndpoint("127.0.0.2", l.port()).connect(1000, &err, &msg));
  EXPECT_EQ(err, ECONNREFUSED);
  EXPECT_THROW(TcpListener("192.0.2.1", 0), EngineError);  // not an address of this machine
  EXPECT_THROW(TcpListener("127.0.0.1", l.port()), EngineError);  // taken
}

// ---- handshake ------------------------------------------------------------------------------

TEST(PeerAuth, MacsBindBothNoncesTheVersionAndTheNodeAndDifferPerSecret) {
  Secret s("0123456789abcdef0123"), other("0123456789abcdef0124");
  Nonce ns = random_nonce(), nc = random_nonce();
  EXPECT_NE(ns, nc);
  EXPECT_TRUE(macs_equal(s.client_mac(1, ns, nc), s.client_mac(1, ns, nc)));
  EXPECT_FALSE(macs_equal(s.client_mac(1, ns, nc), other.client_mac(1, ns, nc)));
  EXPECT_FALSE(macs_equal(s.client_mac(1, ns, nc), s.client_mac(2, ns, nc)));
  EXPECT_FALSE(macs_equal(s.client_mac(1, ns, nc), s.client_mac(1, nc, ns)));
  EXPECT_FALSE(macs_equal(s.server_mac(1, nc, ns, "a"), s.server_mac(1, nc, ns, "b")));
  EXPECT_FALSE(macs_equal(s.server_mac(1, nc, ns, "a"), s.client_mac(1, ns, nc)));  // roles differ
  EXPECT_THROW(Secret(""), EngineError);
}

// ---- codecs and bounds ----------------------------------------------------------------------

Reader body_of(const Writer& w) { return Reader(w.data() + kHeaderSize, w.size() - kHeaderSize); }

TEST(PeerProtocol, TablesAndViewsRoundTrip) {
  std::vector<std::string> keys{"k0", "k1", std::string(kMaxKeyLen, 'x')};
  std::vector<uint32_t> idx{2, 0};
  Writer w;
  w.begin(kPeerPut, 1);
  encode_put_table(w, keys, idx, {10, 20, 30}, {1, 2, 3});
  w.finish();
  Reader r = body_of(w);
  uint32_t table_len = r.u32();
  ASSERT_EQ(table_len, r.remaining());
  KeyList kl;
  std::vector<uint64_t> sizes;
  std::vector<uint32_t> depths;
  uint8_t path = 9;
  uint64_t payload = 0;
  ASSERT_EQ(decode_put_table(r, &kl, &sizes, &depths, &path, &payload), 2);
  EXPECT_EQ(kl.vec(), (std::vector<std::string>{keys[2], "k0"}));
  EXPECT_EQ(sizes, (std::vector<uint64_t>{30, 10}));
  EXPECT_EQ(depths, (std::vector<uint32_t>{3, 1}));
  EXPECT_EQ(path, kInline);
  EXPECT_EQ(payload, 40u);

  ViewInfo v;
  v.epoch = 42, v.grace_ms = 7, v.self_id = "a", v.prev_epoch = 41;
  v.members = {{"a", "10.0.0.1", 7700, 2.5, true}, {"b", "::1", 7701, 1.0, false}};
  v.prev_members = {{"a", "10.0.0.1", 7700, 2.5, true}};
  w.begin(kView, 1);
  encode_view(w, v);
  w.finish();
  r = body_of(w);
  ViewInfo back;
  ASSERT_TRUE(decode_view(r, &back));
  EXPECT_EQ(back.epoch, 42u);
  EXPECT_EQ(back.members, v.members);
  EXPECT_EQ(back.prev_members, v.prev_members);
}

TEST(PeerProtocol, CountsAndSizesOverTheirBoundsAreRefused) {
  std::vector<std::string> keys(kPeerMaxKeys + 1, "k");
  std::vector<uint32_t> idx(keys.size());
  for (uint32_t i = 0; i < idx.size(); i++) idx[i] = i;
  Writer w;
  w.begin(kPeerPut, 1);
  encode_put_table(w, keys, idx, std::vector<uint64_t>(keys.size(), 1), {});
  w.finish();
  Reader r = body_of(w);
  r.u32();
  KeyList kl;
  std::vector<uint64_t> sizes;
  std::vector<uint32_t> depths;
  uint8_t path;
  uint64_t payload;
  EXPECT_EQ(decode_put_table(r, &kl, &sizes, &depths, &path, &payload), -1);
  EXPECT_TRUE(kl.vec().empty());  // refused before the keys were allocated
  w.begin(kPeerPut, 1);
  encode_put_table(w, {"k"}, {0}, {kPeerMaxValue + 1}, {});
  w.finish();
  r = body_of(w);
  r.u32();
  EXPECT_EQ(decode_put_table(r, &kl, &sizes, &depths, &path, &payload), -1);
  EXPECT_EQ(peer_body_limit(kStats), 0u);
  EXPECT_FALSE(allowed_over_tcp(kGetPin));
  EXPECT_FALSE(allowed_over_tcp(kHello));
}

// Every peer-protocol decoder on one body; what a successful decode promises.
void decode_everything(const std::vector<uint8_t>& b) {
  const uint8_t* p = b.empty() ? nullptr : b.data();
  KeyList kl;
  std::vector<uint64_t> sizes;
  std::vector<uint32_t> depths;
  uint8_t path;
  uint64_t payload;
  Reader r(p, b.size());
  if (decode_put_table(r, &kl, &sizes, &depths, &path, &payload) >= 0) {
    ASSERT_LE(kl.vec().size(), kPeerMaxKeys);
    ASSERT_LE(payload, kPeerMaxPayload);
  }
  r = Reader(p, b.size());
  if (decode_get_table(r, &kl, &sizes, &path) >= 0) {
    ASSERT_LE(kl.vec().size(), kPeerMaxKeys);
  }
  r = Reader(p, b.size());
  ViewInfo v;
  if (decode_view(r, &v)) {
    ASSERT_LE(v.members.size(), kMaxMembers);
  }
  r = Reader(p, b.size());
  AuthRequest a;
  decode_auth(r, &a);
  r = Reader(p, b.size());
  AuthReply ar;
  decode_auth_reply(r, &ar);
  r = Reader(p, b.size());
  Challenge c;
  if (decode_challenge(r, &c)) {
    ASSERT_LE(c.node_id.size(), kMaxIdLen);
  }
}

std::vector<uint8_t> valid_body(std::mt19937_64& rng) {
  Writer w;
  w.begin(kPeerPut, 1);
  std::vector<std::string> keys{"alpha", "beta", std::string(rng() % 300 + 1, 'k')};
  switch (rng() % 4) {
    case 0:
      encode_put_table(w, keys, {0, 1, 2}, {1, 2, 3}, {});
      break;
    case 1:
      encode_get_table(w, keys, {2, 1}, {100, 200, 300});
      break;
    case 2: {
      ViewInfo v;
      v.epoch = rng();
      v.members = {{"a", "h", 1, 1.0, true}, {"b", "h2", 2, 2.0, false}};
      encode_view(w, v);
      break;
    }
    default: {
      AuthRequest a;
      a.info = "client";
      encode_auth(w, a);
    }
  }
  w.finish();
  std::vector<uint8_t> b(w.data() + kHeaderSize, w.data() + w.size());
  if (rng() % 2 && b.size() >= 4) b.erase(b.begin(), b.begin() + 4);  // PEER_PUT's table without its length
  return b;
}

TEST(PeerProtocol, DecodersSurviveRandomAndMutatedBodies) {
  std::mt19937_64 rng(std::getenv("MCH_TEST_SEED") ? std::strtoull(std::getenv("MCH_TEST_SEED"), nullptr, 10) : 1234);
  static const uint32_t interesting[] = {0, 1, 4095, 4096, 4097, 65536, 0x7fffffff, 0x80000000, 0xffffffff};
  auto end = Clock::now() + std::chrono::seconds(2);
  int n = 0;
  for (; n < 200000 && Clock::now() < end; n++) {
    std::vector<uint8_t> b;
    if (n % 5 == 0) {
      b.resize(rng() % 256);
      for (auto& x : b) x = static_cast<uint8_t>(rng());
    } else {
      b = valid_body(rng);
      for (int m = 0; m < 1 + static_cast<int>(rng() % 4) && !b.empty(); m++) {
        size_t pos = rng() % b.size();
        if (rng() % 2 && b.size() >= pos + 4)
          store_le<uint32_t>(&b[pos], interesting[rng() % 9]);
        else
          b[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
        if (rng() % 8 == 0) b.resize(rng() % (b.size() + 1));
      }
    }
    b.shrink_to_fit();  // an exactly-sized buffer: a sanitizer catches a read past its end
    decode_everything(b);
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(n, 1000);
}

// ---- a pool over two peer servers ------------------------------------------------------------

struct Member {
  std::unique_ptr<TieredStore> store;
  std::unique_ptr<NodeServer> node;
  std::unique_ptr<PeerServer> peer;
  Member(const std::string& id, const std::string& secret) {
    TieredOptions o;
    o.dram_capacity = 16 << 20, o.slab_size = 1 << 20, o.hugepages = false;
    store = std::make_unique<TieredStore>(o);
    node = std::make_unique<NodeServer>(*store, "/tmp/mch-cwt-" + id + "-" + std::to_string(getpid()) + ".sock");
    node->start();
    PeerServerOptions p;
    p.node_id = id, p.secret = secret;
    peer = std::make_unique<PeerServer>(*node, p);
    peer->start();
  }
  ~Member() {
    peer->stop();
    node->stop();
  }
};

TEST(PoolClientOverTcp, WritesAndReadsAcrossMembersAndRefusesAWrongSecret) {
  const std::string secret = "a cluster secret of 32 bytes....";
  Member a("a", secret), b("b", secret);
  ViewInfo v;
  v.epoch = 3;
  v.members = {{"a", "127.0.0.1", a.peer->port(), 1.0, true}, {"b", "127.0.0.1", b.peer->port(), 1.0, true}};
  cluster::PoolOptions opt;
  opt.secret = secret;
  opt.request_timeout_ms = 2000;
  cluster::PoolClient pool(nullptr, opt);  // no local node: everything over TCP
  pool.set_view(v);
  const size_t n = 64, sz = 20000;
  std::vector<std::string> keys;
  std::vector<std::vector<uint8_t>> data(n, std::vector<uint8_t>(sz)), out(n, std::vector<uint8_t>(sz));
  std::vector<SgList> in_sg, out_sg;
  for (size_t i = 0; i < n; i++) {
    keys.push_back("pool-key-" + std::to_string(i));
    for (size_t j = 0; j < sz; j++) data[i][j] = static_cast<uint8_t>(i * 31 + j);
    in_sg.push_back({Segment{data[i].data(), sz}});
    out_sg.push_back({Segment{out[i].data(), sz / 2}, Segment{out[i].data() + sz / 2, sz - sz / 2}});
  }
  std::vector<int32_t> put(n, 1);
  pool.batch_put(keys, in_sg, {}, put.data());
  EXPECT_EQ(put, std::vector<int32_t>(n, 0));
  std::vector<int64_t> got(n, 0);
  pool.batch_get(keys, out_sg, got.data());
  EXPECT_EQ(got, std::vector<int64_t>(n, static_cast<int64_t>(sz)));
  EXPECT_EQ(out, data);
  EXPECT_GT(a.peer->stats().keys_put, 0u);
  EXPECT_GT(b.peer->stats().keys_put, 0u);
  EXPECT_EQ(a.peer->stats().requests_by_op[6].second + b.peer->stats().requests_by_op[6].second, 2u);  // peer_put

  cluster::PoolOptions wrong = opt;
  wrong.secret = "not the cluster secret, 32 bytes";
  cluster::PoolClient stranger(nullptr, wrong);
  stranger.set_view(v);
  std::fill(got.begin(), got.end(), 0);
  stranger.batch_get(keys, out_sg, got.data());
  EXPECT_EQ(got, std::vector<int64_t>(n, status_code(Status::kNotFound)));
  // Each member counts the refused handshake on its own poller thread, which may run just after
  // the client has seen the connection close: wait (bounded) for both counts.
  auto refused = [&] { return a.peer->stats().auth_failures + b.peer->stats().auth_failures; };
  for (int i = 0; i < 200 && refused() < 2; i++) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_GE(refused(), 2u);
}

}  // namespace
}  // namespace mch
