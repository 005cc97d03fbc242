// On-disk record format (record_format.h): header encode/decode, checksum failures, torn
// headers, superblock and trailer validation, size helpers.
#include "nvme/record_format.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mch::disk {
namespace {

RecordHeader header_for(const std::string& key, uint64_t value_len = 12345) {
  KeyDigest d = KeyDigest::of(key);
  RecordHeader h{};
  h.key_len = static_cast<uint32_t>(key.size());
  h.value_len = value_len;
  h.region_seq = 77;
  h.seq = 123456789;
  h.digest_lo = d.lo;
  h.digest_hi = d.hi;
  h.value_checksum = 0xabcdef;
  return h;
}

// A header block exactly kBlock bytes long on the heap (so a read past it is caught by ASan).
std::vector<uint8_t> encoded(const std::string& key, uint64_t value_len = 12345) {
  std::vector<uint8_t> block(kBlock, 0xee);
  encode_header(block.data(), header_for(key, value_len), key.data());
  return block;
}

TEST(RecordFormat, HeaderRoundTripsEveryField) {
  std::string key = "model/tp0/0123456789abcdef";
  std::vector<uint8_t> block = encoded(key, 999);
  RecordHeader out{};
  ASSERT_TRUE(decode_header(block.data(), &out));
  RecordHeader want = header_for(key, 999);
  EXPECT_EQ(out.magic, kRecordMagic);
  EXPECT_EQ(out.version, kFormatVersion);
  EXPECT_EQ(out.flags, 0);
  EXPECT_EQ(out.key_len, want.key_len);
  EXPECT_EQ(out.value_len, 999u);
  EXPECT_EQ(out.region_seq, want.region_seq);
  EXPECT_EQ(out.seq, want.seq);
  EXPECT_EQ(out.digest_lo, want.digest_lo);
  EXPECT_EQ(out.digest_hi, want.digest_hi);
  EXPECT_EQ(out.value_checksum, want.value_checksum);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(block.data() + sizeof(RecordHeader)), out.key_len), key);
}

TEST(RecordFormat, EncodeZeroFillsTheRestOfTheBlock) {
  std::string key = "k";
  std::vector<uint8_t> block = encoded(key);
  for (size_t i = sizeof(RecordHeader) + key.size(); i < kBlock; i++) ASSERT_EQ(block[i], 0) << i;
}

TEST(RecordFormat, TombstoneFlagSurvivesTheRoundTrip) {
  RecordHeader h = header_for("gone", 0);
  h.flags = kTombstone;
  std::vector<uint8_t> block(kBlock);
  encode_header(block.data(), h, "gone");
  RecordHeader out{};
  ASSERT_TRUE(decode_header(block.data(), &out));
  EXPECT_EQ(out.flags, kTombstone);
}

TEST(RecordFormat, LongestKeyFitsAndRoundTrips) {
  std::string key(kMaxKeyLen, 'x');
  std::vector<uint8_t> block = encoded(key);
  RecordHeader out{};
  EXPECT_TRUE(decode_header(block.data(), &out));
  EXPECT_EQ(out.key_len, kMaxKeyLen);
}

TEST(RecordFormat, AnyFlippedBitInHeaderOrKeyFailsTheChecksum) {
  std::string key = "some/key/with/a/few/parts";
  std::vector<uint8_t> good = encoded(key);
  size_t covered = sizeof(RecordHeader) + key.size();
  for (size_t byte = 0; byte < covered; byte++) {
    for (int bit = 0; bit < 8; bit += 3) {
      std::vector<uint8_t> bad = good;
      bad[byte] ^= static_cast<uint8_t>(1u << bit);
      RecordHeader out{};
      ASSERT_FALSE(decode_header(bad.data(), &out)) << "byte " << byte << " bit " << bit;
    }
  }
}

TEST(RecordFormat, BytesAfterTheKeyAreNotPartOfTheHeader) {
  std::string key = "k";
  std::vector<uint8_t> block = encoded(key);
  block[kBlock - 1] = 0x5a;  // padding: not covered, and not a reason to drop the record
  RecordHeader out{};
  EXPECT_TRUE(decode_header(block.data(), &out));
}

TEST(RecordFormat, TornHeaderBlocksAreRejected) {
  std::string key = "torn/key";
  std::vector<uint8_t> good = encoded(key);
  // Only the first n bytes reached the disk; the rest is what was there before (zeros or an
  // older record's bytes).
  for (size_t n : {0ul, 4ul, 8ul, 24ul, 64ul, 71ul, 72ul, 75ul}) {
    for (uint8_t fill : {0x00, 0xff}) {
      std::vector<uint8_t> torn(kBlock, fill);
      std::copy(good.begin(), good.begin() + static_cast<long>(n), torn.begin());
      RecordHeader out{};
      EXPECT_FALSE(decode_header(torn.data(), &out)) << "first " << n << " bytes, fill " << int(fill);
    }
  }
  // The header of one record with the key bytes of another.
  std::vector<uint8_t> other = encoded("torn/kez");
  std::vector<uint8_t> mixed = good;
  std::copy(other.begin() + sizeof(RecordHeader), other.end(), mixed.begin() + sizeof(RecordHeader));
  RecordHeader out{};
  EXPECT_FALSE(decode_header(mixed.data(), &out));
}

TEST(RecordFormat, ImpossibleKeyLengthsAreRejectedWithoutReadingPastTheBlock) {
  for (uint32_t key_len : {0u, static_cast<uint32_t>(kMaxKeyLen) + 1, 0xffffffffu}) {
    std::vector<uint8_t> block = encoded("k");
    memcpy(block.data() + offsetof(RecordHeader, key_len), &key_len, sizeof key_len);
    RecordHeader out{};
    EXPECT_FALSE(decode_header(block.data(), &out)) << key_len;
  }
}

TEST(RecordFormat, ADigestThatDoesNotMatchTheKeyIsRejected) {
  // The checksum is right (computed over the wrong digest), the digest is not the key's.
  RecordHeader h = header_for("key-a");
  h.digest_lo ^= 1;
  std::vector<uint8_t> block(kBlock);
  encode_header(block.data(), h, "key-a");
  RecordHeader out{};
  EXPECT_FALSE(decode_header(block.data(), &out));
}

TEST(RecordFormat, OtherFormatVersionsAreRejected) {
  std::vector<uint8_t> block = encoded("k");
  uint16_t v = kFormatVersion + 1;
  memcpy(block.data() + offsetof(RecordHeader, version), &v, sizeof v);
  RecordHeader out{};
  EXPECT_FALSE(decode_header(block.data(), &out));
}

TEST(RecordFormat, SuperblockSealsAndDetectsDamage) {
  Superblock sb{};
  memcpy(sb.magic, kSuperMagic, 8);
  sb.format_version = kFormatVersion;
  sb.block_size = kBlock;
  sb.region_size = 4 << 20;
  sb.region_count = 16;
  sb.data_offset = kDataOffset;
  sb.boot_epoch = 3;
  seal_superblock(&sb);
  EXPECT_TRUE(superblock_valid(sb));
  Superblock bad = sb;
  bad.region_count++;
  EXPECT_FALSE(superblock_valid(bad));
  bad = sb;
  bad.magic[0] = 'X';
  seal_superblock(&bad);
  EXPECT_FALSE(superblock_valid(bad)) << "a checksum does not make a foreign magic valid";
  Superblock zero{};
  EXPECT_FALSE(superblock_valid(zero));
}

TEST(RecordFormat, TrailerSealsAndDetectsDamage) {
  RegionTrailer t{};
  t.state = kSealed;
  t.region_seq = 9;
  t.entry_count = 3;
  t.summary_offset = 1 << 20;
  t.summary_checksum = 42;
  seal_trailer(&t);
  EXPECT_TRUE(trailer_valid(t));
  EXPECT_EQ(t.magic, kTrailerMagic);
  for (size_t byte = 0; byte < sizeof t; byte++) {
    RegionTrailer bad = t;
    reinterpret_cast<uint8_t*>(&bad)[byte] ^= 0x10;
    EXPECT_FALSE(trailer_valid(bad)) << "byte " << byte;
  }
  RegionTrailer zero{};
  EXPECT_FALSE(trailer_valid(zero));
}

TEST(RecordFormat, SizesAreBlockAligned) {
  EXPECT_EQ(align_up(0), 0u);
  EXPECT_EQ(align_up(1), kBlock);
  EXPECT_EQ(align_up(kBlock), kBlock);
  EXPECT_EQ(align_up(kBlock + 1), 2 * kBlock);
  EXPECT_TRUE(is_aligned(8 * kBlock));
  EXPECT_FALSE(is_aligned(kBlock + 512));
  EXPECT_EQ(record_bytes(0), kBlock);
  EXPECT_EQ(record_bytes(1), 2 * kBlock);
  EXPECT_EQ(record_bytes(8 << 20), kBlock + (8u << 20));
  EXPECT_EQ(summary_bytes(0), 0u);
  EXPECT_EQ(summary_bytes(1), kBlock);
  EXPECT_EQ(summary_bytes(kBlock / sizeof(SummaryEntry)), kBlock);
  EXPECT_EQ(summary_bytes(kBlock / sizeof(SummaryEntry) + 1), 2 * kBlock);
}

}  // namespace
}  // namespace mch::disk
