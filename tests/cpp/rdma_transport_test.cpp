// The RDMA transport (transport/rdma/) against the FAKE verbs provider: no RDMA NIC exists on
// these machines, so the fake (fake_verbs.h) stands in for the NIC and moves bytes with memcpy
// within this process. Covered: device discovery, memory registration split at max_mr_size,
// the QP state machine, RDMA WRITE and READ transfers, the send window and selective signalling,
// the completion thread parking when idle, every completion error kind (remote access, local
// protection, retry exceeded, remote operation, flush), reconnecting after an error, and a hung
// transfer whose QP is given up before its memory is released.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "common/error.h"
#include "transport/rdma/fake_verbs.h"
#include "transport/rdma/queue_pair.h"
#include "transport/rdma/rdma_device.h"

namespace mch::rdma {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const VerbsApi& api() { return *fake_verbs_api(); }

std::unique_ptr<RdmaDevice> open(const char* name, bool poller = true) {
  DeviceOptions o;
  o.name = name;
  o.completion_thread = poller;
  return std::make_unique<RdmaDevice>(api(), o);
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 9));
  return v;
}

// A requester (it posts) and a responder (its memory is read and written), connected.
struct Link {
  std::unique_ptr<RdmaDevice> req_dev = open("mch_fake0");
  std::unique_ptr<RdmaDevice> resp_dev = open("mch_fake1", false);
  std::unique_ptr<QueuePair> req, resp;
  explicit Link(QpOptions o = {}) {
    req = std::make_unique<QueuePair>(*req_dev, o);
    QpOptions r;
    r.access = kRemoteRead | kRemoteWrite;
    resp = std::make_unique<QueuePair>(*resp_dev, r);
    connect();
  }
  void connect() {
    std::string err;
    ASSERT_EQ(req->connect(resp->local(), &err), 0) << err;
    ASSERT_EQ(resp->connect(req->local(), &err), 0) << err;
  }
  void reconnect() {
    std::string err;
    ASSERT_EQ(req->reset(&err), 0) << err;
    ASSERT_EQ(resp->reset(&err), 0) << err;
    connect();
  }
};

// Registers `buf` on dev and returns its pieces.
std::vector<MemoryPiece> reg(RdmaDevice& dev, std::vector<uint8_t>& buf) {
  std::string err;
  EXPECT_EQ(dev.memory().add(buf.data(), buf.size(), kLocalWrite | kRemoteRead | kRemoteWrite, &err), 0) << err;
  std::vector<MemoryPiece> p;
  EXPECT_TRUE(dev.memory().lookup(reinterpret_cast<uint64_t>(buf.data()), buf.size(), &p));
  return p;
}

// A transfer of `items` values of `len` bytes each: local buf[i*len..] <-> remote rbuf[i*len..].
void build(Transfer& t, WrOpcode op, RdmaDevice& ldev, std::vector<uint8_t>& local, RdmaDevice& rdev,
           std::vector<uint8_t>& remote, uint32_t items, size_t len) {
  t.clear(op, items);
  for (uint32_t i = 0; i < items; i++) {
    std::vector<MemoryPiece> lp, rp;
    ASSERT_TRUE(ldev.memory().lookup(reinterpret_cast<uint64_t>(local.data() + i * len), len, &lp));
    ASSERT_TRUE(rdev.memory().lookup(reinterpret_cast<uint64_t>(remote.data() + i * len), len, &rp));
    ASSERT_EQ(rp.size(), 1u);
    std::vector<Sge> sg;
    for (const MemoryPiece& p : lp) sg.push_back(Sge{p.addr, static_cast<uint32_t>(p.len), p.lkey});
    t.add(i, sg.data(), static_cast<int>(sg.size()), rp[0].addr, rp[0].rkey);
  }
}

TEST(RdmaFake, DescribesItsDevicesAsActiveRoCEPorts) {
  std::vector<DeviceSummary> d;
  std::string err;
  ASSERT_TRUE(describe_devices(api(), &d, &err)) << err;
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].name, "mch_fake0");
  EXPECT_TRUE(d[0].usable());
  ASSERT_EQ(d[0].ports.size(), 1u);
  EXPECT_EQ(d[0].ports[0].link_layer, LinkLayer::kEthernet);
  EXPECT_EQ(d[0].ports[0].mtu, 4096u);
  EXPECT_EQ(d[0].ports[0].gids.size(), 4u);
  EXPECT_TRUE(api().fake);
  EXPECT_NE(std::string(api().name).find("fake"), std::string::npos);
}

TEST(RdmaDevice, RefusesAnUnknownDeviceAndAMissingGidIndex) {
  DeviceOptions o;
  o.name = "mlx5_9";
  EXPECT_THROW(RdmaDevice(api(), o), EngineError);
  o.name = "mch_fake0";
  o.gid_index = 7;
  try {
    RdmaDevice d(api(), o);
    ADD_FAILURE() << "no error for GID index 7";
  } catch (const EngineError& e) {
    EXPECT_NE(std::string(e.what()).find("gid_index"), std::string::npos) << e.what();
  }
}

TEST(MemoryMap, SplitsRegistrationsAtMaxMrSizeAndLooksUpAcrossThem) {
  fake::set_max_mr_size(1 << 20);
  auto dev = open("mch_fake0", false);
  fake::set_max_mr_size(0);
  std::vector<uint8_t> buf(3 * (1 << 20) + 4096);
  std::string err;
  ASSERT_EQ(dev->memory().add(buf.data(), buf.size(), kLocalWrite, &err), 0) << err;
  EXPECT_EQ(dev->memory().region_count(), 4u);
  EXPECT_EQ(dev->memory().bytes(), buf.size());
  std::vector<MemoryPiece> p;
  uint64_t a = reinterpret_cast<uint64_t>(buf.data());
  ASSERT_TRUE(dev->memory().lookup(a + (1 << 20) - 100, 200, &p));  // crosses a boundary
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].len, 100u);
  EXPECT_EQ(p[1].addr, a + (1 << 20));
  EXPECT_NE(p[0].lkey, p[1].lkey);
  p.clear();
  EXPECT_FALSE(dev->memory().lookup(a + buf.size() - 10, 20, &p));  // runs past the end
  EXPECT_FALSE(dev->memory().lookup(a - 10, 5, &p));
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(dev->memory().add(buf.data() + 10, 10, kLocalWrite, &err), EEXIST);
  EXPECT_TRUE(dev->memory().remove(buf.data()));
  EXPECT_EQ(dev->memory().region_count(), 0u);
  EXPECT_FALSE(dev->memory().remove(buf.data()));
}

TEST(QueuePair, RefusesToPostBeforeItIsConnected) {
  auto dev = open("mch_fake0");
  QueuePair qp(*dev, QpOptions{});
  EXPECT_FALSE(qp.connected());
  std::vector<uint8_t> a(64);
  reg(*dev, a);
  std::vector<MemoryPiece> p;
  dev->memory().lookup(reinterpret_cast<uint64_t>(a.data()), 64, &p);
  Sge s{p[0].addr, 64, p[0].lkey};
  Transfer t;
  t.clear(WrOpcode::kRdmaWrite, 1);
  t.add(0, &s, 1, p[0].addr, p[0].rkey);
  EXPECT_EQ(qp.run(t, Clock::now() + 1s), 0);
  EXPECT_TRUE(t.item_failed(0));  // nothing was posted
}

TEST(QueuePair, WritesAndReadsMoveExactlyTheBytesNamed) {
  Link l;
  const size_t len = 100000, n = 40;
  std::vector<uint8_t> local = pattern(len * n, 7), remote(len * n + 64, 0xee);
  reg(*l.req_dev, local);
  reg(*l.resp_dev, remote);
  Transfer t;
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, n, len);
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  for (uint32_t i = 0; i < n; i++) EXPECT_FALSE(t.item_failed(i));
  EXPECT_EQ(memcmp(local.data(), remote.data(), len * n), 0);
  EXPECT_EQ(remote[len * n], 0xee);  // not a byte more
  std::vector<uint8_t> back(len * n, 0);
  std::vector<uint8_t> fresh = pattern(len * n, 99);
  memcpy(remote.data(), fresh.data(), fresh.size());
  reg(*l.req_dev, back);
  build(t, WrOpcode::kRdmaRead, *l.req_dev, back, *l.resp_dev, remote, n, len);
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  EXPECT_EQ(memcmp(back.data(), fresh.data(), fresh.size()), 0);
}

TEST(QueuePair, LocalPiecesThatCrossRegionsGoInOneWrWithSeveralSges) {
  fake::set_max_mr_size(64 * 1024);
  Link l;
  fake::set_max_mr_size(0);
  std::vector<uint8_t> local = pattern(256 * 1024, 3), remote(256 * 1024, 0);
  reg(*l.req_dev, local);
  std::string err;
  ASSERT_EQ(l.resp_dev->memory().add(remote.data(), remote.size(), kRemoteWrite | kLocalWrite, &err), 0);
  Transfer t;
  t.clear(WrOpcode::kRdmaWrite, 1);
  std::vector<MemoryPiece> lp, rp;
  ASSERT_TRUE(l.req_dev->memory().lookup(reinterpret_cast<uint64_t>(local.data()) + 1000, 100000, &lp));
  ASSERT_GE(lp.size(), 2u);
  ASSERT_TRUE(l.resp_dev->memory().lookup(reinterpret_cast<uint64_t>(remote.data()), 60000, &rp));
  std::vector<Sge> sg;
  for (const MemoryPiece& p : lp) sg.push_back(Sge{p.addr, static_cast<uint32_t>(p.len), p.lkey});
  // One remote region takes the first 60000 bytes, as a node splits a value over a client's MRs.
  uint64_t take = 60000, off = 0;
  std::vector<Sge> first;
  for (Sge s : sg) {
    if (off >= take) break;
    s.length = static_cast<uint32_t>(std::min<uint64_t>(s.length, take - off));
    first.push_back(s);
    off += s.length;
  }
  t.add(0, first.data(), static_cast<int>(first.size()), rp[0].addr, rp[0].rkey);
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  EXPECT_FALSE(t.item_failed(0));
  EXPECT_EQ(memcmp(remote.data(), local.data() + 1000, 60000), 0);
}

TEST(QueuePair, KeepsAtMostWindowWorkRequestsOutstandingAndSignalsSelectively) {
  QpOptions o;
  o.window = 8;
  o.signal_every = 4;
  Link l(o);
  const size_t len = 4096, n = 200;
  std::vector<uint8_t> local = pattern(len * n, 1), remote(len * n, 0);
  reg(*l.req_dev, local);
  reg(*l.resp_dev, remote);
  fake::reset_counters();
  fake::set_wr_delay_us(50);  // the window fills up
  Transfer t;
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, n, len);
  ASSERT_EQ(l.req->run(t, Clock::now() + 20s), 0);
  fake::set_wr_delay_us(0);
  fake::Counters c = fake::counters();
  EXPECT_LE(c.max_sq_occupancy, 8u);
  EXPECT_EQ(c.post_refused, 0u);  // the send queue was never overrun
  EXPECT_EQ(c.wrs_executed, n);
  EXPECT_LE(c.cqes, n / 4 + n / 8 + 2);  // signalled: every 4th and each piece's last, not every WR
  EXPECT_GE(c.cqes, n / 8);
  EXPECT_EQ(memcmp(local.data(), remote.data(), local.size()), 0);
}

TEST(QueuePair, ManyThreadsShareOneQueuePair) {
  QpOptions o;
  o.window = 16;
  Link l(o);
  const size_t len = 8192, n = 32;
  const int threads = 4;
  std::vector<std::vector<uint8_t>> local, remote;
  for (int k = 0; k < threads; k++) {
    local.push_back(pattern(len * n, static_cast<uint8_t>(k)));
    remote.emplace_back(len * n, 0);
    reg(*l.req_dev, local.back());
    reg(*l.resp_dev, remote.back());
  }
  std::vector<std::thread> th;
  std::vector<int> rc(threads, -1);
  for (int k = 0; k < threads; k++) {
    th.emplace_back([&, k] {
      Transfer t;
      for (int round = 0; round < 10; round++) {
        build(t, WrOpcode::kRdmaWrite, *l.req_dev, local[k], *l.resp_dev, remote[k], n, len);
        rc[k] = l.req->run(t, Clock::now() + 10s);
        for (uint32_t i = 0; i < n; i++)
          if (t.item_failed(i)) rc[k] = -2;
      }
    });
  }
  for (auto& t : th) t.join();
  for (int k = 0; k < threads; k++) {
    EXPECT_EQ(rc[k], 0);
    EXPECT_EQ(local[k], remote[k]);
  }
}

TEST(RdmaDevice, CompletionThreadSleepsWhenNothingMoves) {
  Link l;
  uint64_t before = l.req_dev->sleeps();
  std::this_thread::sleep_for(300ms);
  uint64_t during = l.req_dev->sleeps() - before;
  EXPECT_LE(during, 3u);  // parked on the completion channel (a 1 s timeout), not spinning
  std::vector<uint8_t> a = pattern(4096, 5), b(4096, 0);
  reg(*l.req_dev, a);
  reg(*l.resp_dev, b);
  Transfer t;
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, a, *l.resp_dev, b, 1, 4096);
  auto t0 = Clock::now();
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  EXPECT_LT(Clock::now() - t0, 500ms);  // the channel woke it at once
  EXPECT_EQ(a, b);
}

// ---- errors -------------------------------------------------------------------------------------

struct ErrorCase {
  const char* name;
  fake::FaultKind kind;
  WcStatus status;
};

class InjectedError : public ::testing::TestWithParam<ErrorCase> {};

// The 5th WR fails: items 0..3 moved, item 4 failed, items 5.. were flushed (failed too).
TEST_P(InjectedError, FailsOnlyTheItemsAtAndAfterTheFailedWr) {
  Link l;
  const size_t len = 1024, n = 10;
  std::vector<uint8_t> local = pattern(len * n, 9), remote(len * n, 0);
  reg(*l.req_dev, local);
  reg(*l.resp_dev, remote);
  fake::clear_faults();
  fake::reset_counters();
  fake::inject(GetParam().kind, 5, l.req->qpn());
  Transfer t;
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, n, len);
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  EXPECT_EQ(t.first_error(), GetParam().status);
  for (uint32_t i = 0; i < 4; i++) {
    EXPECT_FALSE(t.item_failed(i)) << i;
    EXPECT_EQ(memcmp(local.data() + i * len, remote.data() + i * len, len), 0);
  }
  for (uint32_t i = 4; i < n; i++) EXPECT_TRUE(t.item_failed(i)) << i;
  EXPECT_TRUE(l.req->broken());
  EXPECT_EQ(fake::qp_state(l.req->qpn()), QpState::kError);
  EXPECT_GE(fake::counters().flushed, 1u);
  // A transfer on the broken QP fails whole without posting.
  Transfer t2;
  build(t2, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, 2, len);
  ASSERT_EQ(l.req->run(t2, Clock::now() + 5s), 0);
  EXPECT_TRUE(t2.item_failed(0) && t2.item_failed(1));
  // Reset and reconnect: it works again.
  l.reconnect();
  std::fill(remote.begin(), remote.end(), 0);
  build(t2, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, n, len);
  ASSERT_EQ(l.req->run(t2, Clock::now() + 5s), 0);
  for (uint32_t i = 0; i < n; i++) EXPECT_FALSE(t2.item_failed(i));
  EXPECT_EQ(local, remote);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, InjectedError,
    ::testing::Values(ErrorCase{"RemoteAccess", fake::FaultKind::kRemoteAccess, WcStatus::kRemoteAccess},
                      ErrorCase{"RetryExceeded", fake::FaultKind::kRetryExceeded, WcStatus::kRetryExceeded},
                      ErrorCase{"LocalProtection", fake::FaultKind::kLocalProtection, WcStatus::kLocalProtection},
                      ErrorCase{"RemoteOperation", fake::FaultKind::kRemoteOperation, WcStatus::kRemoteOperation}),
    [](const ::testing::TestParamInfo<ErrorCase>& i) { return std::string(i.param.name); });

// RDMA WRITEs of all of `local` into the responder's `remote`: the first WR with its rkey XORed with
// `rkey_xor` (0: the right key),
// `more` further ones with the right key; run to completion.
void write_all(Link& l, std::vector<uint8_t>& local, std::vector<uint8_t>& remote, uint32_t rkey_xor, uint32_t more,
               Transfer& t) {
  reg(*l.req_dev, local);
  auto rp = reg(*l.resp_dev, remote);
  std::vector<MemoryPiece> lp;
  l.req_dev->memory().lookup(reinterpret_cast<uint64_t>(local.data()), local.size(), &lp);
  Sge s{lp[0].addr, static_cast<uint32_t>(local.size()), lp[0].lkey};
  t.clear(WrOpcode::kRdmaWrite, 1 + more);
  t.add(0, &s, 1, rp[0].addr, rp[0].rkey ^ rkey_xor);
  for (uint32_t i = 1; i <= more; i++) t.add(i, &s, 1, rp[0].addr, rp[0].rkey);
  EXPECT_EQ(l.req->run(t, Clock::now() + 5s), 0);
}

TEST(QueuePair, AWrongRkeyIsARemoteAccessError) {
  Link l;
  std::vector<uint8_t> local = pattern(4096, 2), remote(4096, 0);
  Transfer t;
  write_all(l, local, remote, 0x5a5a, 1, t);  // wrong key, then a right one
  EXPECT_EQ(t.first_error(), WcStatus::kRemoteAccess);
  EXPECT_TRUE(t.item_failed(0));
  EXPECT_TRUE(t.item_failed(1));  // flushed behind it
  EXPECT_EQ(remote, std::vector<uint8_t>(4096, 0));
}

TEST(QueuePair, ARangePastTheRemoteRegionIsARemoteAccessError) {
  Link l;
  std::vector<uint8_t> local = pattern(8192, 2), remote(4096, 0);
  Transfer t;
  write_all(l, local, remote, 0, 0, t);
  EXPECT_EQ(t.first_error(), WcStatus::kRemoteAccess);
  EXPECT_EQ(remote, std::vector<uint8_t>(4096, 0));
}

// One 4 KiB WRITE to a responder whose QP `spoil` changed first; the remote bytes stay zero.
template <class Spoil>
void write_to_spoilt_responder(Spoil spoil, Transfer& t) {
  Link l;
  std::vector<uint8_t> local = pattern(4096, 2), remote(4096, 0);
  reg(*l.req_dev, local);
  reg(*l.resp_dev, remote);
  spoil(*l.resp);
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, 1, 4096);
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  EXPECT_TRUE(t.item_failed(0));
  EXPECT_EQ(remote, std::vector<uint8_t>(4096, 0));
}

TEST(QueuePair, ARemoteQueuePairThatWasResetIsARetryExceededError) {
  Transfer t;
  write_to_spoilt_responder([](QueuePair& qp) {  // the peer restarted its side
    std::string err;
    ASSERT_EQ(qp.reset(&err), 0);
  }, t);
  EXPECT_EQ(t.first_error(), WcStatus::kRetryExceeded);
}

TEST(QueuePair, AResponderInErrorRefusesIncomingWrites) {
  Transfer t;
  // What a client does when it stops waiting for a reply.
  write_to_spoilt_responder([](QueuePair& qp) { qp.force_error(); }, t);
}

TEST(QueuePair, AHungTransferGivesTheQueuePairUpBeforeItReturns) {
  Link l;
  std::vector<uint8_t> local = pattern(4096 * 4, 2), remote(4096 * 4, 0);
  reg(*l.req_dev, local);
  reg(*l.resp_dev, remote);
  fake::clear_faults();
  fake::inject(fake::FaultKind::kStall, 2, l.req->qpn());
  Transfer t;
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, 4, 4096);
  auto t0 = Clock::now();
  EXPECT_EQ(l.req->run(t, Clock::now() + 200ms), ETIMEDOUT);
  EXPECT_LT(Clock::now() - t0, 200ms + QueuePair::kFlushWait + 1s);
  for (uint32_t i = 0; i < 4; i++) EXPECT_TRUE(t.item_failed(i));  // nothing is known to have moved
  EXPECT_EQ(t.first_error(), WcStatus::kOther);
  EXPECT_FALSE(l.req->connected());
  // The hung QP is gone; reset creates a new one that works.
  uint32_t old = l.req->qpn();
  l.reconnect();
  EXPECT_NE(l.req->qpn(), old);
  std::fill(remote.begin(), remote.end(), 0);
  build(t, WrOpcode::kRdmaWrite, *l.req_dev, local, *l.resp_dev, remote, 4, 4096);
  ASSERT_EQ(l.req->run(t, Clock::now() + 5s), 0);
  for (uint32_t i = 0; i < 4; i++) EXPECT_FALSE(t.item_failed(i));
  EXPECT_EQ(local, remote);
}

TEST(FakeVerbs, EnforcesTheQueuePairStateMachine) {
  auto dev = open("mch_fake0", false);
  QpCaps caps;
  caps.max_send_wr = 4;
  uint32_t qpn = 0;
  QueuePairHandle* h = api().create_qp(dev->pd(), dev->cq(), caps, &qpn);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(fake::qp_state(qpn), QpState::kReset);
  QpTransition t;
  t.to = QpState::kRtr;  // RESET -> RTR skips INIT
  EXPECT_EQ(api().modify_qp(h, t), EINVAL);
  t.to = QpState::kInit;
  ASSERT_EQ(api().modify_qp(h, t), 0);
  t.to = QpState::kRts;  // INIT -> RTS skips RTR
  EXPECT_EQ(api().modify_qp(h, t), EINVAL);
  SendWr wr;
  int bad = -1;
  EXPECT_EQ(api().post_send(h, &wr, 1, &bad), EINVAL);  // posting needs RTS
  EXPECT_EQ(bad, 0);
  t.to = QpState::kRtr;
  t.remote_gid = Gid{};  // names no process
  EXPECT_EQ(api().modify_qp(h, t), EINVAL);
  t.to = QpState::kError;
  EXPECT_EQ(api().modify_qp(h, t), 0);
  EXPECT_EQ(fake::qp_state(qpn), QpState::kError);
  EXPECT_EQ(api().destroy_qp(h), 0);
}

}  // namespace
}  // namespace mch::rdma
