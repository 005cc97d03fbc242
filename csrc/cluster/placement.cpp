#include "cluster/placement.h"

#include <endian.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <unordered_set>

#include "common/checksum.h"  // XXH3

namespace mch::cluster {

namespace {

uint64_t hash_of(std::string_view s) { return XXH3_64bits(s.data(), s.size()); }

// u(key, member) in (0, 1): XXH3 of the key's hash seeded with the member's seed, its top 53 bits
// centred in their interval (never 0, never 1). key_le is the key hash as little-endian bytes
// (htole64), so every host hashes the same 8 bytes.
double unit_interval(const uint64_t& key_le, uint64_t member_seed) {
  uint64_t h = XXH3_64bits_withSeed(&key_le, sizeof key_le, member_seed);
  return (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
}

struct Scored {
  double score;
  uint32_t id_rank;
  uint32_t index;
  bool beats(const Scored& o) const { return score > o.score || (score == o.score && id_rank < o.id_rank); }
};

void check_member(const PlacementMember& m) {
  if (m.id.empty()) throw std::invalid_argument("placement: a member id is empty");
  if (!(m.weight > 0) || !std::isfinite(m.weight) || !std::isfinite(1.0 / m.weight))
    throw std::invalid_argument("placement: member '" + m.id + "' has weight " + std::to_string(m.weight) +
                                "; weights must be > 0 and finite");
}

}  // namespace

Placement::Placement(std::vector<PlacementMember> members) {
  std::unordered_set<std::string> seen;
  for (const auto& m : members) {
    check_member(m);
    if (!seen.insert(m.id).second) throw std::invalid_argument("placement: member id '" + m.id + "' appears twice");
  }
  std::vector<uint32_t> by_id(members.size());
  std::iota(by_id.begin(), by_id.end(), 0u);
  std::sort(by_id.begin(), by_id.end(), [&](uint32_t a, uint32_t b) { return members[a].id < members[b].id; });
  members_.resize(members.size());
  for (uint32_t r = 0; r < by_id.size(); r++) {
    auto& src = members[by_id[r]];
    members_[by_id[r]] = Member{std::move(src.id), src.weight, 1.0 / src.weight, 0, r};
  }
  for (auto& m : members_) m.seed = hash_of(m.id);
}

int32_t Placement::index_of(std::string_view id) const {
  for (uint32_t i = 0; i < size(); i++)
    if (members_[i].id == id) return static_cast<int32_t>(i);
  return -1;
}

uint32_t Placement::holder_count(uint32_t replicas) const {
  if (replicas == 0) throw std::invalid_argument("placement: replicas must be at least 1");
  return std::min(replicas, size());
}

// The n best-scoring members for key_hash, best first, by insertion into a sorted top-n list.
void Placement::rank(uint64_t key_hash, uint32_t n, uint32_t* out) const {
  Scored top[64];
  std::vector<Scored> heap_top;
  Scored* best = top;
  if (n > 64) {
    heap_top.resize(n);
    best = heap_top.data();
  }
  uint32_t filled = 0;
  const uint64_t key_le = htole64(key_hash);
  for (uint32_t i = 0; i < size(); i++) {
    const Member& m = members_[i];
    // -w / ln(u) ranks members as ln(u) / w does (both grow with u and w); the product is cheaper.
    Scored s{std::log(unit_interval(key_le, m.seed)) * m.inv_weight, m.id_rank, i};
    if (filled == n && !s.beats(best[n - 1])) continue;
    uint32_t pos = filled < n ? filled++ : n - 1;
    while (pos > 0 && s.beats(best[pos - 1])) {
      best[pos] = best[pos - 1];
      pos--;
    }
    best[pos] = s;
  }
  for (uint32_t i = 0; i < n; i++) out[i] = best[i].index;
}

uint32_t Placement::holders(std::string_view key, uint32_t replicas, uint32_t* out) const {
  uint32_t n = holder_count(replicas);
  if (n > 0) rank(hash_of(key), n, out);
  return n;
}

std::vector<uint32_t> Placement::batch_holders(const std::vector<std::string>& keys, uint32_t replicas) const {
  uint32_t n = holder_count(replicas);
  std::vector<uint32_t> out(keys.size() * n);
  for (size_t k = 0; k < keys.size() && n > 0; k++) rank(hash_of(keys[k]), n, &out[k * n]);
  return out;
}

// The holder a read goes to: the lowest finite cost, ties to the better rank; size() when all are down.
uint32_t Placement::pick(const uint32_t* holders, uint32_t n, const std::vector<double>& cost) const {
  if (cost.empty()) return holders[0];
  uint32_t chosen = size();
  double lowest = std::numeric_limits<double>::infinity();
  for (uint32_t i = 0; i < n; i++) {
    double c = cost[holders[i]];
    if (c < lowest) {
      lowest = c;
      chosen = holders[i];
    }
  }
  return chosen;
}

std::vector<std::vector<uint32_t>> Placement::route(const std::vector<std::string>& keys, uint32_t replicas,
                                                    Fanout fanout, const std::vector<double>& cost) const {
  if (!cost.empty() && cost.size() != size())
    throw std::invalid_argument("placement: cost has " + std::to_string(cost.size()) + " entries for " +
                                std::to_string(size()) + " members");
  uint32_t n = holder_count(replicas);
  std::vector<std::vector<uint32_t>> groups(size());
  uint32_t h[64];
  std::vector<uint32_t> many(n > 64 ? n : 0);
  uint32_t* hs = n > 64 ? many.data() : h;
  for (uint32_t k = 0; k < keys.size() && n > 0; k++) {
    rank(hash_of(keys[k]), n, hs);
    if (fanout == Fanout::kAll) {
      for (uint32_t i = 0; i < n; i++) groups[hs[i]].push_back(k);
    } else if (uint32_t m = pick(hs, n, cost); m < size()) {
      groups[m].push_back(k);
    }
  }
  return groups;
}

}  // namespace mch::cluster
