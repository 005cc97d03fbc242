// The RDMA lanes of the cluster (node/peer_rdma.h, node/rdma_mover.h, cluster/rdma_client.h)
// against the FAKE verbs provider: no RDMA NIC exists on these machines, so the fake
// (transport/rdma/fake_verbs.h) stands in for the NIC in this process. A pool client's lane and a
// node's lane are set up with the RDMA_CONNECT exchange (its request and reply through the wire
// codec, without the TCP connection that carries them in the product: tests/test_cluster_rdma.py
// runs that end to end), then the node moves values with RdmaMover: a get WRITEs a slot into the
// client's buffer, a put READs the client's buffer into a slot. Covered: the handshake, both
// directions, descriptors outside the announced regions, a stale node incarnation, a failed
// completion breaking the lane and the reconnect, and a regions-only update keeping the QP.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "cluster/rdma_client.h"
#include "common/status.h"
#include "node/peer_rdma.h"
#include "node/rdma_mover.h"
#include "transport/rdma/fake_verbs.h"
#include "transport/socket_stream.h"

namespace mch {
namespace {

using namespace std::chrono_literals;
using cluster::ClientLane;
using cluster::RdmaClient;
using proto::RdmaDescs;

constexpr uint64_t kArena = 4 << 20;
constexpr uint64_t kInstance = 0x1234;
constexpr uint64_t kPage = 64 * 1024;

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 9));
  return v;
}

// A request's and a reply's bytes through the codec, as the TCP connection carries them.
template <class T, class Enc, class Dec>
bool through_wire(const T& in, T* out, Enc enc, Dec dec) {
  proto::Writer w;
  w.begin(proto::kRdmaConnect, 1);
  enc(w, in);
  w.finish();
  proto::Reader r(w.data() + proto::kHeaderSize, w.size() - proto::kHeaderSize);
  return dec(r, out);
}

struct Lanes : ::testing::Test {
  void SetUp() override {
    rdma::fake::clear_faults();
    PeerRdmaOptions no;
    no.devices = {"mch_fake0"};
    node = std::make_unique<PeerRdma>(api, no, arena.data(), arena.size(), kInstance);
    cluster::RdmaClientOptions co;
    co.devices = {"mch_fake1"};
    client = std::make_unique<RdmaClient>(api, co);
    std::string err;
    ASSERT_EQ(client->register_buffer(buf.data(), buf.size(), &err), 0) << err;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ::close(sv[1]);
    session = std::make_unique<Session>(std::make_unique<SocketStream>(sv[0], true));
    mover = std::make_unique<RdmaMover>(*session, *node);
  }
  void TearDown() override { rdma::fake::clear_faults(); }

  // One RDMA_CONNECT exchange for a lane pick() hands out; the lane, up.
  std::shared_ptr<ClientLane> connect(int32_t* code = nullptr) {
    std::shared_ptr<ClientLane> pending;
    std::shared_ptr<ClientLane> up = client->pick("b@host:1", &pending);
    if (up) return up;
    EXPECT_TRUE(pending);
    if (!pending) return nullptr;
    proto::RdmaConnect req, got;
    std::string err;
    EXPECT_TRUE(client->connect_request(*pending, &req, &err)) << err;
    EXPECT_TRUE(through_wire(req, &got, proto::encode_rdma_connect, proto::decode_rdma_connect));
    proto::RdmaConnectReply rep, rep2;
    int32_t c = node->connect(got, &rep, &err);
    if (code) *code = c;
    if (c) {
      client->connect_failed(*pending, c, err);
      return nullptr;
    }
    EXPECT_TRUE(through_wire(rep, &rep2, proto::encode_rdma_connect_reply, proto::decode_rdma_connect_reply));
    EXPECT_EQ(rep2.node_instance, kInstance);
    EXPECT_EQ(rep2.device, "mch_fake0");
    return client->connected(*pending, rep2) ? pending : nullptr;
  }

  // The descriptors of buf[off, off+len) on lane l.
  RdmaDescs describe(const ClientLane& l, uint64_t off, uint64_t len) {
    RdmaDescs d;
    client->fill_head(l, &d);
    SgList sg{Segment{buf.data() + off, len}};
    EXPECT_TRUE(client->describe(l, sg, len, &d));
    return d;
  }

  // A get of one value at arena[slot_off] into d; the key's failure (0: moved).
  int32_t get(const RdmaDescs& d, uint64_t slot_off, uint64_t len) {
    std::string err;
    if (!mover->bind(d, 1, false, &err)) return -1;
    mover->get_value(0, arena.data() + slot_off, len);
    EXPECT_EQ(mover->move(Clock::now() + 5s, -1), 0);
    return mover->failure(0);
  }

  const rdma::VerbsApi& api = *rdma::fake_verbs_api();
  std::vector<uint8_t> arena = std::vector<uint8_t>(kArena, 0);
  std::vector<uint8_t> buf = std::vector<uint8_t>(1 << 20, 0);
  std::unique_ptr<PeerRdma> node;
  std::unique_ptr<RdmaClient> client;
  std::unique_ptr<Session> session;
  std::unique_ptr<RdmaMover> mover;
};

TEST_F(Lanes, AGetWritesTheSlotIntoTheClientsBuffer) {
  auto lane = connect();
  ASSERT_TRUE(lane);
  std::vector<uint8_t> page = pattern(kPage, 7);
  std::copy(page.begin(), page.end(), arena.begin() + 3 * kPage);
  EXPECT_EQ(get(describe(*lane, kPage, kPage), 3 * kPage, kPage), 0);
  EXPECT_TRUE(std::equal(page.begin(), page.end(), buf.begin() + kPage));
  EXPECT_EQ(mover->reply_flags(), 0u);
  EXPECT_EQ(node->counters().bytes_written.load(), kPage);
}

TEST_F(Lanes, APutReadsTheClientsBufferIntoTheSlot) {
  auto lane = connect();
  ASSERT_TRUE(lane);
  std::vector<uint8_t> page = pattern(kPage, 9);
  std::copy(page.begin(), page.end(), buf.begin());
  RdmaDescs d = describe(*lane, 0, kPage);
  std::string err;
  ASSERT_TRUE(mover->bind(d, 1, true, &err)) << err;
  mover->put_value(0, arena.data() + 5 * kPage, kPage);
  EXPECT_EQ(mover->move(Clock::now() + 5s, -1), 0);
  EXPECT_EQ(mover->failure(0), 0);
  EXPECT_TRUE(std::equal(page.begin(), page.end(), arena.begin() + 5 * kPage));
  EXPECT_EQ(node->counters().bytes_read.load(), kPage);
}

TEST_F(Lanes, ADescriptorOutsideTheAnnouncedRegionsIsRefusedBeforePosting) {
  auto lane = connect();
  ASSERT_TRUE(lane);
  RdmaDescs d = describe(*lane, 0, kPage);
  d.segs[0].addr = reinterpret_cast<uint64_t>(arena.data());  // the node's own memory
  uint64_t before = rdma::fake::counters().wrs_executed;
  EXPECT_EQ(get(d, 0, kPage), status_code(Status::kInvalidParams));
  EXPECT_EQ(rdma::fake::counters().wrs_executed, before);
  EXPECT_EQ(node->counters().refused_descriptors.load(), 1u);
  RdmaDescs k = describe(*lane, 0, kPage);
  k.segs[0].rkey ^= 1;  // the right range with another key
  EXPECT_EQ(get(k, 0, kPage), status_code(Status::kInvalidParams));
}

TEST_F(Lanes, AnotherIncarnationOfTheNodeIsRefused) {
  auto lane = connect();
  ASSERT_TRUE(lane);
  RdmaDescs d = describe(*lane, 0, kPage);
  d.node_instance = kInstance + 1;  // what a client that knew an earlier run would send
  std::string err;
  EXPECT_FALSE(node->find(d, &err));
  EXPECT_NE(err.find("restarted"), std::string::npos) << err;
  proto::RdmaConnect c;
  c.client = 9, c.node_instance = kInstance + 1;
  proto::RdmaConnectReply rep;
  EXPECT_EQ(node->connect(c, &rep, &err), proto::kErrRdmaLane);
  EXPECT_EQ(node->counters().stale_lanes.load(), 2u);
}

TEST_F(Lanes, AFailedCompletionBreaksTheLaneUntilItIsConnectedAgain) {
  auto lane = connect();
  ASSERT_TRUE(lane);
  RdmaDescs d = describe(*lane, 0, kPage);
  rdma::fake::inject(rdma::fake::FaultKind::kRemoteAccess, 1);
  EXPECT_EQ(get(d, 0, kPage), status_code(Status::kNotFound));  // a miss, never garbage
  EXPECT_EQ(mover->reply_flags(), proto::kFlagLaneDown);
  std::string err;
  EXPECT_FALSE(node->find(d, &err));  // broken until the client connects it again
  client->lane_failed(*lane, "the node's queue pair failed");
  std::shared_ptr<ClientLane> pending;
  EXPECT_FALSE(client->pick("b@host:1", &pending));  // backing off: TCP meanwhile
  std::this_thread::sleep_for(250ms);
  auto again = connect();
  ASSERT_TRUE(again);
  EXPECT_EQ(node->counters().reconnects.load(), 1u);
  std::vector<uint8_t> page = pattern(kPage, 3);
  std::copy(page.begin(), page.end(), arena.begin());
  EXPECT_EQ(get(describe(*again, 0, kPage), 0, kPage), 0);
  EXPECT_TRUE(std::equal(page.begin(), page.end(), buf.begin()));
}

TEST_F(Lanes, RegisteringMoreMemoryOnlyUpdatesTheRegions) {
  auto lane = connect();
  ASSERT_TRUE(lane);
  std::vector<uint8_t> more(kPage, 0);
  std::string err;
  ASSERT_EQ(client->register_buffer(more.data(), more.size(), &err), 0) << err;
  auto same = connect();  // the regions changed: RDMA_CONNECT with the same endpoint
  ASSERT_EQ(same, lane);
  EXPECT_EQ(node->counters().region_updates.load(), 1u);
  EXPECT_EQ(node->counters().reconnects.load(), 0u);
  RdmaDescs d;
  client->fill_head(*lane, &d);
  SgList sg{Segment{more.data(), kPage}};
  ASSERT_TRUE(client->describe(*lane, sg, kPage, &d));
  std::copy_n(pattern(kPage, 5).begin(), kPage, arena.begin());
  EXPECT_EQ(get(d, 0, kPage), 0);
  EXPECT_EQ(more, pattern(kPage, 5));
  client->unregister_buffer(more.data());
}

}  // namespace
}  // namespace mch
