// Reinsertion policies: see reinsertion_policy.h.
#include "nvme/reinsertion_policy.h"

namespace mch {

namespace {

class HitsReinsertion final : public ReinsertionPolicy {
 public:
  void begin(uint64_t region_size) override {
    budget_ = region_size / 2;
    kept_ = 0;
  }
  bool keep(const PageLocation& loc, uint64_t record_bytes) override {
    if (!(loc.flags & PageIndex::kHit) || kept_ + record_bytes > budget_) return false;
    kept_ += record_bytes;
    return true;
  }

 private:
  uint64_t budget_ = 0, kept_ = 0;
};

class NoReinsertion final : public ReinsertionPolicy {
 public:
  void begin(uint64_t) override {}
  bool keep(const PageLocation&, uint64_t) override { return false; }
};

}  // namespace

std::unique_ptr<ReinsertionPolicy> ReinsertionPolicy::make(bool reinsert_hits) {
  if (reinsert_hits) return std::make_unique<HitsReinsertion>();
  return std::make_unique<NoReinsertion>();
}

}  // namespace mch
