// TokenTable (node/session.h): the multiset of put reservations / get pins one connection holds.
#include "node/session.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace mch {
namespace {

TEST(TokenTable, TakesOnlyWhatWasAddedAsOftenAsItWasAdded) {
  TokenTable t;
  t.add(7);
  t.add(7);
  t.add(9);
  EXPECT_EQ(t.total(), 3u);
  EXPECT_TRUE(t.take(7));
  EXPECT_TRUE(t.take(7));
  EXPECT_FALSE(t.take(7)) << "pinned twice, unpinned twice: a third unpin is not ours";
  EXPECT_FALSE(t.take(8));
  EXPECT_EQ(t.total(), 1u);
}

TEST(TokenTable, TokenZeroIsNeverHeld) {
  TokenTable t;
  t.add(0);
  EXPECT_EQ(t.total(), 0u);
  EXPECT_FALSE(t.take(0));
}

TEST(TokenTable, DrainHandsBackEveryCountAndEmptiesTheTable) {
  TokenTable t;
  for (uint64_t i = 1; i <= 1000; i++) t.add(i << 32 | (i % 7));  // (generation, slot) shapes
  t.add(5ull << 32 | 5);
  std::vector<uint64_t> out;
  t.drain(&out);
  EXPECT_EQ(out.size(), 1001u);
  EXPECT_EQ(std::count(out.begin(), out.end(), 5ull << 32 | 5), 2);
  EXPECT_EQ(t.total(), 0u);
  EXPECT_FALSE(t.take(1ull << 32 | 1));
}

}  // namespace
}  // namespace mch
