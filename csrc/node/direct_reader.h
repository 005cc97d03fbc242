// DirectReader: a node client's reader of the node's NVMe data file, for pages the node located
// instead of staging them in DRAM (GET_LOCATE; docs/architecture.md, "Direct reads"). It reads
// each value straight into the caller's buffers (O_DIRECT where they are aligned: one copy, disk
// to caller) through its own I/O queues, and verifies each value's checksum: a mismatch is a miss.
//
// Owns the descriptor the node sent (OPEN_DATA, read-only) and its queues; one per node
// instance. Any thread may call read(); each call takes a queue of its own.
#pragma once
#include <cstdint>
#include <memory>
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

 private:
  int fd_;
  std::unique_ptr<IoContextPool> ctxs_;
};

}  // namespace mch
