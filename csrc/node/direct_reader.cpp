// DirectReader: see direct_reader.h.
#include "node/direct_reader.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

namespace mch {

namespace {
constexpr int kQueueDepth = 64;                 // reads in flight per call: the engine's default queue depth
constexpr int kMaxQueues = 4;                   // calls reading at once
// Staging per call: 64 x 1 MiB or 16 x 4 MiB in flight (fewer lose the disk to concurrent
// writes); a value larger than all of it goes straight to the caller.
constexpr uint64_t kStagingBytes = 64ull << 20;
constexpr size_t kKeptStaging = 2;               // staging buffers kept between calls
constexpr uint64_t kHugePage = 2ull << 20;

// The staging slot for values of up to `len` bytes: a power of two, so a value of up to 2 MiB
// never straddles a huge page.
uint64_t slot_bytes_for(uint64_t len) {
  uint64_t s = kBlock;
  while (s < len) s <<= 1;
  return s;
}
}  // namespace

class DirectReader::HugeBuffer {
 public:
  explicit HugeBuffer(uint64_t bytes) : mapped_(bytes + kHugePage) {
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    map_ = static_cast<uint8_t*>(p);
    base_ = map_ + (kHugePage - reinterpret_cast<uintptr_t>(map_) % kHugePage) % kHugePage;
    madvise(base_, bytes, MADV_HUGEPAGE);  // advice: 4 KiB pages still work, in more requests
    memset(base_, 0, bytes);               // faulted now, not inside a timed read
  }
  ~HugeBuffer() { munmap(map_, mapped_); }
  uint8_t* base() const { return base_; }

 private:
  uint64_t mapped_;
  uint8_t* map_ = nullptr;
  uint8_t* base_ = nullptr;
};

DirectReader::DirectReader(int fd, NoteLog& notes) : fd_(fd) {
  try {
    ctxs_ = std::make_unique<IoContextPool>(fd_, kQueueDepth, kMaxQueues, "auto", notes);
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

DirectReader::~DirectReader() {
  ctxs_.reset();  // queues drain what the kernel still owns first
  ::close(fd_);
}

std::unique_ptr<DirectReader::HugeBuffer> DirectReader::take_staging() {
  {
    std::lock_guard<std::mutex> lk(staging_mu_);
    if (!staging_.empty()) {
      std::unique_ptr<HugeBuffer> b = std::move(staging_.back());
      staging_.pop_back();
      return b;
    }
  }
  try {
    return std::make_unique<HugeBuffer>(kStagingBytes);
  } catch (const std::bad_alloc&) {
    return nullptr;  // the values go straight into the caller's buffers
  }
}

void DirectReader::give_staging(std::unique_ptr<HugeBuffer> b) {
  if (!b) return;
  std::lock_guard<std::mutex> lk(staging_mu_);
  if (staging_.size() < kKeptStaging) staging_.push_back(std::move(b));
}

void DirectReader::read(const std::vector<ValueRead>& reads, int64_t* results) {
  IoContextPool::Lease ctx(*ctxs_, "a direct read");
  if (!ctx) {
    for (size_t i = 0; i < reads.size(); i++) results[i] = status_code(Status::kIoError);
    return;
  }
  uint64_t longest = 0;
  for (const ValueRead& r : reads) longest = std::max(longest, align_up(r.len));
  ReadStaging st;
  st.slot_bytes = slot_bytes_for(longest);
  st.slots = static_cast<int>(std::min<uint64_t>(kQueueDepth, kStagingBytes / st.slot_bytes));
  std::unique_ptr<HugeBuffer> buf = st.slots > 0 ? take_staging() : nullptr;
  st.base = buf ? buf->base() : nullptr;
  read_values(*ctx, reads, [&](size_t i, int64_t r) { results[i] = r; }, buf ? &st : nullptr);
  give_staging(std::move(buf));
}

}  // namespace mch
