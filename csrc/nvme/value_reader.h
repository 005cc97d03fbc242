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

// Calls done(i, result) exactly once for each reads[i]: result is the length read, or
// kNotFound (checksum mismatch), kIoError (the device failed or moved fewer bytes) or
// kInvalidParams (a buffer layout one I/O cannot take).
template <class Done>
void read_values(IoContext& ctx, const std::vector<ValueRead>& reads, Done&& done) {
  auto complete = [&](const IoCompletion& c) {
    IoContext::Slot& s = ctx.slots[c.tag];
    const size_t i = s.item;
    int64_t result = status_code(Status::kIoError);
    if (c.result == s.expect) {
      for (const auto& cp : s.copies) memcpy(cp.user, cp.bounce, cp.len);
      const bool intact = sg_checksum(*reads[i].buf, reads[i].len) == reads[i].checksum;
      result = intact ? static_cast<int64_t>(reads[i].len) : status_code(Status::kNotFound);
    }
    ctx.give_slot(static_cast<int>(c.tag));
    done(i, result);
  };
  for (size_t i = 0; i < reads.size(); i++) {
    if (reads[i].len == 0) {
      done(i, 0);
      continue;
    }
    while (ctx.free_slots.empty()) ctx.reap(1, complete);
    const int si = ctx.take_slot();
    IoContext::Slot& s = ctx.slots[si];
    s.item = i;
    s.iov.clear();
    if (!ctx.prepare_value(s, *reads[i].buf, reads[i].len)) {
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
