// add_spans: see transfer.h.
#include "transport/rdma/transfer.h"

#include <algorithm>

namespace mch::rdma {

namespace {
constexpr uint64_t kMaxWrBytes = 1ull << 30;  // below every port's max_msg_sz (2^31)
}  // namespace

bool add_spans(Transfer& t, uint32_t item, const std::vector<MemoryPiece>& local, const RemoteRange* remote,
               size_t nremote, uint64_t len, uint32_t max_sge) {
  uint64_t have_local = 0, have_remote = 0;
  for (const MemoryPiece& p : local) have_local += p.len;
  for (size_t j = 0; j < nremote; j++) have_remote += remote[j].len;
  if (have_local < len || have_remote < len) return false;
  max_sge = std::max<uint32_t>(1, max_sge);
  std::vector<Sge> sg;
  size_t li = 0;
  uint64_t loff = 0, left = len;  // position in local[li]
  for (size_t j = 0; j < nremote && left > 0; j++) {
    uint64_t rdone = 0, rlen = std::min(remote[j].len, left);
    while (rdone < rlen) {  // one WR: up to max_sge pieces, up to kMaxWrBytes
      sg.clear();
      uint64_t wr_len = 0, cap = std::min(rlen - rdone, kMaxWrBytes);
      while (wr_len < cap && sg.size() < max_sge) {
        uint64_t n = std::min(local[li].len - loff, cap - wr_len);
        sg.push_back(Sge{local[li].addr + loff, static_cast<uint32_t>(n), local[li].lkey});
        wr_len += n;
        loff += n;
        if (loff == local[li].len) li++, loff = 0;
      }
      t.add(item, sg.data(), static_cast<int>(sg.size()), remote[j].addr + rdone, remote[j].rkey);
      rdone += wr_len;
    }
    left -= rlen;
  }
  return true;
}

}  // namespace mch::rdma
