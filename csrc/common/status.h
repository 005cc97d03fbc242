// Per-key result codes shared by every engine and the Python layer.
// Keep in sync with mooncake_hicache/errors.py (ErrorCode).
#pragma once
#include <cstdint>

namespace mch {

enum Status : int32_t {
  kOk = 0,
  kInvalidParams = -600,
  kBufferTooSmall = -601,
  kValueTooLarge = -602,
  kKeyTooLong = -603,
  kUnregisteredBuffer = -604,
  kNotFound = -704,
  kIoError = -800,
  kNoSpace = -802,
  kClosed = -900,
  kNodeUnavailable = -901,  // the node is not running or did not answer in time
};

}  // namespace mch
