// TCP transport: see tcp.h.
#include "transport/tcp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "transport/socket_stream.h"

namespace mch {

namespace {

std::string host_port(const std::string& host, uint16_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

void set_int(int fd, int level, int name, int value) { setsockopt(fd, level, name, &value, sizeof value); }

}  // namespace

void tune_tcp_socket(int fd, const TcpOptions& opt) {
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 30);  // seconds idle before the first probe
  set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, 5);
  set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, 3);
  if (opt.send_buffer > 0) set_int(fd, SOL_SOCKET, SO_SNDBUF, opt.send_buffer);
  if (opt.recv_buffer > 0) set_int(fd, SOL_SOCKET, SO_RCVBUF, opt.recv_buffer);
}

SocketAddress resolve_tcp(const std::string& host, uint16_t port) {
  SocketAddress out;
  out.text = host_port(host, port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || !res)
    throw EngineError(EngineError::kInvalid, "cannot resolve host '" + host + "': " + gai_strerror(rc) +
                                                 "; give an IP address or a name this machine resolves");
  memcpy(&out.addr, res->ai_addr, res->ai_addrlen);
  out.len = res->ai_addrlen;
  freeaddrinfo(res);
  return out;
}

// ---- listener -----------------------------------------------------------------------------

TcpListener::TcpListener(const std::string& host, uint16_t port, TcpOptions opt, int backlog) : opt_(opt) {
  SocketAddress a = resolve_tcp(host, port);
  int fd = socket(a.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw EngineError(EngineError::kIo, std::string("socket: ") + strerror(errno));
  set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);  // a restarted node rebinds past TIME_WAIT
  if (bind(fd, reinterpret_cast<sockaddr*>(&a.addr), a.len) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EADDRINUSE)
      throw EngineError(EngineError::kInUse, "TCP port " + a.text + " is in use (another node?); choose another "
                                             "cluster.listen_port or stop the other process");
    if (e == EADDRNOTAVAIL)
      throw EngineError(EngineError::kInvalid, "cannot listen on " + a.text + ": '" + host +
                                                   "' is not an address of this machine; set cluster.listen_host "
                                                   "to one of its addresses");
    throw EngineError(EngineError::kIo, "cannot bind " + a.text + ": " + strerror(e));
  }
  if (listen(fd, backlog) != 0) {
    int e = errno;
    ::close(fd);
    throw EngineError(EngineError::kIo, "listen on " + a.text + ": " + strerror(e));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  address_ = host_port(host, port_);
  fd_ = fd;
}

int TcpListener::accept_fd() {
  int fd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) return -1;
  tune_tcp_socket(fd, opt_);
  return fd;
}

std::unique_ptr<Stream> TcpListener::accept(int wake_fd, int timeout_ms) {
  pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  int pr = poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
  if (pr <= 0 || !(p[0].revents & POLLIN)) return nullptr;
  int fd = accept_fd();
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) usleep(10000);  // let descriptors free up
    return nullptr;
  }
  return std::make_unique<SocketStream>(fd, false);
}

void TcpListener::close() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
}

// ---- endpoint -----------------------------------------------------------------------------

TcpEndpoint::TcpEndpoint(const std::string& host, uint16_t port, TcpOptions opt)
    : addr_(resolve_tcp(host, port)), opt_(opt) {}

int TcpEndpoint::connect_start(int* err) const {
  int fd = socket(addr_.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  tune_tcp_socket(fd, opt_);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr_.addr), addr_.len);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0 || errno == EINPROGRESS) return fd;
  *err = errno;
  ::close(fd);
  return -1;
}

int connect_result(int fd) {
  int e = 0;
  socklen_t len = sizeof e;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) return errno;
  return e;
}

std::unique_ptr<Stream> TcpEndpoint::connect(int timeout_ms, int* err, std::string* msg) const {
  int fd = connect_start(err);
  if (fd >= 0) {
    pollfd p{fd, POLLOUT, 0};
    int pr;
    do {
      pr = poll(&p, 1, timeout_ms);
    } while (pr < 0 && errno == EINTR);
    *err = pr == 0 ? ETIMEDOUT : pr < 0 ? errno : connect_result(fd);
    if (*err == 0) return std::make_unique<SocketStream>(fd, false);
    ::close(fd);
  }
  *msg = *err == ETIMEDOUT ? "node at " + addr_.text + " did not accept a connection within " +
                                 std::to_string(timeout_ms) + " ms"
                           : "cannot connect to the node at " + addr_.text + ": " + strerror(*err);
  return nullptr;
}

}  // namespace mch
