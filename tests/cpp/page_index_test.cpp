// PageIndex: open addressing with linear probing and backward-shift deletion.
#include "nvme/page_index.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <tuple>

#include "test_util.h"

namespace mch {
namespace {

// The initial table has 16 slots: the low 4 bits of `lo` pick the home slot, so these digests
// collide on purpose. `id` keeps them distinct.
KeyDigest at_home(uint64_t home, uint64_t id) { return KeyDigest{(id << 8) | home, id + 1}; }

PageLocation loc(uint32_t region, uint32_t block, uint32_t len = 4096) {
  PageLocation l;
  l.region = region;
  l.block = block;
  l.value_len = len;
  l.value_checksum = region * 1000003ull + block;
  return l;
}

TEST(PageIndex, FindsWhatWasPutAndNothingElse) {
  PageIndex idx;
  EXPECT_TRUE(idx.put(KeyDigest::of("a"), loc(1, 2)));
  EXPECT_TRUE(idx.put(KeyDigest::of("b"), loc(3, 4)));
  ASSERT_NE(idx.find(KeyDigest::of("a")), nullptr);
  EXPECT_EQ(idx.find(KeyDigest::of("a"))->block, 2u);
  EXPECT_EQ(idx.find(KeyDigest::of("b"))->region, 3u);
  EXPECT_EQ(idx.find(KeyDigest::of("c")), nullptr);
  EXPECT_EQ(idx.size(), 2u);
}

TEST(PageIndex, PutOfAnExistingKeyReplacesItsLocation) {
  PageIndex idx;
  KeyDigest d = KeyDigest::of("k");
  EXPECT_TRUE(idx.put(d, loc(1, 1)));
  EXPECT_FALSE(idx.put(d, loc(7, 9)));
  EXPECT_EQ(idx.size(), 1u);
  EXPECT_EQ(idx.find(d)->region, 7u);
  EXPECT_EQ(idx.find(d)->block, 9u);
}

TEST(PageIndex, FindReturnsAWritableSlot) {
  PageIndex idx;
  KeyDigest d = KeyDigest::of("k");
  idx.put(d, loc(1, 1));
  idx.find(d)->flags |= PageIndex::kHit;
  EXPECT_EQ(idx.find(d)->flags, static_cast<uint32_t>(PageIndex::kHit));
}

TEST(PageIndex, EraseRemovesOnlyTheKeyAndReportsMisses) {
  PageIndex idx;
  idx.put(KeyDigest::of("a"), loc(1, 1));
  idx.put(KeyDigest::of("b"), loc(2, 2));
  EXPECT_TRUE(idx.erase(KeyDigest::of("a")));
  EXPECT_FALSE(idx.erase(KeyDigest::of("a")));
  EXPECT_FALSE(idx.erase(KeyDigest::of("never")));
  EXPECT_EQ(idx.find(KeyDigest::of("a")), nullptr);
  EXPECT_NE(idx.find(KeyDigest::of("b")), nullptr);
  EXPECT_EQ(idx.size(), 1u);
}

TEST(PageIndex, ErasingTheHeadOfAProbeRunKeepsTheRestFindable) {
  PageIndex idx;
  for (uint64_t i = 0; i < 5; i++) idx.put(at_home(3, i), loc(0, static_cast<uint32_t>(i)));
  ASSERT_TRUE(idx.erase(at_home(3, 0)));
  for (uint64_t i = 1; i < 5; i++) {
    ASSERT_NE(idx.find(at_home(3, i)), nullptr) << i;
    EXPECT_EQ(idx.find(at_home(3, i))->block, i);
  }
  // The run shifted back: a new key with the same home takes the last slot, not a hole.
  EXPECT_TRUE(idx.put(at_home(3, 99), loc(0, 99)));
  EXPECT_EQ(idx.size(), 5u);
}

TEST(PageIndex, BackwardShiftLeavesKeysThatAreAtTheirHomeInPlace) {
  PageIndex idx;
  // Slots 4, 5 hold two keys of home 4; slot 6 holds a key of home 6 (at home, must not move
  // into the hole left by erasing the first); slot 7 holds a third key of home 4.
  idx.put(at_home(4, 1), loc(0, 1));
  idx.put(at_home(4, 2), loc(0, 2));
  idx.put(at_home(6, 3), loc(0, 3));
  idx.put(at_home(4, 4), loc(0, 4));
  ASSERT_TRUE(idx.erase(at_home(4, 1)));
  for (uint64_t id : {2, 4}) EXPECT_NE(idx.find(at_home(4, id)), nullptr) << id;
  EXPECT_NE(idx.find(at_home(6, 3)), nullptr);
  ASSERT_TRUE(idx.erase(at_home(6, 3)));
  EXPECT_NE(idx.find(at_home(4, 2)), nullptr);
  EXPECT_NE(idx.find(at_home(4, 4)), nullptr);
}

TEST(PageIndex, BackwardShiftWorksAcrossTheEndOfTheTable) {
  PageIndex idx;
  // Homes 14 and 15 overflow into slots 0, 1, 2; a key of home 0 lands after them.
  for (uint64_t i = 0; i < 3; i++) idx.put(at_home(14, i), loc(14, static_cast<uint32_t>(i)));
  for (uint64_t i = 10; i < 12; i++) idx.put(at_home(15, i), loc(15, static_cast<uint32_t>(i)));
  idx.put(at_home(0, 20), loc(0, 20));
  ASSERT_EQ(idx.size(), 6u);
  ASSERT_TRUE(idx.erase(at_home(14, 0)));
  ASSERT_TRUE(idx.erase(at_home(15, 10)));
  for (uint64_t i : {1, 2}) EXPECT_NE(idx.find(at_home(14, i)), nullptr) << i;
  EXPECT_NE(idx.find(at_home(15, 11)), nullptr);
  EXPECT_NE(idx.find(at_home(0, 20)), nullptr);
  EXPECT_EQ(idx.size(), 4u);
}

TEST(PageIndex, GrowsBeforeItIsThreeQuartersFull) {
  PageIndex idx;
  size_t initial = idx.memory_bytes();
  const uint64_t n = 20000;
  for (uint64_t i = 0; i < n; i++) ASSERT_TRUE(idx.put(KeyDigest::of(testing::key_of(i)), loc(1, static_cast<uint32_t>(i))));
  EXPECT_EQ(idx.size(), n);
  EXPECT_GT(idx.memory_bytes(), initial);
  size_t slots = idx.memory_bytes() / 40;
  EXPECT_LE(idx.size() * 4, slots * 3) << "load factor above 0.75";
  for (uint64_t i = 0; i < n; i++) {
    PageLocation* l = idx.find(KeyDigest::of(testing::key_of(i)));
    ASSERT_NE(l, nullptr) << i;
    ASSERT_EQ(l->block, i);
  }
}

TEST(PageIndex, ClearEmptiesTheTable) {
  PageIndex idx;
  for (uint64_t i = 0; i < 1000; i++) idx.put(KeyDigest::of(testing::key_of(i)), loc(1, 1));
  idx.clear();
  EXPECT_EQ(idx.size(), 0u);
  EXPECT_GE(idx.memory_bytes(), 16u * 40) << "memory_bytes counts what the table holds (clear keeps its capacity)";
  EXPECT_EQ(idx.find(KeyDigest::of(testing::key_of(5))), nullptr);
  EXPECT_TRUE(idx.put(KeyDigest::of(testing::key_of(5)), loc(2, 2)));
}

TEST(PageIndex, KeysInRegionListsExactlyThatRegionsPages) {
  PageIndex idx;
  for (uint64_t i = 0; i < 300; i++) idx.put(KeyDigest::of(testing::key_of(i)), loc(static_cast<uint32_t>(i % 3), 0));
  std::vector<KeyDigest> r1 = idx.keys_in_region(1);
  EXPECT_EQ(r1.size(), 100u);
  for (const KeyDigest& d : r1) EXPECT_EQ(idx.find(d)->region, 1u);
  EXPECT_TRUE(idx.keys_in_region(7).empty());
}

// Random puts and erases on few home slots (long runs, wrap-around, many shifts), checked
// against std::map after every step.
TEST(PageIndex, MatchesAReferenceMapUnderRandomPutsAndErases) {
  std::mt19937_64 rng(testing::test_seed());
  PageIndex idx;
  std::map<std::pair<uint64_t, uint64_t>, uint32_t> ref;
  for (int step = 0; step < 20000; step++) {
    uint64_t id = rng() % 400;
    uint64_t home = (id * 7) % 5 + 13;  // homes 13..17: runs wrap in the 16-slot table
    KeyDigest d{(id << 8) | (home & 0xff), id + 1};
    if (rng() % 3 == 0) {
      bool had = ref.erase({d.lo, d.hi}) > 0;
      ASSERT_EQ(idx.erase(d), had) << "step " << step;
    } else {
      uint32_t block = static_cast<uint32_t>(rng());
      bool fresh = ref.emplace(std::make_pair(d.lo, d.hi), block).second;
      if (!fresh) ref[{d.lo, d.hi}] = block;
      ASSERT_EQ(idx.put(d, loc(0, block)), fresh) << "step " << step;
    }
    ASSERT_EQ(idx.size(), ref.size());
    if (step % 97 == 0) {
      for (const auto& [k, block] : ref) {
        PageLocation* l = idx.find(KeyDigest{k.first, k.second});
        ASSERT_NE(l, nullptr) << "step " << step;
        ASSERT_EQ(l->block, block);
      }
    }
  }
}

}  // namespace
}  // namespace mch
