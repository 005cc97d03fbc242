// Per-key result codes shared by every layer and by the Python package.
//
// MCH_STATUS_CODES is the one list: it defines `enum class Status`, and the extension exports it
// (`_native.STATUS_CODES`) so `mooncake_hicache.errors.ErrorCode` is built from it; nothing
// copies the numbers by hand. The values are those of the first release (NOT_FOUND and
// INVALID_PARAMS match the Mooncake store's numbers); renumbering is a separate change.
//
// Batch calls return int32/int64 per key (bytes or a negative code): status_code() converts.
#pragma once
#include <cstdint>

namespace mch {

//  X(enumerator, Python name, value, what it means)
#define MCH_STATUS_CODES(X)                                                                          \
  X(kOk, OK, 0, "success")                                                                           \
  X(kInvalidParams, INVALID_PARAMS, -600, "empty key, null pointer, bad sizes or list lengths")      \
  X(kBufferTooSmall, BUFFER_TOO_SMALL, -601, "the stored value is larger than the caller's buffers") \
  X(kValueTooLarge, VALUE_TOO_LARGE, -602, "a value larger than the tier can hold in one slot/region") \
  X(kKeyTooLong, KEY_TOO_LONG, -603, "key longer than MAX_KEY_LEN bytes")                            \
  X(kUnregisteredBuffer, UNREGISTERED_BUFFER, -604, "pointer range not inside a registered buffer")  \
  X(kNotFound, NOT_FOUND, -704, "miss (also: a record that failed its checksum)")                    \
  X(kIoError, IO_ERROR, -800, "the device failed the read or write")                                 \
  X(kNoSpace, NO_SPACE, -802, "nothing could be evicted to make room")                               \
  X(kClosed, CLOSED, -900, "the store was closed")                                                   \
  X(kNodeUnavailable, NODE_UNAVAILABLE, -901, "the node is not running or did not answer in time")

enum class Status : int32_t {
#define MCH_STATUS_ENUMERATOR(id, name, value, doc) id = value,
  MCH_STATUS_CODES(MCH_STATUS_ENUMERATOR)
#undef MCH_STATUS_ENUMERATOR
};

// The integer a batch call stores for `s`.
constexpr int32_t status_code(Status s) { return static_cast<int32_t>(s); }

struct StatusInfo {
  const char* name;  // the Python ErrorCode member name
  int32_t value;
  const char* doc;
};

inline constexpr StatusInfo kStatusTable[] = {
#define MCH_STATUS_ROW(id, name, value, doc) {#name, value, doc},
    MCH_STATUS_CODES(MCH_STATUS_ROW)
#undef MCH_STATUS_ROW
};

}  // namespace mch
