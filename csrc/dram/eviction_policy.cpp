#include "dram/eviction_policy.h"

#include <algorithm>
#include <deque>
#include <list>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

namespace mch {
namespace {

// Front = most recently used.
class LruPolicy : public EvictionPolicy {
 public:
  void insert(uint32_t slot, const KeyDigest&, uint32_t depth) override {
    order_.push_front(slot);
    pos_[slot] = {order_.begin(), depth};
  }
  void access(uint32_t slot) override {
    auto it = pos_.find(slot);
    if (it != pos_.end()) order_.splice(order_.begin(), order_, it->second.it);
  }
  void remove(uint32_t slot, bool) override {
    auto it = pos_.find(slot);
    if (it == pos_.end()) return;
    order_.erase(it->second.it);
    pos_.erase(it);
  }
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override {
    for (auto it = order_.rbegin(); it != order_.rend(); ++it)
      if (can_evict(*it)) return *it;
    return -1;
  }
  size_t size() const override { return pos_.size(); }

 protected:
  struct Pos {
    std::list<uint32_t>::iterator it;
    uint32_t depth;
  };
  std::list<uint32_t> order_;
  std::unordered_map<uint32_t, Pos> pos_;
};

class PrefixLruPolicy : public LruPolicy {
 public:
  static constexpr int kWindow = 16;  // how many of the coldest pages count as "equally cold"
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override {
    int64_t best = -1;
    uint32_t best_depth = 0;
    int seen = 0;
    for (auto it = order_.rbegin(); it != order_.rend() && seen < kWindow; ++it) {
      if (!can_evict(*it)) continue;
      seen++;
      uint32_t d = pos_[*it].depth;
      if (best < 0 || d > best_depth) {  // strictly deeper wins; ties keep the colder one
        best = *it;
        best_depth = d;
      }
    }
    return best;
  }
};

class S3FifoPolicy : public EvictionPolicy {
 public:
  void insert(uint32_t slot, const KeyDigest& d, uint32_t) override {
    bool ghost = ghost_set_.erase(d) > 0;
    auto& q = ghost ? main_ : small_;
    q.push_front(slot);
    meta_[slot] = {q.begin(), d, 0, ghost};
  }
  void access(uint32_t slot) override {
    auto it = meta_.find(slot);
    if (it != meta_.end() && it->second.freq < 3) it->second.freq++;
  }
  void remove(uint32_t slot, bool evicted) override {
    auto it = meta_.find(slot);
    if (it == meta_.end()) return;
    Meta& m = it->second;
    (m.in_main ? main_ : small_).erase(m.it);
    if (evicted && !m.in_main) remember(m.digest);
    meta_.erase(it);
  }
  int64_t victim(const std::function<bool(uint32_t)>& can_evict) override {
    // Each step either finds a victim or moves one page; bound the walk so pinned pages
    // cannot make it spin forever.
    size_t budget = 4 * meta_.size() + 4;
    while (budget-- > 0 && !meta_.empty()) {
      bool from_small = !small_.empty() && (small_.size() * 10 >= meta_.size() || main_.empty());
      auto& q = from_small ? small_ : main_;
      uint32_t slot = q.back();
      Meta& m = meta_[slot];
      if (from_small && m.freq > 0) {  // re-used while new: promote to main
        small_.pop_back();
        main_.push_front(slot);
        m.it = main_.begin();
        m.in_main = true;
        m.freq = 0;
        continue;
      }
      if (!from_small && m.freq > 0) {  // second chance in main
        m.freq--;
        main_.splice(main_.begin(), main_, m.it);
        continue;
      }
      if (can_evict(slot)) return slot;
      q.splice(q.begin(), q, m.it);  // busy (pinned): look further
    }
    return -1;
  }
  size_t size() const override { return meta_.size(); }

 private:
  struct Meta {
    std::list<uint32_t>::iterator it;
    KeyDigest digest;
    uint8_t freq;
    bool in_main;
  };
  void remember(const KeyDigest& d) {
    ghost_set_.insert(d);
    ghost_fifo_.push_back(d);
    size_t cap = std::max<size_t>(meta_.size(), 64);
    while (ghost_fifo_.size() > cap) {
      ghost_set_.erase(ghost_fifo_.front());
      ghost_fifo_.pop_front();
    }
  }
  std::list<uint32_t> small_, main_;
  std::unordered_map<uint32_t, Meta> meta_;
  std::unordered_set<KeyDigest, DigestHash> ghost_set_;
  std::deque<KeyDigest> ghost_fifo_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> EvictionPolicy::make(const std::string& name) {
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(new LruPolicy);
  if (name == "s3fifo") return std::unique_ptr<EvictionPolicy>(new S3FifoPolicy);
  if (name == "prefix_lru") return std::unique_ptr<EvictionPolicy>(new PrefixLruPolicy);
  throw std::invalid_argument("eviction policy must be lru, s3fifo or prefix_lru, not '" + name + "'");
}

}  // namespace mch
