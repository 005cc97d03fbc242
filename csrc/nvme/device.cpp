// Device implementation: read device.h (what opening checks) and record_format.h (superblock).
#include "nvme/device.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include "common/aligned_buffer.h"
#include "common/error.h"
#include "common/text.h"

namespace mch {

Device::Device(const NvmeOptions& opt) : path_(opt.path), region_size_(opt.region_size) {
  open_locked_fd(opt.direct_io);
  try {
    measure(opt.capacity);
    read_or_create_superblock();
    // For readers in other processes (a node client's direct reads): read-only, same flags.
    read_fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | (opt.direct_io ? O_DIRECT : 0));
  } catch (...) {
    close();
    throw;
  }
}

void Device::fail(int kind, const std::string& msg) {
  close();
  throw EngineError(static_cast<EngineError::Kind>(kind), msg);
}

void Device::close() {
  if (fd_ >= 0) ::close(fd_);
  if (read_fd_ >= 0) ::close(read_fd_);
  fd_ = read_fd_ = -1;
}

int Device::sync() const {
  int err = 0;
  if (faults_ && faults_->fire(FaultInjector::kSync, &err)) return err;
  return fdatasync(fd_) == 0 ? 0 : errno;
}

void Device::open_locked_fd(bool direct_io) {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | (direct_io ? O_DIRECT : 0), 0600);
  if (fd_ < 0) {
    int e = errno;
    if (e == EINVAL && direct_io)
      throw EngineError(EngineError::kInvalid,
                        "tiers.nvme.path '" + path_ + "': the file system does not support O_DIRECT; "
                        "put the file on a local disk or set tiers.nvme.direct_io: false");
    throw EngineError(EngineError::kInvalid, "tiers.nvme.path '" + path_ + "' cannot be opened (" + strerror(e) +
                                                 "); choose a writable location");
  }
  // A process that was just killed may hold the lock a few more milliseconds while the kernel
  // tears down its io_uring instances: retry briefly before calling the file busy.
  bool locked = false;
  for (int attempt = 0; attempt < 50 && !locked; attempt++) {
    locked = flock(fd_, LOCK_EX | LOCK_NB) == 0;
    if (!locked) usleep(10000);
  }
  if (!locked)
    fail(EngineError::kInUse, "tiers.nvme.path '" + path_ +
                                  "' is in use by another mooncake-hicache engine (it holds the file lock); "
                                  "stop that process or point tiers.nvme.path at another file");
}

// Sets region_count_ from the requested capacity and what the file or device can hold.
void Device::measure(uint64_t capacity) {
  struct stat st;
  if (fstat(fd_, &st) != 0) fail(EngineError::kIo, "fstat '" + path_ + "': " + strerror(errno));
  is_blockdev_ = S_ISBLK(st.st_mode);
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (is_blockdev_) {
    uint64_t dev_bytes = 0;
    if (ioctl(fd_, BLKGETSIZE64, &dev_bytes) != 0)
      fail(EngineError::kIo, "cannot read the size of block device '" + path_ + "': " + strerror(errno));
    if (dev_bytes <= disk::kDataOffset) fail(EngineError::kInvalid, "block device '" + path_ + "' is too small");
    if (capacity == 0) capacity = dev_bytes - disk::kDataOffset;
    if (capacity + disk::kDataOffset > dev_bytes)
      fail(EngineError::kInvalid, "tiers.nvme.capacity " + format_bytes(capacity) + " exceeds block device '" +
                                      path_ + "' (" + format_bytes(dev_bytes) + "); lower it or set 0 for the whole device");
  } else if (!S_ISREG(st.st_mode)) {
    fail(EngineError::kInvalid, "tiers.nvme.path '" + path_ + "' is neither a regular file nor a block device");
  } else if (capacity == 0) {
    fail(EngineError::kInvalid, "tiers.nvme.capacity 0 (whole device) is only valid for block devices; give a size");
  }
  region_count_ = capacity / region_size_;
  if (region_count_ < 2)
    fail(EngineError::kInvalid, "tiers.nvme.capacity " + format_bytes(capacity) + " holds fewer than two regions of " +
                                    format_bytes(region_size_) + "; raise capacity or lower region_size");
  if (region_count_ > 0xffffffffull) fail(EngineError::kInvalid, "tiers.nvme: too many regions; raise region_size");
}

void Device::read_or_create_superblock() {
  AlignedBuffer block(kBlock);
  ssize_t n = (!is_blockdev_ && file_size_ == 0) ? 0 : pread(fd_, block.data(), kBlock, 0);
  bool blank = n <= 0 || std::all_of(block.data(), block.data() + kBlock, [](uint8_t b) { return b == 0; });
  if (blank) return create_layout();
  disk::Superblock sb;
  memcpy(&sb, block.data(), sizeof(sb));
  check_superblock(sb);
  start_new_life(sb);
}

void Device::check_superblock(const disk::Superblock& sb) {
  if (memcmp(sb.magic, disk::kSuperMagic, 8) != 0)
    fail(EngineError::kFormat, "'" + path_ + "' exists and is not a mooncake-hicache data file; "
                                   "remove it or choose another tiers.nvme.path");
  if (sb.format_version != disk::kFormatVersion)
    fail(EngineError::kFormat, "'" + path_ + "' was written by data format version " + std::to_string(sb.format_version) +
                                   ", this build reads version " + std::to_string(disk::kFormatVersion) +
                                   "; remove the file (its cached pages are lost) or use a matching mooncake-hicache");
  if (!disk::superblock_valid(sb))
    fail(EngineError::kFormat, "'" + path_ + "' has a corrupt superblock; remove the file (its cached pages are lost)");
  if (sb.region_size != region_size_)
    fail(EngineError::kInvalid, "'" + path_ + "' was created with region_size " + format_bytes(sb.region_size) +
                                    " but tiers.nvme.region_size is " + format_bytes(region_size_) +
                                    "; set it back or remove the file");
  if (sb.region_count != region_count_)
    fail(EngineError::kInvalid, "'" + path_ + "' was created with capacity " + format_bytes(sb.region_count * sb.region_size) +
                                    " but tiers.nvme.capacity gives " + format_bytes(capacity()) +
                                    "; set it back or remove the file");
}

void Device::start_new_life(disk::Superblock sb) {
  sb.boot_epoch++;
  disk::seal_superblock(&sb);
  AlignedBuffer block(kBlock);
  memcpy(block.data(), &sb, sizeof(sb));
  if (pwrite(fd_, block.data(), kBlock, 0) != static_cast<ssize_t>(kBlock) || fdatasync(fd_) != 0)
    fail(EngineError::kIo, "cannot write the superblock of '" + path_ + "': " + strerror(errno));
  first_region_seq_ = (sb.boot_epoch << 32) | 1;
  first_record_seq_ = (sb.boot_epoch << 40) | 1;
}

void Device::create_layout() {
  const uint64_t file_bytes = disk::kDataOffset + capacity();
  const bool had_data = is_blockdev_ || file_size_ > 0;
  if (!is_blockdev_) {
    int rc = posix_fallocate(fd_, 0, static_cast<off_t>(file_bytes));
    if (rc == ENOSPC) {
      // Give back what the failed allocation took; if even that fails, say so.
      std::string left = ftruncate(fd_, 0) == 0 ? "" : std::string(" (and it could not be shrunk back: ") +
                                                           strerror(errno) + "; remove it)";
      fail(EngineError::kInvalid, "not enough free space for tiers.nvme.capacity " + format_bytes(capacity()) +
                                      " at '" + path_ + "'; lower capacity or free disk space" + left);
    }
    if (rc != 0 && ftruncate(fd_, static_cast<off_t>(file_bytes)) != 0)
      fail(EngineError::kIo, "cannot size '" + path_ + "': " + strerror(errno));
  }
  AlignedBuffer block(kBlock);
  if (had_data) {  // old bytes may hold trailers and records of an earlier life: invalidate them
    for (uint64_t r = 0; r < region_count_; r++)
      for (uint64_t off : {region_size_ - kBlock, uint64_t{0}})  // the trailer, the first record
        if (pwrite(fd_, block.data(), kBlock, static_cast<off_t>(region_base(r) + off)) != static_cast<ssize_t>(kBlock))
          fail(EngineError::kIo, "cannot initialise '" + path_ + "': " + strerror(errno));
  }
  disk::Superblock sb{};
  memcpy(sb.magic, disk::kSuperMagic, 8);
  sb.format_version = disk::kFormatVersion;
  sb.block_size = kBlock;
  sb.region_size = region_size_;
  sb.region_count = region_count_;
  sb.data_offset = disk::kDataOffset;
  sb.created_unix = static_cast<uint64_t>(time(nullptr));
  sb.boot_epoch = 0;
  start_new_life(sb);
}

}  // namespace mch
