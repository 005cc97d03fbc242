// OpenHashMap: a flat hash map with open addressing, linear probing and backward-shift deletion
// (no tombstones, so lookups stay short after many erases). One slot is {Key, Value}; a slot is
// free when Traits::empty(key) holds, so the empty key value can never be stored.
//
//   Traits::hash(const Key&) -> size_t     Traits::empty(const Key&) -> bool
//
// Used by the NVMe page index (digest -> location) and by each node session's token tables.
// Not thread-safe: the owner locks around it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mch {

// Empties table[i] of an open-addressing table with linear probing (its size a power of two),
// pulling later members of the probe run into the hole, so lookups need no tombstones: entry j
// moves iff its home (home(entry)) is not cyclically within (hole, j]. is_free(entry): a free slot.
// Shared by OpenHashMap and dram/slot_index.h.
template <class T, class Home, class IsFree>
void backward_shift_erase(std::vector<T>& table, size_t i, Home home, IsFree is_free) {
  const size_t mask = table.size() - 1;
  size_t hole = i;
  for (size_t j = (i + 1) & mask; !is_free(table[j]); j = (j + 1) & mask) {
    size_t h = home(table[j]) & mask;
    bool stays = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j);
    if (!stays) {
      table[hole] = table[j];
      hole = j;
    }
  }
  table[hole] = T{};
}

template <class Key, class Value, class Traits>
class OpenHashMap {
 public:
  struct Slot {
    Key key{};
    Value value{};
  };

  // initial: a power of two; max_load_pct: the fill that triggers doubling.
  explicit OpenHashMap(size_t initial = 16, unsigned max_load_pct = 75)
      : initial_(initial), max_load_pct_(max_load_pct) {
    clear();
  }

  Value* find(const Key& k) {
    for (size_t i = home(k);; i = next(i)) {
      Slot& s = slots_[i];
      if (Traits::empty(s.key)) return nullptr;
      if (s.key == k) return &s.value;
    }
  }
  // Inserts or replaces. Returns true if the key was new. `k` must not be the empty key.
  bool put(const Key& k, const Value& v) {
    bool fresh = false;
    slot_for(k, &fresh).value = v;
    return fresh;
  }
  // The value of `k`, inserted value-initialised when absent.
  Value& get_or_insert(const Key& k) {
    bool fresh = false;
    return slot_for(k, &fresh).value;
  }
  bool erase(const Key& k) {
    size_t i = home(k);
    for (;; i = next(i)) {
      if (Traits::empty(slots_[i].key)) return false;
      if (slots_[i].key == k) break;
    }
    backward_shift_erase(
        slots_, i, [](const Slot& s) { return Traits::hash(s.key); }, [](const Slot& s) { return Traits::empty(s.key); });
    size_--;
    return true;
  }
  void clear() {
    slots_.assign(initial_, Slot{});
    size_ = 0;
  }
  // f(key, value) for every entry, in slot order.
  template <class F>
  void for_each(F&& f) const {
    for (const Slot& s : slots_)
      if (!Traits::empty(s.key)) f(s.key, s.value);
  }

  size_t size() const { return size_; }
  size_t memory_bytes() const { return slots_.capacity() * sizeof(Slot); }

 private:
  size_t mask() const { return slots_.size() - 1; }
  size_t home(const Key& k) const { return Traits::hash(k) & mask(); }
  size_t next(size_t i) const { return (i + 1) & mask(); }

  Slot& slot_for(const Key& k, bool* fresh) {
    if ((size_ + 1) * 100 > slots_.size() * max_load_pct_) rehash(slots_.size() * 2);
    for (size_t i = home(k);; i = next(i)) {
      Slot& s = slots_[i];
      if (Traits::empty(s.key)) {
        s.key = k;
        size_++;
        *fresh = true;
        return s;
      }
      if (s.key == k) return s;
    }
  }
  void rehash(size_t capacity) {
    std::vector<Slot> old(capacity);
    old.swap(slots_);
    size_ = 0;
    for (const Slot& s : old)
      if (!Traits::empty(s.key)) put(s.key, s.value);
  }

  size_t initial_;
  unsigned max_load_pct_;
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace mch
