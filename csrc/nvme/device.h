// Device: the NVMe engine's data file or block device. Opening it validates the geometry, takes
// an exclusive flock (one engine per file), creates the layout of a blank file or checks the
// superblock of an existing one, and starts a new life (boot epoch, record_format.h).
//
// Owns the file descriptor (closed by close() or the destructor). Immutable after open(), so any
// thread may read its fields; the engine serialises close() against its callers.
#pragma once
#include <cstdint>
#include <string>

#include "nvme/fault_injector.h"
#include "nvme/options.h"
#include "nvme/record_format.h"

namespace mch {

class Device {
 public:
  // Opens `opt.path` (creating it) for `opt`'s geometry. Throws EngineError that names the
  // setting to change (kInvalid), kInUse for a locked file, kFormat for a foreign file.
  explicit Device(const NvmeOptions& opt);
  ~Device() { close(); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  int fd() const { return fd_; }
  // A read-only descriptor of the same file (-1 if it could not be opened), for readers the
  // engine hands the file to (they never write, and hold no lock on it).
  int read_fd() const { return read_fd_; }
  uint64_t region_count() const { return region_count_; }
  uint64_t capacity() const { return region_count_ * region_size_; }  // bytes given to regions
  uint64_t region_size() const { return region_size_; }
  uint64_t region_base(uint32_t r) const { return disk::kDataOffset + uint64_t(r) * region_size_; }
  // First region and record sequence numbers of this life (above every earlier life's).
  uint64_t first_region_seq() const { return first_region_seq_; }
  uint64_t first_record_seq() const { return first_record_seq_; }
  // fdatasync: 0, or the errno value of a failure (the caller reports it).
  int sync() const;
  // Test hook (fault_injector.h): sync() consults it. Set once, before any other thread runs.
  void set_faults(FaultInjector* f) { faults_ = f; }
  void close();

 private:
  void open_locked_fd(bool direct_io);
  void measure(uint64_t capacity);
  void read_or_create_superblock();
  void check_superblock(const disk::Superblock& sb);
  void create_layout();
  void start_new_life(disk::Superblock sb);
  [[noreturn]] void fail(int kind, const std::string& msg);

  const std::string path_;
  const uint64_t region_size_;
  int fd_ = -1;
  int read_fd_ = -1;
  bool is_blockdev_ = false;
  uint64_t file_size_ = 0;
  uint64_t region_count_ = 0;
  uint64_t first_region_seq_ = 1;
  uint64_t first_record_seq_ = 1;
  FaultInjector* faults_ = nullptr;
};

}  // namespace mch
