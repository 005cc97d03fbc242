// SocketStream: a Stream over a connected stream socket (AF_UNIX or AF_INET/6). Non-blocking
// I/O with poll() deadlines, vectored (writev/readv) for value bytes. On a Unix socket a
// descriptor may ride on a message (SCM_RIGHTS) and the peer's pid and uid are known
// (SO_PEERCRED: the client's at connect(), the server's at listen(), as the kernel recorded
// them). Owns the socket; used by one thread at a time
// (shutdown() may come from another, to wake it).
#pragma once
#include <poll.h>

#include "transport/stream.h"

namespace mch {

class SocketStream final : public Stream {
 public:
  // Takes ownership of `fd`. unix_socket: SCM_RIGHTS and SO_PEERCRED are available.
  SocketStream(int fd, bool unix_socket);
  ~SocketStream() override;
  SocketStream(const SocketStream&) = delete;
  SocketStream& operator=(const SocketStream&) = delete;

  int send_all(const void* buf, size_t n, Clock::time_point deadline) override;
  int send_with_fd(const void* buf, size_t n, int fd, Clock::time_point deadline) override;
  ssize_t recv_some(void* buf, size_t n, Clock::time_point deadline, int wake_fd, int* fd_out) override;
  int wait_readable(Clock::time_point deadline, int wake_fd) override { return wait(POLLIN, deadline, wake_fd); }
  bool quiet() override;
  void shutdown() override;
  int32_t peer_pid() const override { return pid_; }
  int64_t peer_uid() const override { return uid_; }
  bool passes_fds() const override { return unix_; }
  // writev/readv with poll() deadlines; the non-blocking forms for multiplexers.
  int send_vec(const iovec* iov, int n, Clock::time_point deadline) override;
  int recv_vec(const iovec* iov, int n, Clock::time_point deadline, int wake_fd) override;
  int poll_fd() const override { return fd_; }
  ssize_t send_some_vec(const iovec* iov, int n) override;
  ssize_t recv_some_vec(const iovec* iov, int n) override;

 private:
  // Waits for `events` on the socket (and readability of wake_fd). 0, ETIMEDOUT, ESHUTDOWN or errno.
  int wait(short events, Clock::time_point deadline, int wake_fd);
  ssize_t recv_with_fd(void* buf, size_t n, int* fd_out);

  int fd_;
  bool unix_;
  int32_t pid_ = 0;
  int64_t uid_ = -1;
};

}  // namespace mch
