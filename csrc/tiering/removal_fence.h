// RemovalFence: what makes a removal from the tiers final. Pages move between the tiers in the
// background of other calls (a victim's demotion DRAM -> NVMe, a write-through, a promotion
// NVMe -> DRAM), and a removal that only looked at where a page is *now* would miss the copy in
// flight, which then lands after the removal and brings the page back. So a removal
//   1. fences its keys (one key, a key prefix, or every key): a promotion does not start for a
//      fenced key, and one that finishes while a fence covers its key is not published;
//   2. takes them out of DRAM, then waits for every transfer between the tiers that started
//      before that moment (transfers_before): a write to NVMe may carry an old copy of a fenced
//      key, a promotion may be about to publish one (it sees the fence and drops it);
//   3. removes them from NVMe, and only then lifts the fence.
// Transfers that start after step 2 cannot carry an old copy: the page was no longer in DRAM,
// and promotions of fenced keys do not start.
//
// Not thread-safe: TieredStore holds its mutex around every call (the waiting is done by the
// caller, on its condition variable, which end_transfer's caller notifies).
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/keys.h"

namespace mch {

class RemovalFence {
 public:
  // ---- transfers between the tiers (demotions, write-through, promotions) ----
  uint64_t begin_transfer() {
    open_.insert(next_);
    return next_++;
  }
  void end_transfer(uint64_t ticket) {
    auto it = open_.find(ticket);
    if (it != open_.end()) open_.erase(it);
  }
  // A horizon: the transfers that started before now have tickets below it.
  uint64_t now() const { return next_; }
  bool transfers_before(uint64_t horizon) const { return !open_.empty() && *open_.begin() < horizon; }

  // ---- fenced keys ----
  void add(const KeyDigest& d) { keys_[d]++; }
  void drop(const KeyDigest& d) {
    auto it = keys_.find(d);
    if (it != keys_.end() && --it->second == 0) keys_.erase(it);
  }
  void add_prefix(const std::string& p) { prefixes_.push_back(p); }
  void drop_prefix(const std::string& p) {
    for (auto it = prefixes_.begin(); it != prefixes_.end(); ++it)
      if (*it == p) {
        prefixes_.erase(it);
        return;
      }
  }
  void add_all() { all_++; }
  void drop_all() { all_--; }

  // Whether a page of `key` (digest d) must not be published now.
  bool covers(const KeyDigest& d, const std::string& key) const {
    if (all_ > 0 || keys_.count(d)) return true;
    for (const std::string& p : prefixes_)
      if (key.compare(0, p.size(), p) == 0) return true;
    return false;
  }

 private:
  uint64_t next_ = 1;
  std::multiset<uint64_t> open_;  // tickets of transfers in flight
  std::unordered_map<KeyDigest, int, DigestHash> keys_;
  std::vector<std::string> prefixes_;
  int all_ = 0;
};

}  // namespace mch
