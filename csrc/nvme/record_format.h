// On-disk format of the NVMe engine (format version 1). Everything is little-endian, every
// structure is protected by an XXH3-64 checksum, and every I/O is 4 KiB aligned.
//
// File:    [superblock: 4 KiB][pad to kDataOffset][region 0][region 1]...[region N-1]
// Region:  [record][record]...        free space        [summary entries][trailer: 4 KiB]
// Record:  [header block: RecordHeader + key bytes, zero-filled to 4 KiB][value, zero-padded to 4 KiB]
//
// A region is free (trailer invalid), open (trailer state kOpen: records are being appended; a
// restart scans them) or sealed (trailer state kSealed: the summary lists every record, so a
// restart reads the summary instead of the records). Records carry the region_seq of the
// region incarnation that wrote them, so records left over from an earlier use of a reclaimed
// region are never mistaken for live ones.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/aligned_buffer.h"
#include "common/checksum.h"
#include "common/keys.h"

namespace mch::disk {

constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kDataOffset = 1 << 20;  // regions start 1 MiB into the file
using mch::align_up;
using mch::is_aligned;
using mch::kBlock;
using mch::kMaxKeyLen;

constexpr char kSuperMagic[8] = {'M', 'C', 'H', 'C', 'N', 'V', 'M', 'E'};
constexpr uint32_t kRecordMagic = 0x5243484d;        // "MHCR"
constexpr uint64_t kTrailerMagic = 0x4c49415254484d43ull;  // "CMHTRAIL"

struct Superblock {
  char magic[8];
  uint32_t format_version;
  uint32_t block_size;
  uint64_t region_size;
  uint64_t region_count;
  uint64_t data_offset;
  uint64_t created_unix;
  // Incremented (and made durable) every time the file is opened. Region and record sequence
  // numbers of a life start at (boot_epoch << 32) and (boot_epoch << 40), so whatever a damaged
  // or wiped trailer hides, a later life never reuses a number of an earlier one.
  uint64_t boot_epoch;
  uint64_t checksum;  // XXH3-64 of all bytes above
};

enum RecordFlags : uint16_t { kTombstone = 1 };

struct RecordHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;
  uint32_t key_len;
  uint32_t reserved;
  uint64_t value_len;
  uint64_t region_seq;      // incarnation of the region the record was written into
  uint64_t seq;             // engine-wide record sequence number (later wins on restart)
  uint64_t digest_lo, digest_hi;
  uint64_t value_checksum;  // XXH3-64 of the value bytes
  uint64_t header_checksum; // XXH3-64 of this header (field zeroed) + key bytes
};
static_assert(sizeof(RecordHeader) == 72, "RecordHeader layout");
static_assert(sizeof(RecordHeader) + kMaxKeyLen <= kBlock, "key must fit the header block");

enum TrailerState : uint32_t { kOpen = 1, kSealed = 2 };

struct RegionTrailer {
  uint64_t magic;
  uint32_t state;
  uint32_t version;
  uint64_t region_seq;
  uint64_t entry_count;
  uint64_t summary_offset;    // offset in the region of the first summary entry
  uint64_t summary_checksum;  // XXH3-64 of the entries
  uint64_t checksum;          // XXH3-64 of this trailer with the field zeroed
};

struct SummaryEntry {
  uint64_t digest_lo, digest_hi;
  uint32_t block;  // record offset in the region, in kBlock units
  uint16_t flags;
  uint16_t reserved;
  uint64_t value_len;
  uint64_t value_checksum;
  uint64_t seq;
};
static_assert(sizeof(SummaryEntry) == 48, "SummaryEntry layout");

// A region of region_size bytes holds a value of at most region_size - kRegionOverhead bytes: the
// record's header block, one summary block and the trailer take the rest.
constexpr uint64_t kRegionOverhead = 3 * kBlock;
// Region sizes above this would not fit a record's block offset and value length in the 32 bits
// the index keeps for them.
constexpr uint64_t kMaxRegionSize = 4ull << 30;
inline uint64_t max_value_in_region(uint64_t region_size) { return region_size - kRegionOverhead; }

// Bytes of one record on disk.
inline uint64_t record_bytes(uint64_t value_len) { return kBlock + align_up(value_len); }

// Bytes a summary of n entries occupies (block aligned), excluding the trailer block.
inline uint64_t summary_bytes(uint64_t n) { return align_up(n * sizeof(SummaryEntry)); }

// ---- encoding helpers ---------------------------------------------------------------------

inline void seal_superblock(Superblock* sb) {
  sb->checksum = 0;
  sb->checksum = checksum64(sb, offsetof(Superblock, checksum));
}
inline bool superblock_valid(const Superblock& sb) {
  return memcmp(sb.magic, kSuperMagic, 8) == 0 &&
         sb.checksum == checksum64(&sb, offsetof(Superblock, checksum));
}

// Writes header + key into a zeroed kBlock buffer and fills in the header checksum.
inline void encode_header(uint8_t* block, RecordHeader h, const char* key) {
  memset(block, 0, kBlock);
  h.magic = kRecordMagic;
  h.version = static_cast<uint16_t>(kFormatVersion);
  h.header_checksum = 0;
  memcpy(block, &h, sizeof(h));
  memcpy(block + sizeof(h), key, h.key_len);
  uint64_t c = checksum64(block, sizeof(h) + h.key_len);
  memcpy(block + offsetof(RecordHeader, header_checksum), &c, sizeof(c));
}

// Validates a header block; on success copies the header out.
inline bool decode_header(const uint8_t* block, RecordHeader* out) {
  RecordHeader h;
  memcpy(&h, block, sizeof(h));
  if (h.magic != kRecordMagic || h.version != kFormatVersion || h.key_len == 0 ||
      h.key_len > kMaxKeyLen)
    return false;
  uint64_t want = h.header_checksum;
  uint8_t tmp[sizeof(RecordHeader) + kMaxKeyLen];
  memcpy(tmp, block, sizeof(h) + h.key_len);
  memset(tmp + offsetof(RecordHeader, header_checksum), 0, sizeof(uint64_t));
  if (checksum64(tmp, sizeof(h) + h.key_len) != want) return false;
  KeyDigest d = KeyDigest::of(std::string_view(reinterpret_cast<const char*>(block + sizeof(h)), h.key_len));
  if (d.lo != h.digest_lo || d.hi != h.digest_hi) return false;
  *out = h;
  return true;
}

inline void seal_trailer(RegionTrailer* t) {
  t->magic = kTrailerMagic;
  t->version = kFormatVersion;
  t->checksum = 0;
  t->checksum = checksum64(t, sizeof(*t));
}
inline bool trailer_valid(const RegionTrailer& t) {
  if (t.magic != kTrailerMagic || t.version != kFormatVersion) return false;
  RegionTrailer c = t;
  c.checksum = 0;
  return checksum64(&c, sizeof(c)) == t.checksum;
}

}  // namespace mch::disk
