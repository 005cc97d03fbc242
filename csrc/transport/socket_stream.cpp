// SocketStream: see socket_stream.h.
#include "transport/socket_stream.h"

#include "transport/io_vec.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

namespace mch {

int ms_left(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return -1;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

SocketStream::SocketStream(int fd, bool unix_socket) : fd_(fd), unix_(unix_socket) {
  if (!unix_) return;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    pid_ = cred.pid;
    uid_ = cred.uid;
  }
}

SocketStream::~SocketStream() {
  if (fd_ >= 0) ::close(fd_);
}

void SocketStream::shutdown() { ::shutdown(fd_, SHUT_RDWR); }

bool SocketStream::quiet() {
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 0;
}

int SocketStream::wait(short events, Clock::time_point deadline, int wake_fd) {
  for (;;) {
    pollfd p[2] = {{fd_, events, 0}, {wake_fd, POLLIN, 0}};
    int pr = ::poll(p, wake_fd >= 0 ? 2 : 1, ms_left(deadline));  // a passed deadline: just look
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) return errno;
    if (pr == 0) return ETIMEDOUT;
    if (wake_fd >= 0 && p[1].revents) return ESHUTDOWN;
    return 0;
  }
}

int SocketStream::send_all(const void* buf, size_t n, Clock::time_point deadline) {
  const uint8_t* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::send(fd_, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int e = wait(POLLOUT, deadline, -1);
      if (e) return e;
      continue;
    }
    return r < 0 ? errno : EPIPE;
  }
  return 0;
}

int SocketStream::send_with_fd(const void* buf, size_t n, int fd, Clock::time_point deadline) {
  if (!unix_) return ENOTSUP;
  iovec iov{const_cast<void*>(buf), n};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  ssize_t sent;
  for (;;) {  // the descriptor rides on the first byte: that sendmsg must go out whole or not at all
    sent = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent >= 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    int e = wait(POLLOUT, deadline, -1);
    if (e) return e;
  }
  size_t done = static_cast<size_t>(sent);
  return done < n ? send_all(static_cast<const uint8_t*>(buf) + done, n - done, deadline) : 0;
}

ssize_t SocketStream::recv_with_fd(void* buf, size_t n, int* fd_out) {
  iovec iov{buf, n};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t r = ::recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (r <= 0) return r;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t k = 0; k < nfd; k++) {
      int got;
      memcpy(&got, CMSG_DATA(cm) + k * sizeof(int), sizeof got);
      if (fd_out && *fd_out < 0)
        *fd_out = got;
      else
        ::close(got);  // never leak a descriptor nobody asked for
    }
  }
  return r;
}

ssize_t SocketStream::recv_some(void* buf, size_t n, Clock::time_point deadline, int wake_fd, int* fd_out) {
  for (;;) {
    // A descriptor nobody asked for is closed by the kernel when read with plain recv().
    ssize_t r = unix_ && fd_out ? recv_with_fd(buf, n, fd_out) : ::recv(fd_, buf, n, MSG_DONTWAIT);
    if (r > 0) return r;
    if (r == 0) return -ECONNRESET;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    int e = wait(POLLIN, deadline, wake_fd);
    if (e) return -e;
  }
}

ssize_t SocketStream::send_some_vec(const iovec* iov, int n) {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(n);
  for (;;) {
    ssize_t r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

ssize_t SocketStream::recv_some_vec(const iovec* iov, int n) {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(n);
  for (;;) {
    ssize_t r = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (r > 0) return r;
    if (r == 0) return -ECONNRESET;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

int SocketStream::send_vec(const iovec* iov, int n, Clock::time_point deadline) {
  IoVec v;
  for (int i = 0; i < n; i++) v.add(iov[i].iov_base, iov[i].iov_len);
  while (!v.done()) {
    ssize_t r = send_some_vec(v.data(), v.count());
    if (r >= 0) {
      v.advance(static_cast<size_t>(r));
      continue;
    }
    if (r != -EAGAIN) return static_cast<int>(-r);
    int e = wait(POLLOUT, deadline, -1);
    if (e) return e;
  }
  return 0;
}

int SocketStream::recv_vec(const iovec* iov, int n, Clock::time_point deadline, int wake_fd) {
  IoVec v;
  for (int i = 0; i < n; i++) v.add(iov[i].iov_base, iov[i].iov_len);
  while (!v.done()) {
    ssize_t r = recv_some_vec(v.data(), v.count());
    if (r > 0) {
      v.advance(static_cast<size_t>(r));
      continue;
    }
    if (r != -EAGAIN) return static_cast<int>(-r);
    int e = wait(POLLIN, deadline, wake_fd);
    if (e) return e;
  }
  return 0;
}

}  // namespace mch
