// Unix domain socket transport: see uds.h.
#include "transport/uds.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"
#include "transport/socket_stream.h"

namespace mch {

namespace {

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

[[noreturn]] void fail_closing(int fd, EngineError::Kind kind, const std::string& msg) {
  ::close(fd);
  throw EngineError(kind, msg);
}

}  // namespace

void check_unix_socket_path(const std::string& path) {
  sockaddr_un addr;
  if (path.empty()) throw EngineError(EngineError::kInvalid, "node socket path is empty");
  if (path.size() >= sizeof(addr.sun_path))
    throw EngineError(EngineError::kInvalid,
                      "node socket path '" + path + "' is " + std::to_string(path.size()) +
                          " bytes; Unix socket paths are limited to " + std::to_string(sizeof(addr.sun_path) - 1) +
                          " bytes: choose a shorter path (for example under /run or /tmp)");
}

// A socket file at path_: a live node (refuse) or the leftover of one that died (remove it)?
void UnixListener::replace_stale_socket() {
  struct stat st;
  if (lstat(path_.c_str(), &st) != 0) return;
  if (!S_ISSOCK(st.st_mode))
    throw EngineError(EngineError::kInvalid,
                      "'" + path_ + "' exists and is not a socket; remove it or choose another node socket path");
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) throw EngineError(EngineError::kIo, std::string("socket: ") + strerror(errno));
  sockaddr_un addr = unix_address(path_);
  int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  ::close(probe);
  if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
    throw EngineError(EngineError::kInUse, "a node is already serving " + path_);
  if (err == ECONNREFUSED) {
    if (unlink(path_.c_str()) != 0 && errno != ENOENT)
      throw EngineError(EngineError::kIo, "cannot remove the stale socket " + path_ + ": " + strerror(errno));
  } else if (err != ENOENT) {
    throw EngineError(EngineError::kIo, "cannot probe the socket " + path_ + ": " + strerror(err));
  }
}

UnixListener::UnixListener(std::string path, uint32_t mode) : path_(std::move(path)) {
  check_unix_socket_path(path_);
  replace_stale_socket();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw EngineError(EngineError::kIo, std::string("socket: ") + strerror(errno));
  // Linux creates the file with the socket's own mode less the umask: never wider than `mode`.
  (void)fchmod(fd, mode & 07777);
  sockaddr_un addr = unix_address(path_);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    if (e == EADDRINUSE) fail_closing(fd, EngineError::kInUse, "a node is already serving " + path_);
    fail_closing(fd, e == EROFS || e == EACCES ? EngineError::kInvalid : EngineError::kIo,
                 "cannot create the node socket " + path_ + ": " + strerror(e) +
                     (e == EROFS ? "; choose a node.socket on a writable file system"
                                 : e == EACCES ? "; choose a node.socket in a directory this user may write" : ""));
  }
  if (chmod(path_.c_str(), mode & 07777) != 0 || listen(fd, 128) != 0) {
    int e = errno;
    unlink(path_.c_str());
    fail_closing(fd, EngineError::kIo, "cannot serve on " + path_ + ": " + strerror(e));
  }
  struct stat st;
  if (stat(path_.c_str(), &st) == 0) {
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  fd_ = fd;
}

std::unique_ptr<Stream> UnixListener::accept(int wake_fd, int timeout_ms) {
  pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  int pr = poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
  if (pr <= 0 || !(p[0].revents & POLLIN)) return nullptr;
  int fd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) usleep(10000);  // let descriptors free up
    return nullptr;
  }
  return std::make_unique<SocketStream>(fd, true);
}

void UnixListener::close() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  // Remove the socket file only if it is still ours (a newer node may have replaced it).
  struct stat st;
  if (stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) unlink(path_.c_str());
}

UnixEndpoint::UnixEndpoint(std::string path) : path_(std::move(path)) { check_unix_socket_path(path_); }

std::unique_ptr<Stream> UnixEndpoint::connect(int timeout_ms, int* err, std::string* msg) const {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    *msg = std::string("socket: ") + strerror(errno);
    return nullptr;
  }
  // Backstops for the kernel's own waits (connect() on a full backlog honours SO_SNDTIMEO);
  // stream I/O is non-blocking with deadlines.
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_un addr = unix_address(path_);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return std::make_unique<SocketStream>(fd, true);
  int e = errno;
  ::close(fd);
  *err = e == EAGAIN ? ETIMEDOUT : e;
  *msg = *err == ETIMEDOUT ? "node at " + path_ + " did not answer within " + std::to_string(timeout_ms) + " ms"
                           : "cannot connect to the node at " + path_ + ": " + strerror(e) +
                                 (e == ENOENT || e == ECONNREFUSED ? " (is the node running?)" : "");
  return nullptr;
}

}  // namespace mch
