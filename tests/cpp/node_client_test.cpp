// NodeClient against a real node in this process (TieredStore + NodeServer on a Unix socket):
// the zero-copy batch calls, and what the client does when the node is gone or lies.
#include "node/node_client.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/status.h"
#include "node_test_util.h"

namespace mch {
namespace {

using namespace testing::codes;

struct Values {
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<SgList> sg;
};

Values values_for(const std::vector<std::string>& keys, size_t len) {
  Values v;
  for (const std::string& k : keys) v.bytes.push_back(testing::pattern(k, len));
  for (auto& b : v.bytes) v.sg.push_back({Segment{b.data(), b.size()}});
  return v;
}

TEST(NodeClient, PutGetExistsRemoveRoundTrip) {
  testing::TestNode node;
  NodeClient client(node.path(), 2000);
  ASSERT_TRUE(client.healthy()) << client.last_error();
  std::vector<std::string> keys = {"c-0", "c-1", "c-2"};
  Values v = values_for(keys, 20000);
  std::vector<int32_t> put(3, 99);
  client.batch_put(keys, v.sg, {1, 2, 3}, put.data());
  EXPECT_EQ(put, (std::vector<int32_t>{kOk, kOk, kOk}));

  std::vector<std::vector<uint8_t>> out(4, std::vector<uint8_t>(20000));
  std::vector<SgList> sg;
  for (auto& b : out) sg.push_back({Segment{b.data(), b.size()}});
  std::vector<int64_t> got(4, 99);
  client.batch_get({"c-0", "c-1", "c-2", "absent"}, sg, got.data());
  EXPECT_EQ(got, (std::vector<int64_t>{20000, 20000, 20000, kNotFound}));
  for (int i = 0; i < 3; i++) EXPECT_TRUE(out[i] == v.bytes[i]) << i;

  std::vector<int32_t> ex(2, 99);
  client.batch_exists({"c-1", "absent"}, ex.data());
  EXPECT_EQ(ex, (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(client.value_size("c-2"), 20000);
  EXPECT_EQ(client.remove("c-2"), kOk);
  EXPECT_EQ(client.value_size("c-2"), kNotFound);
  EXPECT_TRUE(client.ping());
  std::string json;
  EXPECT_TRUE(client.stats_json(&json));
  EXPECT_NE(json.find("\"node\""), std::string::npos);
}

TEST(NodeClient, ABufferTooSmallIsReportedAndTheValueKept) {
  testing::TestNode node;
  NodeClient client(node.path(), 2000);
  Values v = values_for({"big"}, 8192);
  int32_t put = 99;
  client.batch_put({"big"}, v.sg, {}, &put);
  ASSERT_EQ(put, kOk);
  std::vector<uint8_t> small(4096);
  int64_t got = 99;
  client.batch_get({"big"}, {{Segment{small.data(), small.size()}}}, &got);
  EXPECT_EQ(got, kBufferTooSmall);
  EXPECT_EQ(client.value_size("big"), 8192);
}

TEST(NodeClient, WithNoNodeReadsMissAndWritesSayUnavailable) {
  testing::TempDir dir;
  NodeClient client(dir.file("nobody.sock"), 200);
  EXPECT_FALSE(client.healthy());
  EXPECT_FALSE(client.last_error().empty());
  Values v = values_for({"k"}, 100);
  int32_t put = 99;
  client.batch_put({"k"}, v.sg, {}, &put);
  EXPECT_EQ(put, kNodeUnavailable);
  int64_t got = 99;
  client.batch_get({"k"}, v.sg, &got);
  EXPECT_EQ(got, kNotFound);
  int32_t ex = 99;
  client.batch_exists({"k"}, &ex);
  EXPECT_EQ(ex, 0);
}

TEST(NodeClient, CallsAfterCloseReturnClosed) {
  testing::TestNode node;
  NodeClient client(node.path(), 2000);
  client.close();
  Values v = values_for({"k"}, 100);
  int32_t put = 99;
  client.batch_put({"k"}, v.sg, {}, &put);
  EXPECT_EQ(put, kClosed);
  EXPECT_EQ(client.remove("k"), kClosed);
}

TEST(NodeClient, BadKeysAreRefusedBeforeTheyReachTheNode) {
  testing::TestNode node;
  NodeClient client(node.path(), 2000);
  std::vector<int32_t> ex(2, 99);
  client.batch_exists({"", std::string(proto::kMaxKeyLen + 1, 'k')}, ex.data());
  EXPECT_EQ(ex, (std::vector<int32_t>{kInvalidParams, kKeyTooLong}));
  EXPECT_EQ(node.by_op(proto::kExists), 0u);
}

// A node whose HELLO announces a larger arena than the memfd it passes. Mapping that size and
// touching a page past the memfd's end would kill the client with SIGBUS (found by the rogue
// node fuzz test); the client must refuse the node instead.
TEST(NodeClient, RefusesANodeWhoseArenaIsSmallerThanAnnounced) {
  testing::TempDir dir;
  testing::FakeNode liar(dir.file("liar.sock"), /*arena_bytes=*/1 << 20, [](const testing::Frame& req, auto* out) {
    proto::Writer w;
    w.begin(proto::kHello, req.h.request_id, proto::kFlagReply);
    proto::HelloReply hr;
    hr.version = proto::kVersion;
    hr.instance = 1;
    hr.arena_size = 64ull << 20;  // the memfd has 1 MiB
    proto::encode_hello_reply(w, hr);
    *out = testing::frame_bytes(w);
    return testing::FakeNode::Action::kSendWithArena;
  });
  NodeClient client(dir.file("liar.sock"), 2000);
  EXPECT_FALSE(client.healthy());
  EXPECT_EQ(client.last_error_code(), EPROTO) << client.last_error();
  EXPECT_EQ(liar.requests(), 1u);
  client.close();
}

}  // namespace
}  // namespace mch
