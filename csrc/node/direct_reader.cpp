// DirectReader: see direct_reader.h.
#include "node/direct_reader.h"

#include <unistd.h>

namespace mch {

namespace {
constexpr int kQueueDepth = 64;   // reads in flight per call: the engine's default queue depth
constexpr int kMaxQueues = 4;     // calls reading at once
}  // namespace

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

void DirectReader::read(const std::vector<ValueRead>& reads, int64_t* results) {
  IoContextPool::Lease ctx(*ctxs_, "a direct read");
  if (!ctx) {
    for (size_t i = 0; i < reads.size(); i++) results[i] = status_code(Status::kIoError);
    return;
  }
  read_values(*ctx, reads, [&](size_t i, int64_t r) { results[i] = r; });
}

}  // namespace mch
