// Value I/O planning (nvme/value_io.h): how a value in caller memory maps onto one O_DIRECT
// vectored I/O. Checked by executing the plan on plain memory, both ways: a "write" builds the
// device image from the pieces (after the bounce copies), a "read" fills the caller's buffers
// from a device image; both must give back exactly the value.
#include "nvme/value_io.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "common/aligned_buffer.h"
#include "test_util.h"

namespace mch {
namespace {

// Caller memory: an aligned arena with segments cut out of it at chosen offsets.
struct Caller {
  AlignedBuffer mem{1 << 20};
  SgList sg;
  Segment add(size_t offset, size_t len) {
    sg.push_back(Segment{mem.data() + offset, len});
    return sg.back();
  }
};

// The device bytes a write of `plan` produces (the bounce copies done first).
std::vector<uint8_t> run_write(const ValueIoPlan& plan) {
  AlignedBuffer bounce(std::max<size_t>(plan.bounce_bytes, kBlock));
  for (const BounceCopy& c : plan.copies) memcpy(bounce.data() + c.off, c.user, c.len);
  std::vector<uint8_t> device;
  for (const IoPiece& p : plan.pieces) {
    const uint8_t* src = p.bounce ? bounce.data() + p.off : p.addr;
    device.insert(device.end(), src, src + p.len);
  }
  return device;
}

// A read of `device` into the caller's memory through `plan` (the bounce copies done last).
void run_read(const ValueIoPlan& plan, const std::vector<uint8_t>& device) {
  AlignedBuffer bounce(std::max<size_t>(plan.bounce_bytes, kBlock));
  size_t at = 0;
  for (const IoPiece& p : plan.pieces) {
    memcpy(p.bounce ? bounce.data() + p.off : p.addr, device.data() + at, p.len);
    at += p.len;
  }
  for (const BounceCopy& c : plan.copies) memcpy(c.user, bounce.data() + c.off, c.len);
}

// Checks what O_DIRECT needs of every piece and that the plan moves whole blocks.
void expect_valid_plan(const ValueIoPlan& plan, uint64_t len) {
  uint64_t total = 0, bounce_total = 0, copied = 0;
  for (const IoPiece& p : plan.pieces) {
    EXPECT_TRUE(is_aligned(p.len)) << p.len;
    EXPECT_GT(p.len, 0u);
    if (p.bounce) {
      EXPECT_TRUE(is_aligned(p.off)) << p.off;
      bounce_total += p.len;
    } else {
      EXPECT_TRUE(is_aligned(reinterpret_cast<uintptr_t>(p.addr)));
    }
    total += p.len;
  }
  for (const BounceCopy& c : plan.copies) copied += c.len;
  EXPECT_EQ(total, align_up(len));
  EXPECT_EQ(bounce_total, plan.bounce_bytes);
  EXPECT_EQ(copied, plan.bounce_used);
  EXPECT_LE(plan.bounce_used, plan.bounce_bytes);
}

// The plan for one segment of `len` bytes at `offset` into aligned caller memory.
ValueIoPlan plan_one(Caller& c, size_t offset, size_t len) {
  c.add(offset, len);
  ValueIoPlan plan;
  plan_value_io(c.sg, len, &plan);
  expect_valid_plan(plan, len);
  return plan;
}

TEST(ValueIo, AnAlignedBufferIsUsedInPlace) {
  Caller c;
  ValueIoPlan plan = plan_one(c, 8192, 3 * kBlock);
  ASSERT_EQ(plan.pieces.size(), 1u);
  EXPECT_FALSE(plan.pieces[0].bounce);
  EXPECT_TRUE(plan.copies.empty());
  EXPECT_EQ(plan.bounce_bytes, 0u);
}

TEST(ValueIo, AnAlignedBufferWithAShortTailBouncesOnlyTheTail) {
  Caller c;
  ValueIoPlan plan = plan_one(c, 0, 2 * kBlock + 100);
  ASSERT_EQ(plan.pieces.size(), 2u);
  EXPECT_FALSE(plan.pieces[0].bounce);
  EXPECT_EQ(plan.pieces[0].len, 2 * kBlock);
  EXPECT_TRUE(plan.pieces[1].bounce);
  EXPECT_EQ(plan.bounce_used, 100u);
  EXPECT_EQ(plan.bounce_bytes, kBlock) << "the tail is padded to a block";
}

TEST(ValueIo, AMisalignedBufferBouncesEntirely) {
  Caller c;
  ValueIoPlan plan = plan_one(c, 1, 5 * kBlock);
  ASSERT_EQ(plan.pieces.size(), 1u);
  EXPECT_TRUE(plan.pieces[0].bounce);
  EXPECT_EQ(plan.bounce_used, 5 * kBlock);
}

TEST(ValueIo, ASegmentThatBecomesAlignedAtABlockBoundaryGoesInPlaceFromThere) {
  // A first segment of 1000 bytes, then one whose address agrees with the value offset modulo
  // the block: its first 3096 bytes complete the block in bounce memory, the rest is in place.
  Caller c;
  c.add(0, 1000);
  c.add(8192 + 1000, 3096 + 2 * kBlock);
  ValueIoPlan plan;
  uint64_t len = 1000 + 3096 + 2 * kBlock;
  plan_value_io(c.sg, len, &plan);
  expect_valid_plan(plan, len);
  ASSERT_EQ(plan.pieces.size(), 2u);
  EXPECT_TRUE(plan.pieces[0].bounce);
  EXPECT_EQ(plan.pieces[0].len, kBlock);
  EXPECT_FALSE(plan.pieces[1].bounce);
  EXPECT_EQ(plan.pieces[1].len, 2 * kBlock);
}

TEST(ValueIo, OnlyTheFirstLenBytesArePlanned) {
  Caller c;
  c.add(0, 4 * kBlock);
  c.add(4 * kBlock, 4 * kBlock);
  ValueIoPlan plan;
  plan_value_io(c.sg, kBlock + 5, &plan);
  expect_valid_plan(plan, kBlock + 5);
  EXPECT_EQ(plan.bounce_used, 5u);
  plan_value_io(c.sg, 0, &plan);
  EXPECT_TRUE(plan.pieces.empty());
  EXPECT_EQ(plan.bounce_bytes, 0u);
}

// Random segment lists (sizes from 1 byte to several blocks, any alignment, empty segments):
// every plan is valid and round-trips the value both ways.
TEST(ValueIo, RandomScatterGatherListsRoundTripThroughWriteAndRead) {
  std::mt19937_64 rng(testing::test_seed());
  for (int trial = 0; trial < 2000; trial++) {
    Caller c;
    size_t at = 0;
    int nseg = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < nseg; i++) {
      size_t gap = rng() % 3 == 0 ? 0 : rng() % (2 * kBlock);
      size_t len = rng() % 5 == 0 ? 0 : 1 + rng() % (3 * kBlock);
      if (at + gap + len > c.mem.size()) break;
      c.add(at + gap, len);
      at += gap + len;
    }
    bool ignored = false;
    uint64_t total = sg_bytes(c.sg, &ignored);
    uint64_t len = total == 0 ? 0 : rng() % (total + 1);
    std::vector<uint8_t> value = testing::pattern("v" + std::to_string(trial), len);
    scatter(value.data(), len, c.sg);

    ValueIoPlan plan;
    plan_value_io(c.sg, len, &plan);
    expect_valid_plan(plan, len);
    std::vector<uint8_t> device = run_write(plan);
    ASSERT_EQ(device.size(), align_up(len));
    ASSERT_TRUE(std::equal(value.begin(), value.end(), device.begin())) << "write, trial " << trial;

    for (const Segment& s : c.sg) memset(s.ptr, 0, s.len);
    run_read(plan, device);
    std::vector<uint8_t> back(len);
    gather(c.sg, back.data(), len);
    ASSERT_TRUE(back == value) << "read, trial " << trial;
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace mch
