// Helpers for the node tests: a real node (TieredStore in DRAM + NodeServer on a Unix socket in
// a temporary directory) and a raw protocol connection that sends hand-built frames and reads
// whole frames back, so tests see exactly what goes over the wire.
#pragma once
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "node/node_server.h"
#include "node/protocol.h"
#include "test_util.h"
#include "tiering/tiered_store.h"

namespace mch::testing {

// A node serving a small DRAM-only store.
class TestNode {
 public:
  explicit TestNode(int timeout_ms = 2000, uint64_t dram = 8ull << 20) {
    TieredOptions o;
    o.dram_capacity = dram;
    o.slab_size = 1ull << 20;
    o.hugepages = false;
    store_ = std::make_unique<TieredStore>(o);
    server_ = std::make_unique<NodeServer>(*store_, dir_.file("node.sock"), timeout_ms);
    server_->start();
  }
  ~TestNode() {
    server_->stop();
    store_->close();
  }
  NodeServer& server() { return *server_; }
  TieredStore& store() { return *store_; }
  const std::string& path() const { return server_->socket_path(); }

  // Waits (bounded) until the server has noticed every connection closing.
  bool wait_idle(int ms = 5000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
      if (server_->stats().connections == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

 private:
  TempDir dir_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<NodeServer> server_;
};

struct Frame {
  proto::Header h;
  std::vector<uint8_t> body;
  proto::Reader reader() const { return proto::Reader(body.data(), body.size()); }
};

// One client connection speaking raw frames.
class RawConn {
 public:
  explicit RawConn(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawConn() {
    if (fd_ >= 0) ::close(fd_);
    if (arena_) munmap(arena_, arena_size_);
  }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  uint8_t* arena() const { return arena_; }
  uint64_t arena_size() const { return arena_size_; }

  bool send(const uint8_t* p, size_t n) {
    return proto::send_all(fd_, p, n, proto::Clock::now() + std::chrono::seconds(5)) == 0;
  }
  bool send(proto::Writer& w) {
    const uint8_t* f = w.finish();
    return send(f, w.size());
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }

  // Reads one whole frame. A file descriptor riding on it is kept in received_fd() (the
  // previous one is closed). False on close, timeout or an impossible header.
  bool recv(Frame* f, int timeout_ms = 5000) {
    auto deadline = proto::Clock::now() + std::chrono::milliseconds(timeout_ms);
    uint8_t hdr[proto::kHeaderSize];
    if (!recv_first(hdr, deadline)) return false;
    f->h = proto::decode_header(hdr);
    if (f->h.body_len > proto::kMaxBody) return false;
    f->body.resize(static_cast<size_t>(f->h.body_len));
    return f->body.empty() || proto::recv_all(fd_, f->body.data(), f->body.size(), deadline) == 0;
  }

  // HELLO with versions [min, max]; maps the arena on success. Returns the reply frame.
  Frame hello(uint16_t min_v = proto::kVersion, uint16_t max_v = proto::kVersion, bool map = true) {
    proto::Writer w;
    w.begin(proto::kHello, next_id_++, 0, min_v);
    w.u16(min_v);
    w.u16(max_v);
    w.u32(static_cast<uint32_t>(getpid()));
    w.str("raw test client");
    Frame f;
    if (!send(w) || !recv(&f)) {
      f.h.op = 0;
      return f;
    }
    if (f.h.op == proto::kHello && map && received_fd_ >= 0) {
      proto::Reader r = f.reader();
      proto::HelloReply hr;
      if (proto::decode_hello_reply(r, &hr)) {
        void* p = mmap(nullptr, hr.arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, received_fd_, 0);
        if (p != MAP_FAILED) {
          arena_ = static_cast<uint8_t*>(p);
          arena_size_ = hr.arena_size;
        }
      }
    }
    close_received_fd();
    return f;
  }

  // Sends a request built by `body` and reads its reply.
  template <typename F>
  Frame call(uint16_t op, F&& body) {
    proto::Writer w;
    w.begin(op, next_id_++);
    body(w);
    Frame f;
    if (!send(w) || !recv(&f)) f.h.op = 0;
    return f;
  }
  uint32_t next_id() { return next_id_++; }

 private:
  void close_received_fd() {
    if (received_fd_ >= 0) ::close(received_fd_);
    received_fd_ = -1;
  }
  bool recv_first(uint8_t* hdr, proto::Clock::time_point deadline) {
    // The first bytes may carry SCM_RIGHTS (HELLO): read them with recvmsg.
    size_t have = 0;
    while (have < proto::kHeaderSize) {
      pollfd p{fd_, POLLIN, 0};
      int left = proto::ms_left(deadline);
      if (left == 0 || poll(&p, 1, left) <= 0) return false;
      iovec iov{hdr + have, proto::kHeaderSize - have};
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = cbuf;
      msg.msg_controllen = sizeof cbuf;
      ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      if (n == 0) return false;
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return false;
      }
      for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < nfd; k++) {
          int got;
          memcpy(&got, CMSG_DATA(cm) + k * sizeof(int), sizeof got);
          close_received_fd();
          received_fd_ = got;
        }
      }
      have += static_cast<size_t>(n);
    }
    return true;
  }

  int fd_ = -1;
  int received_fd_ = -1;
  uint32_t next_id_ = 1;
  uint8_t* arena_ = nullptr;
  uint64_t arena_size_ = 0;
};

}  // namespace mch::testing
