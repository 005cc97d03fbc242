// Checksums and key digests (common/checksum.h). The values are part of the on-disk format:
// the known answers below pin XXH3 so that a library or code change cannot silently make
// existing files unreadable.
#include "common/checksum.h"
#include "common/keys.h"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

namespace mch {
namespace {

TEST(Checksum, MatchesTheXxh3KnownAnswers) {
  EXPECT_EQ(checksum64("", 0), 0x2d06800538d394c2ull);  // XXH3-64 of the empty input (xxHash spec)
  EXPECT_EQ(checksum64("mooncake-hicache", 16), 0x164488295b7db797ull);
  KeyDigest d = KeyDigest::of("mooncake-hicache");
  EXPECT_EQ(d.lo, 0xa9d443e9181b2142ull);
  EXPECT_EQ(d.hi, 0xe6cb71c22c90f341ull);
}

TEST(Checksum, StreamingOverAnySplitEqualsTheOneShotValue) {
  std::mt19937_64 rng(testing::test_seed());
  std::vector<uint8_t> data = testing::pattern("stream", 300000);
  uint64_t want = checksum64(data.data(), data.size());
  for (int trial = 0; trial < 50; trial++) {
    StreamChecksum cs;
    size_t off = 0;
    while (off < data.size()) {
      size_t n = std::min<size_t>(data.size() - off, rng() % 70000);
      cs.update(data.data() + off, n);
      off += n;
    }
    ASSERT_EQ(cs.digest(), want) << "trial " << trial;
  }
  StreamChecksum empty;
  EXPECT_EQ(empty.digest(), checksum64("", 0));
}

TEST(Checksum, OneChangedByteChangesTheChecksum) {
  std::vector<uint8_t> data = testing::pattern("flip", 8192);
  uint64_t base = checksum64(data.data(), data.size());
  for (size_t i = 0; i < data.size(); i += 511) {
    data[i] ^= 1;
    EXPECT_NE(checksum64(data.data(), data.size()), base) << i;
    data[i] ^= 1;
  }
}

TEST(KeyDigest, IsStableAndDistinguishesKeys) {
  EXPECT_EQ(KeyDigest::of("abc"), KeyDigest::of(std::string("abc")));
  EXPECT_NE(KeyDigest::of("abc"), KeyDigest::of("abd"));
  std::set<std::pair<uint64_t, uint64_t>> seen;
  for (uint64_t i = 0; i < 100000; i++) {
    KeyDigest d = KeyDigest::of(testing::key_of(i));
    ASSERT_FALSE(d.empty());
    ASSERT_TRUE(seen.insert({d.lo, d.hi}).second) << "collision at " << i;
  }
}

TEST(KeyDigest, TheEmptySlotMarkerIsNeverADigest) {
  KeyDigest none;
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(KeyDigest::of("").empty());
}

}  // namespace
}  // namespace mch
