// TCP: the transport between hosts (the cluster's nodes and the ranks of other hosts).
//
// TcpListener binds one address only (the configured one, never a wildcard unless asked) and
// hands out connections as SocketStreams, or as raw non-blocking descriptors for an epoll
// acceptor (node/peer_server.h) that must not allocate anything per connection before it has
// authenticated the peer. TcpEndpoint connects to host:port with a deadline (non-blocking
// connect + poll), either whole (connect()) or started for a multiplexer (connect_start()).
//
// Every socket gets TCP_NODELAY (frames are written whole; Nagle would hold back a small
// request), keepalive probes (a peer that vanished without a FIN is noticed on an idle pooled
// connection) and close-on-exec. Buffer sizes are left to the kernel's autotuning by default
// (net.ipv4.tcp_rmem / tcp_wmem: fixed SO_SNDBUF / SO_RCVBUF would switch autotuning off);
// TcpOptions can pin them.
//
// Host names are resolved once, when a listener or endpoint is built (getaddrinfo; numeric
// addresses never touch DNS). Listener: accept from one thread; the rest from any thread.
#pragma once
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>

#include "transport/stream.h"

namespace mch {

struct TcpOptions {
  int send_buffer = 0;  // SO_SNDBUF bytes; 0: the kernel's autotuning
  int recv_buffer = 0;  // SO_RCVBUF bytes; 0: the kernel's autotuning
};

// TCP_NODELAY, keepalive and the buffer sizes of `opt` on a TCP socket.
void tune_tcp_socket(int fd, const TcpOptions& opt);

// A resolved socket address.
struct SocketAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;  // "host:port" as given, for messages
};
// Resolves host (a name or a numeric IPv4/IPv6 address) and port. Throws EngineError(kInvalid)
// naming the host when it cannot be resolved.
SocketAddress resolve_tcp(const std::string& host, uint16_t port);

class TcpListener final : public Listener {
 public:
  // Binds host:port (port 0: any free port, see port()) and listens. Throws EngineError:
  // kInvalid for a host that cannot be resolved or is not an address of this machine,
  // kInUse when the port is taken, kIo otherwise.
  TcpListener(const std::string& host, uint16_t port, TcpOptions opt = {}, int backlog = 1024);
  ~TcpListener() override { close(); }
  std::unique_ptr<Stream> accept(int wake_fd, int timeout_ms) override;
  // One pending connection as a tuned, non-blocking descriptor, or -1 (none pending: errno
  // EAGAIN; EMFILE/ENFILE when out of descriptors). For an epoll acceptor.
  int accept_fd();
  int fd() const { return fd_; }        // the listening socket (to register with epoll)
  uint16_t port() const { return port_; }  // the bound port (the kernel's pick for port 0)
  void close() override;
  std::string address() const override { return address_; }

 private:
  TcpOptions opt_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::string address_;
};

class TcpEndpoint final : public Endpoint {
 public:
  // Resolves now (EngineError kInvalid when the host cannot be resolved).
  TcpEndpoint(const std::string& host, uint16_t port, TcpOptions opt = {});
  std::unique_ptr<Stream> connect(int timeout_ms, int* err, std::string* msg) const override;
  // Starts a non-blocking connect: a descriptor whose connection completes (or fails: read
  // SO_ERROR) when it polls writable, or -1 with *err. For a caller multiplexing several peers.
  int connect_start(int* err) const;
  std::string address() const override { return addr_.text; }

 private:
  SocketAddress addr_;
  TcpOptions opt_;
};

// The connection result of a descriptor from connect_start() that polled writable: 0 or errno.
int connect_result(int fd);

}  // namespace mch
