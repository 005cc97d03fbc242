// DirectReader: a node client's reader of the node's NVMe data file, for pages the node located
// instead of staging them in DRAM (GET_LOCATE; docs/architecture.md, "Direct reads"). It reads
// each value into staging memory of its own in huge pages (so the device gets the value as one
// request, whatever the caller's pages), verifies its checksum (a mismatch is a miss) and copies
// it into the caller's buffers; a value larger than a staging slot is read straight into them
// (O_DIRECT where they are aligned).
//
// Owns the descriptor the node sent (OPEN_DATA, read-only), its queues and its staging buffers;
// one per node instance. Any thread may call read(); each call takes a queue and a staging
// buffer of its own (staging_mu_ guards the free list).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/note_log.h"
#include "nvme/io_context.h"
#include "nvme/value_reader.h"

namespace mch {

class DirectReader {
 public:
  // Takes ownership of fd. Throws EngineError when no I/O queue can be set up on it.
  DirectReader(int fd, NoteLog& notes);
  ~DirectReader();
  DirectReader(const DirectReader&) = delete;
  DirectReader& operator=(const DirectReader&) = delete;

  // results[j] for reads[j]: the length read, or NOT_FOUND (checksum mismatch), IO_ERROR,
  // INVALID_PARAMS (a buffer layout one I/O cannot take).
  void read(const std::vector<ValueRead>& reads, int64_t* results);

  // Staging memory in 2 MiB-aligned huge pages (transparent, advised), faulted in once.
  class HugeBuffer;

 private:
  std::unique_ptr<HugeBuffer> take_staging();
  void give_staging(std::unique_ptr<HugeBuffer> b);

  int fd_;
  std::unique_ptr<IoContextPool> ctxs_;
  std::mutex staging_mu_;
  std::vector<std::unique_ptr<HugeBuffer>> staging_;  // free, for the next calls
};

}  // namespace mch
