// The transport seam: what the node server and the node client need from a connection, so the
// Unix socket of today, the TCP of the cluster and RDMA's control path plug in side by side.
//
//   Stream    one connected byte stream: send all / receive some with deadlines, and (where the
//             transport can) a file descriptor riding on a message (SCM_RIGHTS).
//   Listener  accepts Streams (server side).
//   Endpoint  where a node listens; connects Streams to it (client side). A client that talks
//             to several nodes holds one Endpoint per node.
//
// Errors are errno values: ETIMEDOUT past a deadline, ECONNRESET for an orderly close by the
// peer, ESHUTDOWN when the wake descriptor fired, ENOTSUP for fd passing where there is none.
// A Stream is used by one thread at a time; Listener::accept by one thread; Endpoint::connect
// from any thread.
#pragma once
#include <sys/types.h>
#include <sys/uio.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace mch {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline` (0 when passed; -1, i.e. forever, for time_point::max()).
int ms_left(Clock::time_point deadline);

class Stream {
 public:
  virtual ~Stream() = default;
  // Sends all n bytes before `deadline`. Returns 0 or an errno value.
  virtual int send_all(const void* buf, size_t n, Clock::time_point deadline) = 0;
  // send_all() with descriptor `fd` attached to the first byte. ENOTSUP where not supported.
  virtual int send_with_fd(const void* buf, size_t n, int fd, Clock::time_point deadline) = 0;
  // Receives 1..n bytes before `deadline` (time_point::max(): no limit), returning how many, or
  // a negative errno. wake_fd >= 0 is polled too (readable: -ESHUTDOWN). A descriptor that came
  // with the bytes is stored in *fd_out (when given and still -1) or closed.
  virtual ssize_t recv_some(void* buf, size_t n, Clock::time_point deadline, int wake_fd, int* fd_out) = 0;
  // Waits until bytes (or the peer's close) can be read, by `deadline`. 0, ETIMEDOUT, ESHUTDOWN
  // (wake_fd readable) or an errno value. Saves a futile read when the caller knows nothing has
  // arrived yet (a reply just asked for, a server between requests).
  virtual int wait_readable(Clock::time_point deadline, int wake_fd) = 0;
  // Nothing is waiting to be read and the peer has not closed (a pooled idle stream is usable).
  virtual bool quiet() = 0;
  virtual void shutdown() = 0;  // wakes a thread blocked on this stream; further I/O fails
  virtual int32_t peer_pid() const { return 0; }  // where the transport knows it
  // The peer's uid from the kernel (SO_PEERCRED), or -1 where the transport carries none (TCP).
  virtual int64_t peer_uid() const { return -1; }
  virtual bool passes_fds() const = 0;

  // ---- vectored I/O (value bytes inline in the stream: the TCP data path) ----
  // Sends every byte of iov[0..n) in order before `deadline`. 0 or an errno value.
  virtual int send_vec(const iovec* iov, int n, Clock::time_point deadline);
  // Receives exactly the bytes iov[0..n) describe before `deadline` (wake_fd as recv_some).
  virtual int recv_vec(const iovec* iov, int n, Clock::time_point deadline, int wake_fd);
  // For a caller that multiplexes many streams with poll() (the pool client): the descriptor
  // to poll (-1: none), and non-blocking vectored I/O that moves what it can right now:
  // bytes moved, or a negative errno (-EAGAIN: nothing now; -ECONNRESET: the peer closed).
  virtual int poll_fd() const { return -1; }
  virtual ssize_t send_some_vec(const iovec* iov, int n) { return -ENOTSUP; }
  virtual ssize_t recv_some_vec(const iovec* iov, int n) { return -ENOTSUP; }
};

class Listener {
 public:
  virtual ~Listener() = default;
  // Waits up to timeout_ms (or until wake_fd is readable) for one connection; nullptr if none.
  virtual std::unique_ptr<Stream> accept(int wake_fd, int timeout_ms) = 0;
  // Stops listening (and removes what start-up created, such as a socket file). Idempotent.
  virtual void close() = 0;
  virtual std::string address() const = 0;
};

class Endpoint {
 public:
  virtual ~Endpoint() = default;
  // A connected stream, or nullptr with *err (an errno value) and *msg (for the user).
  virtual std::unique_ptr<Stream> connect(int timeout_ms, int* err, std::string* msg) const = 0;
  virtual std::string address() const = 0;  // for messages: "node at <address>"
};

}  // namespace mch
