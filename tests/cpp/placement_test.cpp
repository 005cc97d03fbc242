// Weighted rendezvous placement (cluster/placement.h): ranking, order independence, the pinned
// function, weight shares, what adding / removing / re-weighting one member moves, batch routing
// and bad input. Keys are fixed (derived from a counter), so every figure is the same on every run.
#include "cluster/placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace mch::cluster {
namespace {

std::vector<std::string> keys_of(int n) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; i++) keys.push_back("key-" + std::to_string(i) + "-of-a-prefix-chain");
  return keys;
}

std::vector<PlacementMember> members() {
  return {{"node-a", 1.0}, {"node-b", 2.0}, {"node-c", 3.0}, {"node-d", 1.0}};
}

std::vector<std::string> holder_ids(const Placement& p, const std::string& key, uint32_t r) {
  std::vector<uint32_t> idx(p.holder_count(r));
  p.holders(key, r, idx.data());
  std::vector<std::string> out;
  for (uint32_t i : idx) out.push_back(p.id(i));
  return out;
}

// The first holder of each key, by id.
std::vector<std::string> primaries(const Placement& p, const std::vector<std::string>& keys) {
  std::vector<uint32_t> idx = p.batch_holders(keys, 1);
  std::vector<std::string> out;
  for (uint32_t i : idx) out.push_back(p.id(i));
  return out;
}

TEST(Placement, HoldersAreDistinctRankedAndCappedAtTheMemberCount) {
  Placement p(members());
  for (const auto& key : keys_of(200)) {
    auto all = holder_ids(p, key, 9);
    ASSERT_EQ(all.size(), 4u);
    EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), 4u);
    auto two = holder_ids(p, key, 2);
    EXPECT_EQ(two, std::vector<std::string>(all.begin(), all.begin() + 2));
  }
}

TEST(Placement, IsPinnedAndTheSameAsThePythonBindingSees) {
  // The same values tests/test_placement.py pins: placement is part of the cluster's contract.
  Placement p(members());
  EXPECT_EQ(holder_ids(p, "mooncake", 4), (std::vector<std::string>{"node-c", "node-d", "node-b", "node-a"}));
  EXPECT_EQ(holder_ids(p, std::string(64, '0'), 4),
            (std::vector<std::string>{"node-a", "node-c", "node-b", "node-d"}));
}

TEST(Placement, DoesNotDependOnMemberOrder) {
  auto m = members();
  std::vector<PlacementMember> reversed(m.rbegin(), m.rend());
  auto keys = keys_of(2000);
  EXPECT_EQ(primaries(Placement(m), keys), primaries(Placement(reversed), keys));
}

TEST(Placement, SharesFollowWeights) {
  Placement p({{"w1", 1.0}, {"w2", 2.0}, {"w3", 3.0}, {"w4", 4.0}});
  std::map<std::string, int> count;
  auto keys = keys_of(50000);
  for (const auto& id : primaries(p, keys)) count[id]++;
  for (auto [id, w] : std::map<std::string, double>{{"w1", 1}, {"w2", 2}, {"w3", 3}, {"w4", 4}}) {
    double expected = keys.size() * w / 10.0;
    EXPECT_NEAR(count[id], expected, 0.05 * expected) << id;
  }
}

TEST(Placement, AddingAMemberMovesKeysOnlyToItAndAboutItsShare) {
  auto before = members();
  auto after = before;
  after.push_back({"node-new", 3.0});  // its ideal share: 3 / 10
  auto keys = keys_of(50000);
  auto old_holders = primaries(Placement(before), keys), new_holders = primaries(Placement(after), keys);
  int moved = 0;
  for (size_t k = 0; k < keys.size(); k++) {
    if (old_holders[k] == new_holders[k]) continue;
    moved++;
    EXPECT_EQ(new_holders[k], "node-new");
  }
  EXPECT_LE(moved, 1.2 * 0.3 * keys.size());
  EXPECT_GE(moved, 0.8 * 0.3 * keys.size());
}

TEST(Placement, RemovingOrLighteningAMemberMovesOnlyItsKeys) {
  auto before = members();
  auto lighter = before;
  lighter[2].weight = 1.0;  // node-c: 3 -> 1
  std::vector<PlacementMember> fewer(before.begin() + 1, before.end());  // without node-a
  auto keys = keys_of(50000);
  auto old_holders = primaries(Placement(before), keys);
  auto light_holders = primaries(Placement(lighter), keys), fewer_holders = primaries(Placement(fewer), keys);
  for (size_t k = 0; k < keys.size(); k++) {
    if (light_holders[k] != old_holders[k]) {
      EXPECT_EQ(old_holders[k], "node-c");
    }
    if (fewer_holders[k] != old_holders[k]) {
      EXPECT_EQ(old_holders[k], "node-a");
    }
  }
}

TEST(Placement, RouteAllSendsEachKeyToEveryHolder) {
  Placement p(members());
  auto keys = keys_of(128);
  auto groups = p.route(keys, 2, Fanout::kAll);
  auto holders = p.batch_holders(keys, 2);
  size_t total = 0;
  for (uint32_t m = 0; m < p.size(); m++) {
    EXPECT_TRUE(std::is_sorted(groups[m].begin(), groups[m].end()));
    for (uint32_t k : groups[m]) EXPECT_TRUE(holders[2 * k] == m || holders[2 * k + 1] == m);
    total += groups[m].size();
  }
  EXPECT_EQ(total, 2 * keys.size());
}

TEST(Placement, RouteOnePicksTheCheapestLiveHolderAndDropsKeysWithNone) {
  Placement p(members());
  auto keys = keys_of(256);
  const double down = std::numeric_limits<double>::infinity();
  std::vector<double> cost(p.size(), 1.0);
  cost[p.index_of("node-a")] = 0.0;  // local
  cost[p.index_of("node-b")] = down;
  cost[p.index_of("node-c")] = down;
  auto groups = p.route(keys, 2, Fanout::kOne, cost);
  EXPECT_TRUE(groups[p.index_of("node-b")].empty());
  EXPECT_TRUE(groups[p.index_of("node-c")].empty());
  auto holders = p.batch_holders(keys, 2);
  size_t routed = groups[p.index_of("node-a")].size() + groups[p.index_of("node-d")].size();
  size_t with_live_holder = 0;
  for (size_t k = 0; k < keys.size(); k++)
    with_live_holder += (cost[holders[2 * k]] != down || cost[holders[2 * k + 1]] != down);
  EXPECT_EQ(routed, with_live_holder);
  EXPECT_LT(routed, keys.size());
  for (uint32_t k : groups[p.index_of("node-d")])  // d only when a is not a holder of k
    EXPECT_TRUE(holders[2 * k] != uint32_t(p.index_of("node-a")) && holders[2 * k + 1] != uint32_t(p.index_of("node-a")));
}

TEST(Placement, RefusesBadInput) {
  EXPECT_THROW(Placement({{"a", 1.0}, {"a", 2.0}}), std::invalid_argument);
  EXPECT_THROW(Placement({{"", 1.0}}), std::invalid_argument);
  for (double w : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e-320})
    EXPECT_THROW(Placement({{"a", w}}), std::invalid_argument) << w;
  Placement p(members());
  uint32_t out[4];
  EXPECT_THROW(p.holders("k", 0, out), std::invalid_argument);
  EXPECT_THROW(p.route({"k"}, 1, Fanout::kOne, {1.0}), std::invalid_argument);
  Placement empty({});
  EXPECT_EQ(empty.holders("k", 3, out), 0u);
  EXPECT_TRUE(empty.route({"k"}, 1, Fanout::kAll).empty());
}

}  // namespace
}  // namespace mch::cluster
