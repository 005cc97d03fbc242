// Stream: the generic vectored I/O of any stream (one send_all / recv_some per range); a
// transport with real vectored I/O (SocketStream) overrides these.
#include "transport/stream.h"

#include <cstdint>

namespace mch {

int Stream::send_vec(const iovec* iov, int n, Clock::time_point deadline) {
  for (int i = 0; i < n; i++) {
    int e = send_all(iov[i].iov_base, iov[i].iov_len, deadline);
    if (e) return e;
  }
  return 0;
}

int Stream::recv_vec(const iovec* iov, int n, Clock::time_point deadline, int wake_fd) {
  for (int i = 0; i < n; i++) {
    uint8_t* p = static_cast<uint8_t*>(iov[i].iov_base);
    size_t left = iov[i].iov_len;
    while (left > 0) {
      ssize_t r = recv_some(p, left, deadline, wake_fd, nullptr);
      if (r < 0) return static_cast<int>(-r);
      p += r;
      left -= static_cast<size_t>(r);
    }
  }
  return 0;
}

}  // namespace mch
