// Block alignment (kBlock, align_up, is_aligned) and AlignedBuffer: an owned, zero-filled,
// page-aligned byte buffer (mmap-backed) for the staging/bounce memory that O_DIRECT I/O needs.
// AlignedBuffer is not thread-safe; it is owned by one user.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>

namespace mch {

// The unit of O_DIRECT I/O and of every size in the data file and the DRAM slabs.
constexpr size_t kBlock = 4096;
constexpr uint64_t align_up(uint64_t v) { return (v + kBlock - 1) & ~(uint64_t)(kBlock - 1); }
constexpr bool is_aligned(uint64_t v) { return (v & (kBlock - 1)) == 0; }

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size) : size_(size) {
    if (size_ == 0) return;
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<uint8_t*>(p);
  }
  ~AlignedBuffer() { reset(); }
  AlignedBuffer(AlignedBuffer&& o) noexcept { *this = std::move(o); }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      std::swap(data_, o.data_);
      std::swap(size_, o.size_);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool contains(const void* p, size_t len) const {
    auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(data_);
    return data_ != nullptr && a >= b && a + len <= b + size_;
  }

 private:
  void reset() {
    if (data_) munmap(data_, size_);
    data_ = nullptr;
    size_ = 0;
  }
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mch
