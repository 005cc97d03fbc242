// Placement: which members of the cluster hold a key, computed by anyone from the membership
// view alone (no per-key metadata service). Weighted rendezvous (highest-random-weight) hashing:
//
//   score(key, m) = -weight_m / ln(u(key, m)),   u = 53 bits of XXH3(key, m) mapped into (0, 1)
//
// and the min(R, members) members with the highest scores hold the key, best first. Each member
// holds a share of the keys proportional to its weight, and adding, removing or re-weighting one
// member moves keys only to or from that member (docs/cluster.md has the measured figures).
//
// Results depend only on (member ids, weights, key): the order members are given in does not
// matter (exact score ties, which need a 2^-53 coincidence, go to the smaller id), so every
// process that sees the same view computes the same holders. Member indices in the API are
// positions in the vector given to the constructor.
//
// A Placement is immutable once built: any number of threads may call it at once. It owns only
// the member list (ids, weights, per-member hash seeds). Includes csrc/common only.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mch::cluster {

struct PlacementMember {
  std::string id;  // unique, non-empty
  double weight;   // > 0 and finite; e.g. the bytes the member contributes
};

// Which of a key's holders a batch is sent to.
enum class Fanout {
  kAll,  // every holder (writes: a put goes to all R holders)
  kOne,  // the holder with the lowest cost, ties to the better-ranked holder (reads, exists)
};

class Placement {
 public:
  // Throws std::invalid_argument on an empty or duplicate id, or a weight that is not > 0 and finite.
  explicit Placement(std::vector<PlacementMember> members);

  uint32_t size() const { return static_cast<uint32_t>(members_.size()); }
  const std::string& id(uint32_t m) const { return members_[m].id; }
  double weight(uint32_t m) const { return members_[m].weight; }
  int32_t index_of(std::string_view id) const;  // -1 when absent

  // How many holders a key has with `replicas` asked for: min(replicas, size()).
  uint32_t holder_count(uint32_t replicas) const;

  // Writes the holder_count(replicas) holders of key to out (member indices, best first);
  // returns that count. replicas must be >= 1 (std::invalid_argument otherwise).
  uint32_t holders(std::string_view key, uint32_t replicas, uint32_t* out) const;

  // holders() for every key: keys.size() * holder_count(replicas) indices, key by key.
  std::vector<uint32_t> batch_holders(const std::vector<std::string>& keys, uint32_t replicas) const;

  // Groups a batch by member, so a client sends one request per member: result[m] lists, in
  // ascending order, the batch indices of the keys that go to member m (empty when none).
  // With Fanout::kOne, cost[m] ranks the holders of a key (e.g. 0 for the local node, else its
  // load); a holder whose cost is +infinity (down) is never chosen, and a key whose holders are
  // all down goes to no member. cost is empty (all equal) or has size() entries.
  std::vector<std::vector<uint32_t>> route(const std::vector<std::string>& keys, uint32_t replicas, Fanout fanout,
                                           const std::vector<double>& cost = {}) const;

 private:
  struct Member {
    std::string id;
    double weight;
    double inv_weight;  // 1 / weight
    uint64_t seed;     // XXH3 of the id: the member's half of u(key, member)
    uint32_t id_rank;  // position of the id in sorted order: breaks exact score ties
  };
  void rank(uint64_t key_hash, uint32_t n, uint32_t* out) const;
  uint32_t pick(const uint32_t* holders, uint32_t n, const std::vector<double>& cost) const;

  std::vector<Member> members_;
};

}  // namespace mch::cluster
