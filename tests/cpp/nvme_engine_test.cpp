// NvmeEngine on a real file under /tmp (O_DIRECT), with each I/O backend this build has:
// round trips of aligned and unaligned scatter-gather lists, restart, removal, eviction,
// corruption and the errors a caller can cause.
#include "nvme/nvme_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/checksum.h"
#include "common/status.h"
#include "test_util.h"

namespace mch {
namespace {

using namespace testing::codes;

constexpr uint64_t kMiB = 1ull << 20;

class NvmeEngineTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "io_uring" && !uring_compiled_in()) GTEST_SKIP() << "built without liburing";
  }
  NvmeOptions options(uint64_t capacity = 16 * kMiB, uint64_t region = 1 * kMiB) const {
    NvmeOptions o;
    o.path = dir_.file("nvme.data");
    o.capacity = capacity;
    o.region_size = region;
    o.queue_depth = 8;
    o.io_backend = GetParam();
    o.max_parallel_calls = 2;
    return o;
  }
  std::unique_ptr<NvmeEngine> open(const NvmeOptions& o) { return std::make_unique<NvmeEngine>(o); }
  std::unique_ptr<NvmeEngine> open() { return open(options()); }

  testing::TempDir dir_;
};

// Puts each key with pattern(key, len) from one page-aligned buffer; returns the results.
std::vector<int32_t> put_all(NvmeEngine& e, const std::vector<std::string>& keys, size_t len) {
  std::vector<AlignedBuffer> bufs;
  std::vector<SgList> values;
  for (const std::string& k : keys) {
    bufs.emplace_back(std::max<size_t>(len, 1));
    std::vector<uint8_t> v = testing::pattern(k, len);
    memcpy(bufs.back().data(), v.data(), len);
    values.push_back({Segment{bufs.back().data(), len}});
  }
  std::vector<int32_t> res(keys.size(), 99);
  e.batch_put(keys, values, res.data());
  return res;
}

// Gets one key into a fresh buffer of `cap` bytes; returns (result, bytes read).
std::pair<int64_t, std::vector<uint8_t>> get_one(NvmeEngine& e, const std::string& key, size_t cap) {
  AlignedBuffer buf(std::max<size_t>(cap, 1));
  std::vector<SgList> bufs = {{Segment{buf.data(), cap}}};
  int64_t res = 99;
  e.batch_get({key}, bufs, &res);
  std::vector<uint8_t> out;
  if (res > 0) out.assign(buf.data(), buf.data() + res);
  return {res, out};
}

TEST_P(NvmeEngineTest, ValuesOfManySizesRoundTrip) {
  auto e = open();
  for (size_t len : {size_t(1), size_t(4095), size_t(4096), size_t(10000), size_t(256 * 1024), size_t(kMiB - 3 * 4096)}) {
    std::string key = "len-" + std::to_string(len);
    ASSERT_EQ(put_all(*e, {key}, len)[0], kOk) << len;
    auto [res, bytes] = get_one(*e, key, len);
    ASSERT_EQ(res, static_cast<int64_t>(len));
    EXPECT_TRUE(bytes == testing::pattern(key, len)) << len;
  }
  NvmeStats s = e->stats();
  EXPECT_EQ(s.io_backend, GetParam());
  EXPECT_EQ(s.entries, 6u);
  EXPECT_EQ(s.hits, 6u);
}

TEST_P(NvmeEngineTest, BatchOfManyKeysRoundTripsAndReportsMisses) {
  auto e = open();
  std::vector<std::string> keys;
  for (int i = 0; i < 40; i++) keys.push_back(testing::key_of(i));
  for (int32_t r : put_all(*e, keys, 8192)) ASSERT_EQ(r, kOk);
  std::vector<std::string> ask = keys;
  ask.push_back("missing");
  std::vector<AlignedBuffer> bufs;
  std::vector<SgList> sgs;
  for (size_t i = 0; i < ask.size(); i++) {
    bufs.emplace_back(8192);
    sgs.push_back({Segment{bufs.back().data(), 8192}});
  }
  std::vector<int64_t> res(ask.size());
  e->batch_get(ask, sgs, res.data());
  for (size_t i = 0; i < keys.size(); i++) {
    ASSERT_EQ(res[i], 8192) << i;
    std::vector<uint8_t> want = testing::pattern(keys[i], 8192);
    ASSERT_EQ(memcmp(bufs[i].data(), want.data(), 8192), 0) << i;
  }
  EXPECT_EQ(res.back(), kNotFound);
  std::vector<int32_t> ex(ask.size());
  e->batch_exists(ask, ex.data());
  EXPECT_EQ(std::count(ex.begin(), ex.end(), 1), 40);
  EXPECT_EQ(ex.back(), 0);
}

// The engine plans each value's I/O: aligned runs of caller memory go straight to the device,
// the rest through bounce memory. Odd addresses and segment sizes on both sides exercise it.
TEST_P(NvmeEngineTest, UnalignedScatterGatherListsRoundTrip) {
  auto e = open();
  const size_t len = 3 * 4096 + 777;
  std::vector<uint8_t> value = testing::pattern("sg", len);
  AlignedBuffer src(len + 8192);
  uint8_t* base = src.data() + 1;  // misaligned by one byte
  memcpy(base, value.data(), len);
  std::vector<SgList> values = {{Segment{base, 1000}, Segment{base + 1000, 7192}, Segment{base + 8192, len - 8192}}};
  int32_t put_res = 99;
  e->batch_put({"sg"}, values, &put_res);
  ASSERT_EQ(put_res, kOk);

  AlignedBuffer dst(len + 3 * 4096);
  // The first segment is aligned and block-sized (read in place); the others are not, and an
  // empty one sits in between.
  SgList out = {Segment{dst.data() + 4096, 4096}, Segment{dst.data() + 1, 0}, Segment{dst.data() + 8192 + 3, 5000},
                Segment{dst.data() + 16384 + 17, len - 9096}};
  int64_t get_res = 99;
  e->batch_get({"sg"}, {out}, &get_res);
  ASSERT_EQ(get_res, static_cast<int64_t>(len));
  std::vector<uint8_t> back;
  size_t left = len;
  for (const Segment& s : out) {
    size_t n = std::min<size_t>(s.len, left);
    back.insert(back.end(), s.ptr, s.ptr + n);
    left -= n;
  }
  EXPECT_TRUE(back == value);
}

TEST_P(NvmeEngineTest, ValuesSurviveACloseAndReopen) {
  std::vector<std::string> keys;
  for (int i = 0; i < 300; i++) keys.push_back(testing::key_of(i));  // ~4 regions: sealed and open
  {
    auto e = open();
    for (int32_t r : put_all(*e, keys, 8192)) ASSERT_EQ(r, kOk);
    e->close();
  }
  auto e = open();
  NvmeStats s = e->stats();
  EXPECT_EQ(s.entries, keys.size());
  EXPECT_EQ(s.recovered_entries, keys.size());
  for (const std::string& k : keys) {
    auto [res, bytes] = get_one(*e, k, 8192);
    ASSERT_EQ(res, 8192) << k;
    ASSERT_TRUE(bytes == testing::pattern(k, 8192)) << k;
  }
}

TEST_P(NvmeEngineTest, RecordsOfTheOpenRegionAreFoundByScanAfterACrash) {
  {
    auto e = open();
    ASSERT_EQ(put_all(*e, {"a", "b"}, 5000)[0], kOk);
    // No close(): the region stays open with no summary, as after a crash. The destructor
    // would seal it, so the file is copied aside first.
    std::string copy = dir_.file("crashed.data");
    int in = ::open(options().path.c_str(), O_RDONLY), out = ::open(copy.c_str(), O_WRONLY | O_CREAT, 0644);
    std::vector<char> buf(1 << 20);
    ssize_t n;
    while ((n = read(in, buf.data(), buf.size())) > 0) ASSERT_EQ(write(out, buf.data(), n), n);
    ::close(in);
    ::close(out);
  }
  NvmeOptions o = options();
  o.path = dir_.file("crashed.data");
  auto e = open(o);
  EXPECT_EQ(e->stats().recovered_regions_scanned, 1u);
  auto [res, bytes] = get_one(*e, "b", 5000);
  ASSERT_EQ(res, 5000);
  EXPECT_TRUE(bytes == testing::pattern("b", 5000));
}

TEST_P(NvmeEngineTest, TheNewestValueOfAKeyWinsAcrossARestart) {
  {
    auto e = open();
    ASSERT_EQ(put_all(*e, {"k"}, 4096)[0], kOk);
    ASSERT_EQ(put_all(*e, {"k"}, 6000)[0], kOk);
    e->close();
  }
  auto e = open();
  auto [res, bytes] = get_one(*e, "k", 8192);
  ASSERT_EQ(res, 6000);
  EXPECT_TRUE(bytes == testing::pattern("k", 6000));
}

TEST_P(NvmeEngineTest, ARemovedKeyStaysRemovedAfterARestart) {
  {
    auto e = open();
    ASSERT_EQ(put_all(*e, {"keep", "drop"}, 4096)[0], kOk);
    EXPECT_EQ(e->remove("drop"), kOk);
    EXPECT_EQ(e->remove("drop"), kNotFound);
    EXPECT_EQ(get_one(*e, "drop", 4096).first, kNotFound);
    e->close();
  }
  auto e = open();
  EXPECT_EQ(get_one(*e, "drop", 4096).first, kNotFound);
  EXPECT_EQ(get_one(*e, "keep", 4096).first, 4096);
}

TEST_P(NvmeEngineTest, RemovePrefixTakesEveryKeyUnderItAndOnlyThoseForGood) {
  {
    auto e = open();
    ASSERT_EQ(put_all(*e, {"tenant-a/1", "tenant-a/2", "tenant-ab/3", "tenant-b/1"}, 4096),
              (std::vector<int32_t>{kOk, kOk, kOk, kOk}));
    e->close();
  }
  auto e = open();  // the keys now come back from the record headers on disk, not from memory
  std::vector<KeyDigest> removed;
  EXPECT_EQ(e->remove_prefix("tenant-a/", &removed), 2);
  EXPECT_EQ(removed.size(), 2u);
  EXPECT_EQ(e->remove_prefix("tenant-a/", &removed), 0) << "nothing left under it";
  EXPECT_EQ(removed.size(), 2u);
  e->close();
  e = open();
  std::vector<int32_t> ex(4, 99);
  e->batch_exists({"tenant-a/1", "tenant-a/2", "tenant-ab/3", "tenant-b/1"}, ex.data());
  EXPECT_EQ(ex, (std::vector<int32_t>{0, 0, 1, 1})) << "tombstones outlive the restart";
}

// A located page (GET_LOCATE's engine side): the offset and checksum describe the value in the
// file, and its region is not reclaimed until unpin_location, however much is written meanwhile.
TEST_P(NvmeEngineTest, ALocatedValueStaysInTheFileUntilItIsUnpinned) {
  const size_t len = 10000;
  NvmeOptions o = options(4 * kMiB, 1 * kMiB);
  o.reinsertion = false;  // a hit page would otherwise be re-appended when its region goes
  auto e = open(o);
  ASSERT_EQ(put_all(*e, {"located"}, len)[0], kOk);
  NvmeEngine::ValueLocation loc;
  ASSERT_EQ(e->pin_location("located", &loc), static_cast<int64_t>(len));
  EXPECT_EQ(loc.len, len);
  EXPECT_EQ(e->pin_location("absent", &loc), kNotFound);
  ASSERT_EQ(e->pin_location("located", &loc), static_cast<int64_t>(len));
  e->unpin_location(loc.region);  // pinned twice, released once: still pinned
  std::atomic<bool> wrote_all{false};
  std::thread writer([&] {  // 3x the device: must reclaim the located page's region
    for (int i = 0; i < 200; i++) put_all(*e, {testing::key_of(i)}, 64 * 1024);
    wrote_all = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(wrote_all) << "the writer waits for the pinned region";
  AlignedBuffer buf((len + 4095) / 4096 * 4096);
  EXPECT_EQ(pread(e->read_fd(), buf.data(), buf.size(), static_cast<off_t>(loc.offset)), static_cast<ssize_t>(buf.size()));
  EXPECT_EQ(memcmp(buf.data(), testing::pattern("located", len).data(), len), 0);
  EXPECT_EQ(checksum64(buf.data(), len), loc.checksum);
  e->unpin_location(loc.region);
  writer.join();
  EXPECT_TRUE(wrote_all);
  EXPECT_EQ(get_one(*e, "located", len).first, kNotFound) << "its region was reclaimed after the unpin";
}

TEST_P(NvmeEngineTest, RemoveAllEmptiesTheEngineForGood) {
  {
    auto e = open();
    put_all(*e, {"a", "b", "c"}, 4096);
    EXPECT_EQ(e->remove_all(), kOk);
    EXPECT_EQ(e->stats().entries, 0u);
    e->close();
  }
  auto e = open();
  EXPECT_EQ(e->stats().entries, 0u);
  EXPECT_EQ(get_one(*e, "a", 4096).first, kNotFound);
}

TEST_P(NvmeEngineTest, AFullDeviceEvictsItsOldestRegion) {
  auto e = open(options(4 * kMiB, 1 * kMiB));
  std::vector<std::string> keys;
  for (int i = 0; i < 200; i++) keys.push_back(testing::key_of(i));  // 200 x 68 KiB ~ 13 MiB
  for (const std::string& k : keys) ASSERT_EQ(put_all(*e, {k}, 64 * 1024)[0], kOk) << k;
  NvmeStats s = e->stats();
  EXPECT_GT(s.evicted_regions, 0u);
  EXPECT_EQ(get_one(*e, keys.front(), 64 * 1024).first, kNotFound) << "the oldest page went with its region";
  auto [res, bytes] = get_one(*e, keys.back(), 64 * 1024);
  ASSERT_EQ(res, 64 * 1024);
  EXPECT_TRUE(bytes == testing::pattern(keys.back(), 64 * 1024));
}

TEST_P(NvmeEngineTest, ACorruptValueOnDiskIsAMissNeverWrongBytes) {
  const size_t len = 8192;
  {
    auto e = open();
    ASSERT_EQ(put_all(*e, {"victim"}, len)[0], kOk);
    e->close();
  }
  // Find the value's bytes in the file and flip one of them.
  std::vector<uint8_t> want = testing::pattern("victim", len);
  int fd = ::open(options().path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::vector<uint8_t> file(16 * kMiB + kMiB);
  ssize_t n = pread(fd, file.data(), file.size(), 0);
  ASSERT_GT(n, 0);
  auto at = std::search(file.begin(), file.begin() + n, want.begin(), want.begin() + 64);
  ASSERT_NE(at, file.begin() + n) << "value not found in the file";
  off_t off = static_cast<off_t>(at - file.begin()) + 100;
  uint8_t b = static_cast<uint8_t>(file[off] ^ 0xff);
  ASSERT_EQ(pwrite(fd, &b, 1, off), 1);
  ::close(fd);

  auto e = open();
  EXPECT_EQ(get_one(*e, "victim", len).first, kNotFound);
  EXPECT_EQ(e->stats().checksum_failures, 1u);
  int32_t ex = 99;
  e->batch_exists({"victim"}, &ex);
  EXPECT_EQ(ex, 0) << "a corrupt record is forgotten";
}

TEST_P(NvmeEngineTest, BadKeysAndValuesGetTheirStatusCodes) {
  auto e = open();
  std::vector<std::string> keys = {"", std::string(2049, 'k'), "too-big", "ok"};
  AlignedBuffer big(e->max_value_size() + 4096);
  std::vector<SgList> values = {{Segment{big.data(), 10}}, {Segment{big.data(), 10}},
                                {Segment{big.data(), e->max_value_size() + 1}}, {Segment{nullptr, 5}}};
  std::vector<int32_t> res(4, 99);
  e->batch_put(keys, values, res.data());
  EXPECT_EQ(res[0], kInvalidParams);
  EXPECT_EQ(res[1], kKeyTooLong);
  EXPECT_EQ(res[2], kValueTooLarge);
  EXPECT_EQ(res[3], kInvalidParams) << "a null pointer with a length";
  ASSERT_EQ(put_all(*e, {"small-buffer"}, 9000)[0], kOk);
  EXPECT_EQ(get_one(*e, "small-buffer", 8192).first, kBufferTooSmall);
}

TEST_P(NvmeEngineTest, CallsAfterCloseReturnClosed) {
  auto e = open();
  put_all(*e, {"a"}, 4096);
  e->close();
  e->close();  // idempotent
  EXPECT_EQ(put_all(*e, {"b"}, 4096)[0], kClosed);
  EXPECT_EQ(get_one(*e, "a", 4096).first, kClosed);
  EXPECT_EQ(e->remove("a"), kClosed);
  EXPECT_EQ(e->value_size("a"), kClosed);
}

TEST_P(NvmeEngineTest, ASecondEngineOnTheSameFileIsRefused) {
  auto e = open();
  testing::expect_engine_error([&] { open(); }, EngineError::kInUse, "in use");
}

TEST_P(NvmeEngineTest, ReopeningWithAnotherRegionSizeNamesTheSetting) {
  { auto e = open(); }
  testing::expect_engine_error([&] { open(options(16 * kMiB, 2 * kMiB)); }, EngineError::kInvalid, "region_size");
}

TEST_P(NvmeEngineTest, AFileOfAnotherProgramIsNotOverwritten) {
  {
    int fd = ::open(options().path.c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_EQ(write(fd, "not ours", 8), 8);
    ::close(fd);
  }
  testing::expect_engine_error([&] { open(); }, EngineError::kFormat, "not a mooncake-hicache data file");
}

TEST_P(NvmeEngineTest, InjectedWriteErrorsFailThePutAndKeepTheOldValue) {
  auto e = open();
  ASSERT_EQ(put_all(*e, {"k"}, 4096)[0], kOk);
  e->inject_write_errors(1);
  EXPECT_EQ(put_all(*e, {"k"}, 5000)[0], kIoError);
  auto [res, bytes] = get_one(*e, "k", 8192);
  ASSERT_EQ(res, 4096);
  EXPECT_TRUE(bytes == testing::pattern("k", 4096));
}

INSTANTIATE_TEST_SUITE_P(Backends, NvmeEngineTest, ::testing::Values("threads", "io_uring"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace mch
