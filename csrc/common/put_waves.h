// The reserve -> copy -> commit loop of a zero-copy batch put, shared by TieredStore::batch_put
// (in-process) and NodeClient::batch_put (through the node).
//
// Each wave reserves slots for the keys still to do, copies each value into its slot and
// commits the slots. A key refused with NO_SPACE (every slot of its class is reserved, typically
// by this very batch when it is larger than the DRAM tier) is retried in the next wave, once the
// pages committed by this one have become evictable. A wave that commits nothing ends the call
// (the NO_SPACE results stand), so the loop terminates.
//
// Ops (the caller's side):
//   bool reserve(const std::vector<uint32_t>& todo, std::vector<Reservation>* out)
//        one Reservation per todo entry; false: the call failed (Ops has set the results)
//   int32_t copy(uint32_t i, const Reservation& r)
//        copies value i into the slot: kOk, or a negative Status (the slot is then given back)
//   bool commit(const std::vector<uint64_t>& tokens, const std::vector<uint8_t>& ok,
//               const std::vector<uint32_t>& keys, const std::vector<uint32_t>& retry,
//               std::vector<int32_t>* results)
//        ok[t] = 0 gives slot t back; false: the call failed (Ops has set the results of
//        `keys` and `retry`)
// Runs on the caller's thread; holds no lock.
#pragma once
#include <cstdint>
#include <vector>

#include "common/status.h"

namespace mch {

// What a put does to a key that is stored already. kReplace (the default): the new value is the
// one every later get sees, on every tier. kKeepExisting: the stored value stays and the key
// reports success without a copy (for content-addressed keys, whose value never changes).
enum class PutMode : uint8_t { kReplace, kKeepExisting };

struct Reservation {
  int32_t status = 0;  // kOk: copy then commit; kAlreadyStored: nothing to do; < 0: a Status
  uint64_t offset = 0;
  uint64_t token = 0;
};
constexpr int32_t kAlreadyStored = 1;  // kKeepExisting: the key is stored already, nothing to copy

// Scratch vectors of one call, kept by the caller so a warm call allocates nothing per key.
struct PutWaveScratch {
  std::vector<Reservation> reserved;
  std::vector<uint64_t> tokens;
  std::vector<uint8_t> oks;
  std::vector<uint32_t> pos, retry;
  std::vector<int32_t> committed;
};

template <class Ops>
void run_put_waves(std::vector<uint32_t>& todo, int32_t* results, Ops& ops, PutWaveScratch& w) {
  while (!todo.empty()) {
    if (!ops.reserve(todo, &w.reserved)) return;
    w.tokens.clear(), w.oks.clear(), w.pos.clear(), w.retry.clear();
    for (size_t j = 0; j < todo.size(); j++) {
      const uint32_t i = todo[j];
      const Reservation& r = w.reserved[j];
      results[i] = r.status == kAlreadyStored ? status_code(Status::kOk) : r.status;
      if (r.status == status_code(Status::kNoSpace)) w.retry.push_back(i);
      if (r.status != status_code(Status::kOk)) continue;
      int32_t c = ops.copy(i, r);
      if (c != status_code(Status::kOk)) results[i] = c;
      w.tokens.push_back(r.token);
      w.pos.push_back(i);
      w.oks.push_back(c == status_code(Status::kOk) ? 1 : 0);
    }
    if (w.tokens.empty()) return;  // nothing reserved: the NO_SPACE results stand
    if (!ops.commit(w.tokens, w.oks, w.pos, w.retry, &w.committed)) return;
    size_t done = 0;
    for (size_t t = 0; t < w.pos.size(); t++) {
      if (!w.oks[t]) continue;
      results[w.pos[t]] = w.committed[t];
      done += w.committed[t] == status_code(Status::kOk);
    }
    if (done == 0) return;
    todo.swap(w.retry);
  }
}

}  // namespace mch
