// Helpers for the node tests: a real node (TieredStore in DRAM + NodeServer on a Unix socket in
// a temporary directory), a raw protocol connection that sends hand-built frames and reads whole
// frames back (so tests see exactly what goes over the wire), and a scripted fake node. Both ends
// use the product's transport (UnixEndpoint/UnixListener streams, FrameReader).
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "node/node_server.h"
#include "node/protocol.h"
#include "test_util.h"
#include "tiering/tiered_store.h"
#include "transport/frame_reader.h"
#include "transport/uds.h"

namespace mch::testing {

// A node serving a small store: DRAM only, unless `adjust` (which gets the options and the
// node's temporary directory) adds an NVMe tier or changes other settings.
class TestNode {
 public:
  using Adjust = std::function<void(TieredOptions&, const TempDir&)>;
  explicit TestNode(int timeout_ms = 2000, uint64_t dram = 8ull << 20, const Adjust& adjust = nullptr) {
    TieredOptions o;
    o.dram_capacity = dram;
    o.slab_size = 1ull << 20;
    o.hugepages = false;
    if (adjust) adjust(o, dir_);
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
  uint64_t by_op(uint16_t op) const {
    for (const auto& [name, n] : server_->stats().requests_by_op)
      if (name == proto::op_name(op)) return n;
    return 0;
  }

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
  std::vector<uint8_t> body;  // exactly body_len bytes
  int fd = -1;                // a descriptor that rode on the frame (owned: closed by the Frame)
  Frame() = default;
  Frame(Frame&& o) noexcept : h(o.h), body(std::move(o.body)), fd(o.fd) { o.fd = -1; }
  Frame& operator=(Frame&& o) noexcept {
    std::swap(h, o.h);
    body.swap(o.body);
    std::swap(fd, o.fd);
    return *this;
  }
  ~Frame() {
    if (fd >= 0) ::close(fd);
  }
  proto::Reader reader() const { return proto::Reader(body.data(), body.size()); }
};

// Reads one whole frame from `s` by `deadline`: 0 or an errno value (EPROTO: over kMaxBody).
inline int read_frame(Stream& s, FrameReader& rx, Frame* f, Clock::time_point deadline) {
  int fd = -1;
  int e = rx.read_header(s, &f->h, false, deadline, 0, -1, &fd);
  if (f->fd >= 0) ::close(f->fd);
  f->fd = fd;
  if (e) return e;
  if (f->h.body_len > proto::kMaxBody) return EPROTO;
  if ((e = rx.read_body(s, f->h, deadline, -1))) return e;
  proto::Reader r = rx.body(f->h);
  f->body.assign(r.pos(), r.pos() + r.remaining());
  rx.consume(f->h);
  return 0;
}

// One client connection speaking raw frames.
class RawConn {
 public:
  explicit RawConn(const std::string& path) {
    int err = 0;
    std::string msg;
    stream_ = UnixEndpoint(path).connect(2000, &err, &msg);
    if (!stream_) ADD_FAILURE() << msg;
  }
  ~RawConn() {
    if (arena_) munmap(arena_, arena_size_);
  }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return stream_ != nullptr; }
  uint8_t* arena() const { return arena_; }
  uint64_t arena_size() const { return arena_size_; }
  uint32_t next_id() { return next_id_++; }

  bool send(const uint8_t* p, size_t n) {
    return stream_ && stream_->send_all(p, n, Clock::now() + std::chrono::seconds(5)) == 0;
  }
  bool send(proto::Writer& w) {
    const uint8_t* f = w.finish();
    return send(f, w.size());
  }
  // Reads one whole frame; false on close, timeout or an impossible header.
  bool recv(Frame* f, int timeout_ms = 5000) {
    return stream_ && read_frame(*stream_, rx_, f, Clock::now() + std::chrono::milliseconds(timeout_ms)) == 0;
  }

  // HELLO with versions [min, max]; maps the arena that rides on a HELLO reply when `map`.
  Frame hello(uint16_t min_v = proto::kVersion, uint16_t max_v = proto::kVersion, bool map = true) {
    proto::Writer w;
    w.begin(proto::kHello, next_id_++, 0, min_v);
    w.u16(min_v);
    w.u16(max_v);
    w.u32(static_cast<uint32_t>(getpid()));
    w.str("raw test client");
    Frame f;
    if (!send(w) || !recv(&f)) return Frame();
    proto::Reader r = f.reader();
    proto::HelloReply hr;
    if (f.h.op == proto::kHello && map && f.fd >= 0 && proto::decode_hello_reply(r, &hr)) {
      void* p = mmap(nullptr, hr.arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, f.fd, 0);
      if (p != MAP_FAILED) {
        arena_ = static_cast<uint8_t*>(p);
        arena_size_ = hr.arena_size;
      }
    }
    return f;
  }

  // Sends a request (header flags `flags`) whose body `body` writes, and reads its reply (op 0
  // when none came).
  template <typename F>
  Frame call(uint16_t op, F&& body, uint32_t flags = 0) {
    proto::Writer w;
    w.begin(op, next_id_++, flags);
    body(w);
    Frame f;
    if (!send(w) || !recv(&f)) return Frame();
    return f;
  }

 private:
  std::unique_ptr<Stream> stream_;
  FrameReader rx_{4096};
  uint32_t next_id_ = 1;
  uint8_t* arena_ = nullptr;
  uint64_t arena_size_ = 0;
};

// The bytes of the frame in `w`.
inline std::vector<uint8_t> frame_bytes(proto::Writer& w) {
  const uint8_t* f = w.finish();
  return std::vector<uint8_t>(f, f + w.size());
}

// A fake node on a Unix socket: a thread accepts connections one at a time and hands every
// request frame to `answer`, which fills in the reply's bytes and returns what to do with them.
class FakeNode {
 public:
  enum class Action { kSend, kSendWithArena, kSilent, kHangUp };
  using Answer = std::function<Action(const Frame& request, std::vector<uint8_t>* reply)>;

  FakeNode(const std::string& path, uint64_t arena_bytes, Answer answer)
      : listener_(path), answer_(std::move(answer)) {
    arena_fd_ = memfd_create("fake-node-arena", MFD_CLOEXEC);
    if (arena_fd_ < 0 || ftruncate(arena_fd_, static_cast<off_t>(arena_bytes)) != 0) ADD_FAILURE() << "memfd";
    thread_ = std::thread([this] { run(); });
  }
  ~FakeNode() {
    stop_ = true;
    thread_.join();
    listener_.close();
    ::close(arena_fd_);
  }
  uint64_t requests() const { return requests_.load(); }

 private:
  void run() {
    while (!stop_) {
      std::unique_ptr<Stream> s = listener_.accept(-1, 20);
      if (s) serve(*s);
    }
  }
  void serve(Stream& s) {
    FrameReader rx(4096);
    Frame req;
    std::vector<uint8_t> out;
    while (!stop_) {
      int e = read_frame(s, rx, &req, Clock::now() + std::chrono::milliseconds(50));
      if (e == ETIMEDOUT) continue;
      if (e) return;
      requests_++;
      out.clear();
      Action a = answer_(req, &out);
      if (a == Action::kHangUp) return;
      if (a == Action::kSilent || out.empty()) continue;
      auto deadline = Clock::now() + std::chrono::seconds(1);
      e = a == Action::kSendWithArena ? s.send_with_fd(out.data(), out.size(), arena_fd_, deadline)
                                      : s.send_all(out.data(), out.size(), deadline);
      if (e) return;
    }
  }

  UnixListener listener_;
  Answer answer_;
  int arena_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> requests_{0};
  std::thread thread_;
};

}  // namespace mch::testing
