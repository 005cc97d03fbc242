// DramArena (the shared memfd mapping) and DramTier (slab classes, index, eviction, pins).
#include "dram/dram_tier.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/error.h"
#include "test_util.h"

namespace mch {
namespace {

using namespace testing::codes;

constexpr uint64_t kMiB = 1ull << 20;

DramTier::Options small_tier(const std::string& eviction = "lru") {
  DramTier::Options o;
  o.capacity = 4 * kMiB;  // four 1 MiB slab pages
  o.slab_size = 1 * kMiB;
  o.eviction = eviction;
  o.hugepages = false;
  return o;
}

// reserve -> prepare -> copy -> publish, the way TieredStore stores a value. Returns the slot.
int64_t put(DramTier& t, const std::string& key, size_t len, std::vector<DramTier::Victim>* victims = nullptr,
            uint32_t depth = 0) {
  std::vector<DramTier::Victim> local;
  int64_t slot = t.reserve(len, victims ? victims : &local);
  if (slot < 0) return slot;
  uint32_t s = static_cast<uint32_t>(slot);
  t.prepare(s, key, KeyDigest::of(key), len, depth);
  std::vector<uint8_t> v = testing::pattern(key, len);
  memcpy(t.data(s), v.data(), len);
  t.publish(s);
  return slot;
}

bool holds_value(DramTier& t, const std::string& key, size_t len) {
  int64_t slot = t.find(KeyDigest::of(key));
  if (slot < 0) return false;
  std::vector<uint8_t> want = testing::pattern(key, len);
  return t.slot(static_cast<uint32_t>(slot)).len == len &&
         memcmp(t.data(static_cast<uint32_t>(slot)), want.data(), len) == 0;
}

TEST(DramArena, SizeIsRoundedUpToTwoMebibytesAndSharedThroughItsFd) {
  DramArena a(3 * kMiB + 1, /*try_hugepages=*/false);
  EXPECT_EQ(a.size(), 4 * kMiB);
  EXPECT_STREQ(a.page_kind(), "4k");
  ASSERT_GE(a.fd(), 0);
  a.base()[a.size() - 1] = 0x7e;
  // A second mapping of the memfd (what a client process does) sees the same bytes.
  void* p = mmap(nullptr, a.size(), PROT_READ, MAP_SHARED, a.fd(), 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_EQ(static_cast<uint8_t*>(p)[a.size() - 1], 0x7e);
  munmap(p, a.size());
}

TEST(DramArena, HugepageRequestFallsBackToAnyPageKind) {
  DramArena a(2 * kMiB, /*try_hugepages=*/true);
  std::string kind = a.page_kind();
  EXPECT_TRUE(kind == "hugetlb" || kind == "thp" || kind == "4k") << kind;
  memset(a.base(), 1, a.size());
}

TEST(DramArena, ZeroCapacityIsAnInvalidConfig) {
  testing::expect_engine_error([] { DramArena a(0, false); }, EngineError::kInvalid, "tiers.dram.capacity");
}

TEST(DramTier, BadOptionsNameTheFieldToChange) {
  DramTier::Options o = small_tier();
  o.slab_size = 5000;
  testing::expect_engine_error([&] { DramTier t(o); }, EngineError::kInvalid, "tiers.dram.slab_size");
  o = small_tier();
  o.slab_size = 8 * kMiB;
  EXPECT_THROW(DramTier t(o), EngineError);
  o = small_tier("mru");
  EXPECT_THROW(DramTier t(o), std::invalid_argument);
}

TEST(DramTier, PublishedValueIsFoundWithItsBytes) {
  DramTier t(small_tier());
  EXPECT_EQ(t.find(KeyDigest::of("a")), -1);
  int64_t slot = put(t, "a", 10000);
  ASSERT_GE(slot, 0);
  EXPECT_EQ(t.find(KeyDigest::of("a")), slot);
  EXPECT_TRUE(holds_value(t, "a", 10000));
  EXPECT_EQ(t.key_of(static_cast<uint32_t>(slot)), "a");
  EXPECT_GE(t.slot_size(static_cast<uint32_t>(slot)), 10000u);
  EXPECT_EQ(t.slot(static_cast<uint32_t>(slot)).state, DramTier::kReady);
  DramTier::Stats s = t.stats();
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.value_bytes, 10000u);
  EXPECT_EQ(s.size_classes, 1u);
  EXPECT_EQ(s.slab_pages, 4u);
  EXPECT_EQ(s.slab_pages_free, 3u);
}

TEST(DramTier, AReservedSlotIsInvisibleUntilPublished) {
  DramTier t(small_tier());
  std::vector<DramTier::Victim> v;
  int64_t slot = t.reserve(4096, &v);
  ASSERT_GE(slot, 0);
  EXPECT_EQ(t.slot(static_cast<uint32_t>(slot)).state, DramTier::kWriting);
  EXPECT_EQ(t.stats().entries, 0u);
  t.abort(static_cast<uint32_t>(slot));
  EXPECT_EQ(t.slot(static_cast<uint32_t>(slot)).state, DramTier::kFree);
  EXPECT_EQ(t.reserve(4096, &v), slot) << "an aborted slot is the next one handed out";
}

TEST(DramTier, PublishingAKeyAgainReplacesTheOlderEntry) {
  DramTier t(small_tier());
  int64_t first = put(t, "k", 4096);
  int64_t second = put(t, "k", 8192);
  ASSERT_NE(first, second);
  EXPECT_EQ(t.find(KeyDigest::of("k")), second);
  EXPECT_EQ(t.slot(static_cast<uint32_t>(first)).state, DramTier::kFree);
  EXPECT_EQ(t.stats().entries, 1u);
  EXPECT_EQ(t.stats().value_bytes, 8192u);
}

TEST(DramTier, ValueLargerThanASlabIsRefused) {
  DramTier t(small_tier());
  std::vector<DramTier::Victim> v;
  EXPECT_EQ(t.reserve(kMiB + 1, &v), kValueTooLarge);
  EXPECT_EQ(t.max_value(), kMiB);
  EXPECT_GE(put(t, "whole-slab", kMiB), 0);
}

TEST(DramTier, AFullClassEvictsItsLeastRecentlyUsedEntryAndKeepsItsBytesForDemotion) {
  DramTier t(small_tier());
  const size_t len = 512 * 1024;  // two per slab page: eight in the tier
  for (int i = 0; i < 8; i++) ASSERT_GE(put(t, testing::key_of(i), len), 0);
  t.touch(static_cast<uint32_t>(t.find(KeyDigest::of(testing::key_of(0)))));
  std::vector<DramTier::Victim> victims;
  int64_t slot = t.reserve(len, &victims);
  ASSERT_GE(slot, 0);
  ASSERT_EQ(victims.size(), 1u);
  EXPECT_EQ(victims[0].key, testing::key_of(1)) << "key 0 was touched; key 1 is the least recently used";
  EXPECT_EQ(victims[0].len, len);
  EXPECT_EQ(victims[0].copy.size(), 0u) << "same class: the bytes are still in the reserved slot";
  std::vector<uint8_t> want = testing::pattern(testing::key_of(1), len);
  EXPECT_EQ(memcmp(t.data(static_cast<uint32_t>(slot)), want.data(), len), 0);
  EXPECT_EQ(t.find(KeyDigest::of(testing::key_of(1))), -1);
  EXPECT_EQ(t.stats().evictions, 1u);
}

TEST(DramTier, APinnedEntryIsNeverEvicted) {
  DramTier t(small_tier());
  const size_t len = 512 * 1024;
  std::vector<uint32_t> slots;
  for (int i = 0; i < 8; i++) slots.push_back(static_cast<uint32_t>(put(t, testing::key_of(i), len)));
  for (uint32_t s : slots) t.pin(s);
  std::vector<DramTier::Victim> victims;
  EXPECT_EQ(t.reserve(len, &victims), kNoSpace);
  EXPECT_TRUE(victims.empty());
  t.unpin(slots[5]);
  ASSERT_EQ(t.reserve(len, &victims), slots[5]);
  EXPECT_EQ(victims.at(0).key, testing::key_of(5));
}

TEST(DramTier, ErasingAPinnedEntryFreesItsSlotAtTheLastUnpin) {
  DramTier t(small_tier());
  uint32_t s = static_cast<uint32_t>(put(t, "pinned", 4096));
  t.pin(s);
  t.pin(s);
  EXPECT_TRUE(t.erase(KeyDigest::of("pinned")));
  EXPECT_FALSE(t.erase(KeyDigest::of("pinned")));
  EXPECT_EQ(t.find(KeyDigest::of("pinned")), -1);
  EXPECT_EQ(t.slot(s).state, DramTier::kOrphan);
  std::vector<uint8_t> want = testing::pattern("pinned", 4096);
  EXPECT_EQ(memcmp(t.data(s), want.data(), 4096), 0) << "a reader holding a pin still sees the bytes";
  t.unpin(s);
  EXPECT_EQ(t.slot(s).state, DramTier::kOrphan);
  t.unpin(s);
  EXPECT_EQ(t.slot(s).state, DramTier::kFree);
}

TEST(DramTier, ANewSizeClassTakesASlabPageFromTheLargestClassWithCopiesOfItsEntries) {
  DramTier t(small_tier());
  const size_t big = 512 * 1024;
  for (int i = 0; i < 8; i++) ASSERT_GE(put(t, testing::key_of(i), big), 0);
  EXPECT_EQ(t.stats().slab_pages_free, 0u);
  std::vector<DramTier::Victim> victims;
  int64_t slot = t.reserve(4096, &victims);
  ASSERT_GE(slot, 0);
  ASSERT_EQ(victims.size(), 2u) << "the two entries of the moved page";
  for (const DramTier::Victim& v : victims) {
    ASSERT_EQ(v.len, big);
    ASSERT_GE(v.copy.size(), big);
    std::vector<uint8_t> want = testing::pattern(v.key, big);
    EXPECT_EQ(memcmp(v.copy.data(), want.data(), big), 0) << v.key;
    EXPECT_EQ(t.find(v.digest), -1);
  }
  EXPECT_EQ(t.stats().dropped_for_rebalance, 2u);
  EXPECT_EQ(t.stats().entries, 6u);
  EXPECT_EQ(t.stats().size_classes, 2u);
}

TEST(DramTier, NoPageMovesWhileEveryPageHasAPinnedEntry) {
  DramTier t(small_tier());
  const size_t big = 512 * 1024;
  for (int i = 0; i < 8; i += 1) {
    int64_t s = put(t, testing::key_of(i), big);
    if (i % 2 == 0) t.pin(static_cast<uint32_t>(s));
  }
  std::vector<DramTier::Victim> victims;
  EXPECT_EQ(t.reserve(4096, &victims), kNoSpace);
  EXPECT_TRUE(victims.empty());
  EXPECT_EQ(t.stats().entries, 8u);
}

TEST(DramTier, ClearDropsEveryEntry) {
  DramTier t(small_tier());
  for (int i = 0; i < 100; i++) put(t, testing::key_of(i), 4096 * (1 + i % 3));
  t.clear();
  EXPECT_EQ(t.stats().entries, 0u);
  EXPECT_EQ(t.stats().value_bytes, 0u);
  for (int i = 0; i < 100; i++) EXPECT_EQ(t.find(KeyDigest::of(testing::key_of(i))), -1);
  EXPECT_GE(put(t, "again", 4096), 0);
}

TEST(DramTier, SmallValuesTakePowerOfTwoSlotsFrom256Bytes) {
  DramTier t(small_tier());
  EXPECT_EQ(t.min_slot(), 256u);
  for (auto [len, slot] : std::vector<std::pair<size_t, uint64_t>>{
           {1, 256}, {256, 256}, {300, 512}, {3000, 4096}, {4096, 4096}, {4097, 8192}, {10000, 12288}}) {
    int64_t s = put(t, "len-" + std::to_string(len), len);
    ASSERT_GE(s, 0) << len;
    EXPECT_EQ(t.slot_size(static_cast<uint32_t>(s)), slot) << len;
    EXPECT_TRUE(holds_value(t, "len-" + std::to_string(len), len)) << len;
  }
}

TEST(DramTier, WithoutKeptKeysVictimsCarryOnlyTheirDigest) {
  DramTier::Options o = small_tier();
  o.keep_keys = false;  // no NVMe tier behind: a victim is never demoted under its key
  DramTier t(o);
  const size_t len = 512 * 1024;
  for (int i = 0; i < 8; i++) ASSERT_GE(put(t, testing::key_of(i), len), 0);
  EXPECT_EQ(t.key_of(static_cast<uint32_t>(t.find(KeyDigest::of(testing::key_of(3))))), "");
  std::vector<DramTier::Victim> victims;
  ASSERT_GE(t.reserve(len, &victims), 0);
  ASSERT_EQ(victims.size(), 1u);
  EXPECT_EQ(victims[0].key, "");
  EXPECT_EQ(victims[0].digest, KeyDigest::of(testing::key_of(0)));
}

TEST(DramTier, SlotIdsOutsideThePagesAreNotValid) {
  DramTier t(small_tier());
  uint32_t s = static_cast<uint32_t>(put(t, "a", 4096));
  EXPECT_TRUE(t.valid_slot(s));
  EXPECT_FALSE(t.valid_slot(0xffffffffu));
}

}  // namespace
}  // namespace mch
