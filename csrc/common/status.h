// Per-key result codes shared by every layer and by the Python package.
//
// MCH_STATUS_CODES is the one list: it defines `enum class Status`, and the extension exports it
// (`_native.STATUS_CODES`, `_native.STATUS_MOONCAKE_NAMES`) so `mooncake_hicache.errors.ErrorCode`
// is built from it; nothing copies the numbers by hand.
//
// Numbers follow the Mooncake store's ErrorCode table (kvcache-ai/Mooncake,
// mooncake-store/include/types.h) so that code written against Mooncake's Python API reads our
// results the same way: a code with a Mooncake counterpart has that counterpart's number; a code
// without one uses a number Mooncake leaves unused (-602, -604).
//
// Batch calls return int32/int64 per key (bytes or a negative code): status_code() converts.
#pragma once
#include <cstdint>

namespace mch {

//  X(enumerator, Python name, value, Mooncake counterpart ("" if none), what it means)
#define MCH_STATUS_CODES(X)                                                                                 \
  X(kOk, OK, 0, "OK", "success")                                                                            \
  X(kBufferTooSmall, BUFFER_TOO_SMALL, -10, "BUFFER_OVERFLOW", "the stored value is larger than the caller's buffers") \
  X(kNoSpace, NO_SPACE, -200, "NO_AVAILABLE_HANDLE", "nothing could be evicted to make room")              \
  X(kKeyTooLong, KEY_TOO_LONG, -400, "INVALID_KEY", "key longer than MAX_KEY_LEN bytes")                   \
  X(kInvalidParams, INVALID_PARAMS, -600, "INVALID_PARAMS", "empty key, null pointer, bad sizes or list lengths") \
  X(kValueTooLarge, VALUE_TOO_LARGE, -602, "", "a value larger than the tier can hold in one slot/region")  \
  X(kUnregisteredBuffer, UNREGISTERED_BUFFER, -604, "", "pointer range not inside a registered buffer")    \
  X(kNotFound, NOT_FOUND, -704, "OBJECT_NOT_FOUND", "miss (also: a record that failed its checksum)")      \
  X(kIoError, IO_ERROR, -800, "TRANSFER_FAIL", "the device failed the read or write")                      \
  X(kNodeUnavailable, NODE_UNAVAILABLE, -900, "RPC_FAIL", "the node is not running or did not answer in time") \
  X(kClosed, CLOSED, -1010, "UNAVAILABLE_IN_CURRENT_STATUS", "the store was closed")                        \
  X(kUnsupported, UNSUPPORTED, -1011, "UNAVAILABLE_IN_CURRENT_MODE", "not possible with this configuration (remove_prefix on a DRAM tier that keeps no keys)")

enum class Status : int32_t {
#define MCH_STATUS_ENUMERATOR(id, name, value, mooncake, doc) id = value,
  MCH_STATUS_CODES(MCH_STATUS_ENUMERATOR)
#undef MCH_STATUS_ENUMERATOR
};

// The integer a batch call stores for `s`.
constexpr int32_t status_code(Status s) { return static_cast<int32_t>(s); }

struct StatusInfo {
  const char* name;      // the Python ErrorCode member name
  int32_t value;
  const char* mooncake;  // the Mooncake ErrorCode of the same number and meaning ("" if none)
  const char* doc;
};

inline constexpr StatusInfo kStatusTable[] = {
#define MCH_STATUS_ROW(id, name, value, mooncake, doc) {#name, value, mooncake, doc},
    MCH_STATUS_CODES(MCH_STATUS_ROW)
#undef MCH_STATUS_ROW
};

}  // namespace mch
