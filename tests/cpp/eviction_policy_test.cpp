// Eviction policies: each policy's defining behaviour, driven the way DramTier drives them
// (the slot's digest and depth are in the slot table before insert(); victim() picks, the
// caller removes with evicted = true).
#include "dram/eviction_policy.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <memory>
#include <stdexcept>
#include <vector>

#include "test_util.h"

namespace mch {
namespace {

const auto kAny = [](uint32_t) { return true; };

KeyDigest digest_of(uint32_t page) { return KeyDigest::of(testing::key_of(page)); }

// The per-slot state a policy keeps in DramTier's slot table, for 64 slots.
class TestSlots final : public SlotTable {
 public:
  ListLinks& links(uint32_t s) override { return at(s).links; }
  uint8_t policy_bits(uint32_t s) const override { return slots_.at(s).bits; }
  void set_policy_bits(uint32_t s, uint8_t bits) override { at(s).bits = bits; }
  uint32_t depth(uint32_t s) const override { return slots_.at(s).depth; }
  const KeyDigest& digest(uint32_t s) const override { return slots_.at(s).digest; }
  void fill(uint32_t s, const KeyDigest& d, uint32_t depth) {
    at(s).digest = d;
    at(s).depth = depth;
  }

 private:
  struct Slot {
    ListLinks links;
    uint8_t bits = 0;
    uint32_t depth = 0;
    KeyDigest digest;
  };
  Slot& at(uint32_t s) { return slots_.at(s); }
  std::vector<Slot> slots_ = std::vector<Slot>(64);
};

// A policy over its own slot table; insert() fills the slot's digest and depth first.
class Policy {
 public:
  explicit Policy(const std::string& name) : p_(EvictionPolicy::make(name, slots_)) {}
  void insert(uint32_t slot, const KeyDigest& d, uint32_t depth) {
    slots_.fill(slot, d, depth);
    p_->insert(slot);
  }
  void access(uint32_t slot) { p_->access(slot); }
  void remove(uint32_t slot, bool evicted) { p_->remove(slot, evicted); }
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) { return p_->victim(can_evict); }
  void walk_coldest(const std::function<bool(uint32_t)>& visit) const { p_->walk_coldest(visit); }
  size_t size() const { return p_->size(); }

 private:
  TestSlots slots_;
  std::unique_ptr<EvictionPolicy> p_;
};

// A cache of `capacity` slots in front of the policy: inserting a page into a full cache evicts
// the policy's victim first. Slot ids are reused like DramTier reuses them.
class Cache {
 public:
  Cache(const std::string& policy, size_t capacity) : p_(std::make_unique<Policy>(policy)), cap_(capacity) {}
  // Inserts `page` (at chain depth `depth`); returns the evicted page or -1.
  int64_t insert(uint32_t page, uint32_t depth = 0) {
    int64_t evicted = -1;
    uint32_t slot;
    if (slot_of_.size() >= cap_) {
      int64_t v = p_->victim(kAny);
      EXPECT_GE(v, 0);
      slot = static_cast<uint32_t>(v);
      p_->remove(slot, true);
      evicted = page_in_[slot];
      slot_of_.erase(page_in_[slot]);
    } else {
      slot = static_cast<uint32_t>(slot_of_.size());  // slots 0..capacity-1, reused once full
    }
    page_in_[slot] = page;
    slot_of_[page] = slot;
    p_->insert(slot, digest_of(page), depth);
    return evicted;
  }
  void hit(uint32_t page) { p_->access(slot_of_.at(page)); }
  bool holds(uint32_t page) const { return slot_of_.count(page) > 0; }

 private:
  std::unique_ptr<Policy> p_;
  size_t cap_;
  std::map<uint32_t, uint32_t> slot_of_;  // page -> slot
  std::map<uint32_t, uint32_t> page_in_;  // slot -> page
};

TEST(EvictionPolicy, UnknownNameIsRejectedWithTheValidNames) {
  try {
    Policy p("fifo");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("lru, s3fifo or prefix_lru"), std::string::npos) << e.what();
  }
}

class EveryPolicy : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryPolicy, VictimIsOneOfTheInsertedSlotsAndRemoveForgetsIt) {
  auto p = std::make_unique<Policy>(GetParam());
  for (uint32_t s = 0; s < 10; s++) p->insert(s, digest_of(s), s);
  EXPECT_EQ(p->size(), 10u);
  std::vector<bool> seen(10, false);
  for (int i = 0; i < 10; i++) {
    int64_t v = p->victim(kAny);
    ASSERT_GE(v, 0);
    ASSERT_LT(v, 10);
    ASSERT_FALSE(seen[v]) << "slot " << v << " chosen twice";
    seen[v] = true;
    p->remove(static_cast<uint32_t>(v), true);
  }
  EXPECT_EQ(p->size(), 0u);
  EXPECT_EQ(p->victim(kAny), -1);
}

TEST_P(EveryPolicy, NeverPicksASlotTheCallerCannotEvict) {
  auto p = std::make_unique<Policy>(GetParam());
  for (uint32_t s = 0; s < 8; s++) p->insert(s, digest_of(s), 0);
  p->access(3);
  int64_t v = p->victim([](uint32_t s) { return s == 5; });
  EXPECT_EQ(v, 5);
  EXPECT_EQ(p->victim([](uint32_t) { return false; }), -1) << "all pinned: no victim, and no endless walk";
  p->remove(5, false);
  EXPECT_EQ(p->victim([](uint32_t s) { return s == 5; }), -1);
}

INSTANTIATE_TEST_SUITE_P(Policies, EveryPolicy, ::testing::Values("lru", "s3fifo", "prefix_lru"));

// The clean reserve looks for clean victims with walk_coldest: it must see each page once, stop
// when told, and leave the policy's choice as it was.
TEST_P(EveryPolicy, WalkColdestVisitsEachPageOnceStopsWhenToldAndChangesNothing) {
  auto fill = [](Policy& p) {
    for (uint32_t s = 0; s < 12; s++) p.insert(s, digest_of(s), s % 3);
    p.access(4);
  };
  auto walked = std::make_unique<Policy>(GetParam()), untouched = std::make_unique<Policy>(GetParam());
  fill(*walked);
  fill(*untouched);
  std::set<uint32_t> seen;
  walked->walk_coldest([&](uint32_t s) { return seen.insert(s).second; });
  EXPECT_EQ(seen.size(), 12u);
  size_t visits = 0;
  walked->walk_coldest([&](uint32_t) { return ++visits < 3; });
  EXPECT_EQ(visits, 3u);
  EXPECT_EQ(walked->size(), untouched->size());
  EXPECT_EQ(walked->victim(kAny), untouched->victim(kAny));
}

TEST(LruPolicy, WalkColdestStartsAtTheVictim) {
  Policy p("lru");
  for (uint32_t s = 0; s < 6; s++) p.insert(s, digest_of(s), 0);
  p.access(0);
  std::vector<uint32_t> order;
  p.walk_coldest([&](uint32_t s) { order.push_back(s); return true; });
  ASSERT_EQ(order.size(), 6u);
  EXPECT_EQ(order.front(), 1u);
  EXPECT_EQ(order.back(), 0u);
  EXPECT_EQ(p.victim(kAny), 1);
}

TEST(LruPolicy, EvictsTheLeastRecentlyUsedPage) {
  Cache c("lru", 4);
  for (uint32_t p = 0; p < 4; p++) c.insert(p);
  c.hit(0);
  c.hit(2);
  EXPECT_EQ(c.insert(10), 1);
  EXPECT_EQ(c.insert(11), 3);
  EXPECT_EQ(c.insert(12), 0);
  EXPECT_EQ(c.insert(13), 2);
}

// A cache of 10 pages: page 0 is hit once, then 100 pages that are never used again stream
// through. Does page 0 survive the scan?
bool a_page_hit_once_survives_a_scan(const std::string& policy) {
  Cache c(policy, 10);
  c.insert(0);
  c.hit(0);
  for (uint32_t p = 1; p < 10; p++) c.insert(p);
  for (uint32_t p = 100; p < 200; p++) c.insert(p);
  return c.holds(0);
}

TEST(LruPolicy, LosesAPageHitOnceToAScanOfNewPages) { EXPECT_FALSE(a_page_hit_once_survives_a_scan("lru")); }

TEST(S3FifoPolicy, KeepsAPageHitOnceThroughAScanOfNewPages) {
  EXPECT_TRUE(a_page_hit_once_survives_a_scan("s3fifo"))
      << "a re-used page moves to the main queue; one-hit pages leave from the small one";
}

TEST(S3FifoPolicy, EvictsOneHitWondersInInsertionOrder) {
  Cache c("s3fifo", 5);
  for (uint32_t p = 0; p < 5; p++) c.insert(p);
  c.hit(1);
  EXPECT_EQ(c.insert(10), 0);
  EXPECT_EQ(c.insert(11), 2) << "page 1 was hit: promoted instead of evicted";
  EXPECT_EQ(c.insert(12), 3);
  EXPECT_TRUE(c.holds(1));
}

TEST(S3FifoPolicy, APageEvictedRecentlyComesBackIntoTheMainQueue) {
  // Page 0 is evicted (remembered in the ghost list); when it is inserted again it goes to the
  // main queue and survives a scan of new pages that a first-time page would not survive.
  Cache c("s3fifo", 10);
  for (uint32_t p = 0; p < 10; p++) c.insert(p);
  EXPECT_EQ(c.insert(10), 0);
  c.insert(0);  // back: ghost hit
  c.insert(1000);  // a first-time page, for comparison
  for (uint32_t p = 100; p < 130; p++) c.insert(p);
  EXPECT_TRUE(c.holds(0));
  EXPECT_FALSE(c.holds(1000));
}

// Page 0 leaves and comes back, then ten first-time pages follow. Returns the tenth victim:
// page 0 if it came back into the small queue, page 10 if it came back into the main queue.
int64_t tenth_victim_after_page_zero_returns(bool left_by_eviction) {
  auto p = std::make_unique<Policy>("s3fifo");
  for (uint32_t s = 0; s < 10; s++) p->insert(s, digest_of(s), 0);
  p->remove(0, left_by_eviction);
  p->insert(0, digest_of(0), 0);
  for (uint32_t s = 10; s < 20; s++) p->insert(s, digest_of(s), 0);
  int64_t v = -1;
  for (int i = 0; i < 10; i++) {
    v = p->victim(kAny);
    p->remove(static_cast<uint32_t>(v), true);
  }
  return v;
}

TEST(S3FifoPolicy, OnlyAnEvictedPageIsRememberedNotAnErasedOne) {
  EXPECT_EQ(tenth_victim_after_page_zero_returns(/*left_by_eviction=*/false), 0);
  EXPECT_EQ(tenth_victim_after_page_zero_returns(/*left_by_eviction=*/true), 10);
}

TEST(PrefixLruPolicy, AmongTheColdestPagesEvictsTheDeepestFirst) {
  Cache c("prefix_lru", 6);
  // Chain depths: page p has depth p % 3 + 1 (three chains interleaved, oldest first).
  for (uint32_t p = 0; p < 6; p++) c.insert(p, p % 3 + 1);
  EXPECT_EQ(c.insert(10, 1), 2) << "depth 3 beats depth 1 and 2";
  EXPECT_EQ(c.insert(11, 1), 5) << "the other depth-3 page";
  EXPECT_EQ(c.insert(12, 1), 1) << "then depth 2, the colder of the two first";
}

TEST(PrefixLruPolicy, EqualDepthsFallBackToLruOrder) {
  Cache c("prefix_lru", 4);
  for (uint32_t p = 0; p < 4; p++) c.insert(p, 7);
  c.hit(0);
  EXPECT_EQ(c.insert(10, 7), 1);
  EXPECT_EQ(c.insert(11, 7), 2);
}

TEST(PrefixLruPolicy, ADeepPageOutsideTheColdWindowIsNotEvicted) {
  // Only the 16 coldest pages compete on depth: a deep page that was just used stays.
  Cache c("prefix_lru", 40);
  c.insert(0, 100);
  for (uint32_t p = 1; p < 40; p++) c.insert(p, 1);
  c.hit(0);
  for (uint32_t p = 100; p < 110; p++) EXPECT_NE(c.insert(p, 1), 0);
  EXPECT_TRUE(c.holds(0));
}

}  // namespace
}  // namespace mch
