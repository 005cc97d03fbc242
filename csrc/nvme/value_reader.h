// read_values: reads values whose place on the device is known (a file offset, a length and the
// XXH3-64 checksum written with them) into callers' scatter-gather lists through one IoContext:
// up to the queue depth in flight, the caller's memory used in place where O_DIRECT allows and
// bounce memory elsewhere (value_io.h), and every value checked against its checksum before it
// counts as read. Never wrong bytes: a mismatch is reported, not returned.
//
// Used by NvmeEngine::batch_get (its own index says where a page is) and by a node client that
// reads a page the node located for it (a direct read: disk to the client's buffer, no DRAM
// staging). The caller holds the context (one thread at a time) and keeps the located regions
// from being reclaimed until done() has been called for them.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/checksum.h"
#include "common/sg_list.h"
#include "common/status.h"
#include "nvme/io_context.h"

namespace mch {

struct ValueRead {
  uint64_t offset = 0;    // file offset of the value's first byte (block aligned)
  uint64_t len = 0;
  uint64_t checksum = 0;  // XXH3-64 of the value's bytes
  const SgList* buf = nullptr;  // at least len bytes
};

// Physically contiguous memory (huge pages) that values are read into before they are copied
// to the caller: `slots` reads in flight at most, each into `slot_bytes` of its own. A value
// read straight into a caller's scattered 4 KiB pages reaches the device as one request per
// max_segments pages; read here it is one request (docs/architecture.md, "Direct reads").
struct ReadStaging {
  uint8_t* base = nullptr;
  uint64_t slot_bytes = 0;
  int slots = 0;
};

// Calls done(i, result) exactly once for each reads[i]: result is the length read, or
// kNotFound (checksum mismatch), kIoError (the device failed or moved fewer bytes) or
// kInvalidParams (a buffer layout one I/O cannot take). With `staging`, values that fit a
// staging slot are read there, checked, then copied to the caller's buffer.
template <class Done>
void read_values(IoContext& ctx, const std::vector<ValueRead>& reads, Done&& done,
                 const ReadStaging* staging = nullptr) {
  std::vector<int> stage_of(ctx.slots.size(), -1);  // per context slot: its staging slot
  std::vector<int> free_stage;
  for (int k = staging ? staging->slots - 1 : -1; k >= 0; k--) free_stage.push_back(k);
  auto complete = [&](const IoCompletion& c) {
    IoContext::Slot& s = ctx.slots[c.tag];
    const size_t i = s.item;
    const int k = stage_of[c.tag];
    int64_t result = status_code(Status::kIoError);
    if (c.result == s.expect && k >= 0) {
      const uint8_t* data = staging->base + static_cast<uint64_t>(k) * staging->slot_bytes;
      const bool intact = checksum64(data, reads[i].len) == reads[i].checksum;
      if (intact) scatter(data, reads[i].len, *reads[i].buf);
      result = intact ? static_cast<int64_t>(reads[i].len) : status_code(Status::kNotFound);
    } else if (c.result == s.expect) {
      for (const auto& cp : s.copies) memcpy(cp.user, cp.bounce, cp.len);
      const bool intact = sg_checksum(*reads[i].buf, reads[i].len) == reads[i].checksum;
      result = intact ? static_cast<int64_t>(reads[i].len) : status_code(Status::kNotFound);
    }
    if (k >= 0) free_stage.push_back(k);
    stage_of[c.tag] = -1;
    ctx.give_slot(static_cast<int>(c.tag));
    done(i, result);
  };
  for (size_t i = 0; i < reads.size(); i++) {
    if (reads[i].len == 0) {
      done(i, 0);
      continue;
    }
    const bool staged = staging && align_up(reads[i].len) <= staging->slot_bytes;
    while (ctx.free_slots.empty() || (staged && free_stage.empty())) ctx.reap(1, complete);
    const int si = ctx.take_slot();
    IoContext::Slot& s = ctx.slots[si];
    s.item = i;
    s.iov.clear();
    if (staged) {
      const int k = free_stage.back();
      free_stage.pop_back();
      stage_of[si] = k;
      s.copies.clear();
      s.iov.push_back({staging->base + static_cast<uint64_t>(k) * staging->slot_bytes, align_up(reads[i].len)});
    } else if (!ctx.prepare_value(s, *reads[i].buf, reads[i].len)) {
      ctx.give_slot(si);
      done(i, status_code(Status::kInvalidParams));
      continue;
    }
    s.expect = static_cast<int64_t>(align_up(reads[i].len));
    IoRequest req;
    req.op = IoOp::kRead;
    req.offset = reads[i].offset;
    req.iov = s.iov.data();
    req.iovcnt = static_cast<int>(s.iov.size());
    req.tag = static_cast<uint64_t>(si);
    ctx.submit(req, complete);
  }
  while (ctx.q->inflight() > 0) ctx.reap(1, complete);
}

}  // namespace mch
