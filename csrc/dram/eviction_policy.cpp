// EvictionPolicy::make: the policy of a name (one file per policy: lru_policy, prefix_lru_policy,
// s3fifo_policy).
#include "dram/eviction_policy.h"

#include <stdexcept>

#include "dram/lru_policy.h"
#include "dram/prefix_lru_policy.h"
#include "dram/s3fifo_policy.h"

namespace mch {

std::unique_ptr<EvictionPolicy> EvictionPolicy::make(const std::string& name) {
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(new LruPolicy);
  if (name == "s3fifo") return std::unique_ptr<EvictionPolicy>(new S3FifoPolicy);
  if (name == "prefix_lru") return std::unique_ptr<EvictionPolicy>(new PrefixLruPolicy);
  throw std::invalid_argument("eviction policy must be lru, s3fifo or prefix_lru, not '" + name + "'");
}

}  // namespace mch
