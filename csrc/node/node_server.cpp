// NodeServer implementation: read node_server.h (ownership, threads) and protocol.h (frames).
#include "node/node_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>

#include "common/status.h"
#include "common/error.h"
#include "common/open_hash_map.h"
#include "common/text.h"
#include "tiering/tiered_store.h"

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

namespace mch {

using namespace proto;

namespace {

// A multiset of tokens (token -> count) on an OpenHashMap: no allocation per insert once warm.
// Token 0 is never issued by the store (slot generations start at 1), so it marks a free slot.
// Used by one connection thread only.
class TokenTable {
 public:
  void add(uint64_t t) {
    if (t == 0) return;
    map_.get_or_insert(t)++;
    total_++;
  }
  // Takes one count of t; false if t is not held.
  bool take(uint64_t t) {
    uint32_t* n = t ? map_.find(t) : nullptr;
    if (!n) return false;
    total_--;
    if (--*n == 0) map_.erase(t);
    return true;
  }
  uint64_t total() const { return total_; }
  // Appends every held token (once per count) to out and empties the table.
  void drain(std::vector<uint64_t>* out) {
    map_.for_each([out](uint64_t t, uint32_t n) { out->insert(out->end(), n, t); });
    map_.clear();
    total_ = 0;
  }

 private:
  struct Traits {
    static size_t hash(uint64_t t) {  // murmur3 finaliser: tokens are (generation, slot) pairs
      t ^= t >> 33;
      t *= 0xff51afd7ed558ccdull;
      t ^= t >> 33;
      return static_cast<size_t>(t);
    }
    static bool empty(uint64_t t) { return t == 0; }
  };
  OpenHashMap<uint64_t, uint32_t, Traits> map_{256, 50};
  uint64_t total_ = 0;  // sum of counts
};

uint64_t random_instance() {
  std::random_device rd;
  uint64_t v = (uint64_t(rd()) << 32) ^ rd();
  return v ? v : 1;
}

constexpr size_t kRxInitial = 64 * 1024;

}  // namespace

struct NodeServer::Conn {
  int fd = -1;
  int32_t pid = 0;
  std::thread th;
  std::atomic<bool> done{false};

  // Everything below is used by the connection's thread only.
  bool hello = false;
  uint16_t version = 0;
  TokenTable reservations, pins;
  std::vector<uint8_t> rx;  // received bytes: [rx_start, rx_end) not yet handled
  size_t rx_start = 0, rx_end = 0;
  Writer w;
  KeyList keys;
  std::vector<uint64_t> sizes, tokens;
  std::vector<uint32_t> depths;
  std::vector<uint8_t> oks;
  std::vector<int32_t> res;
  std::vector<int64_t> owned;  // per commit token: index into `tokens`, or -1 (not ours)
  std::vector<PutTicket> put_t;
  std::vector<GetTicket> get_t;
};

NodeServer::NodeServer(TieredStore& store, std::string socket_path, int timeout_ms)
    : store_(store), path_(std::move(socket_path)), timeout_ms_(timeout_ms > 0 ? timeout_ms : 5000) {}

NodeServer::~NodeServer() { stop(); }

void NodeServer::start() {
  if (running_.load()) throw EngineError(EngineError::kInUse, "this node is already serving " + path_);
  sockaddr_un addr{};
  if (path_.empty()) throw EngineError(EngineError::kInvalid, "node socket path is empty");
  if (path_.size() >= sizeof(addr.sun_path))
    throw EngineError(EngineError::kInvalid,
                      "node socket path '" + path_ + "' is " + std::to_string(path_.size()) +
                          " bytes; Unix socket paths are limited to " + std::to_string(sizeof(addr.sun_path) - 1) +
                          " bytes: choose a shorter path (for example under /run or /tmp)");
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);

  struct stat st;
  if (lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw EngineError(EngineError::kInvalid,
                        "'" + path_ + "' exists and is not a socket; remove it or choose another node socket path");
    // A socket file: live node or stale leftover of a node that died?
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0) throw EngineError(EngineError::kIo, std::string("socket: ") + strerror(errno));
    int rc = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
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

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw EngineError(EngineError::kIo, std::string("socket: ") + strerror(errno));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EADDRINUSE) throw EngineError(EngineError::kInUse, "a node is already serving " + path_);
    throw EngineError(EngineError::kIo, "cannot bind the node socket " + path_ + ": " + strerror(e));
  }
  if (listen(fd, 128) != 0) {
    int e = errno;
    ::close(fd);
    unlink(path_.c_str());
    throw EngineError(EngineError::kIo, "listen on " + path_ + ": " + strerror(e));
  }
  if (stat(path_.c_str(), &st) == 0) {
    sock_dev_ = st.st_dev;
    sock_ino_ = st.st_ino;
  }
  int wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wfd < 0) {
    int e = errno;
    ::close(fd);
    unlink(path_.c_str());
    throw EngineError(EngineError::kIo, std::string("eventfd: ") + strerror(e));
  }
  // Clients get a read-write descriptor of the arena; seal its size so a client cannot shrink
  // it under the node (which would SIGBUS the node). Works when the memfd allows sealing.
  arena_sealed_ = fcntl(store_.arena_fd(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0;
  listen_fd_ = fd;
  wake_fd_ = wfd;
  instance_ = random_instance();
  stopping_.store(false);
  running_.store(true);
  acceptor_ = std::thread([this] { accept_loop(); });
}

void NodeServer::stop() {
  if (!running_.load()) return;
  stopping_.store(true);
  uint64_t one = 1;
  ssize_t wr = write(wake_fd_, &one, sizeof one);  // stays readable: wakes every poller
  (void)wr;
  if (acceptor_.joinable()) acceptor_.join();
  std::vector<std::unique_ptr<Conn>> all;
  {
    std::lock_guard<std::mutex> lk(conns_mu_);
    all.swap(conns_);
  }
  for (auto& c : all) shutdown(c->fd, SHUT_RDWR);
  for (auto& c : all) {
    if (c->th.joinable()) c->th.join();
    ::close(c->fd);
  }
  ::close(listen_fd_);
  listen_fd_ = -1;
  // Remove the socket file only if it is still ours (a newer node may have replaced it).
  struct stat st;
  if (stat(path_.c_str(), &st) == 0 && st.st_dev == sock_dev_ && st.st_ino == sock_ino_) unlink(path_.c_str());
  ::close(wake_fd_);
  wake_fd_ = -1;
  running_.store(false);
}

void NodeServer::accept_loop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int pr = poll(p, 2, 1000);
    if (stopping_.load()) return;
    reap_finished(false);
    if (pr <= 0 || !(p[0].revents & POLLIN)) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) usleep(10000);
      continue;
    }
    if (ctr_.connections.load() >= kMaxConnections) {
      ctr_.refused_connections++;
      Writer w;
      w.begin(kError, 0, kFlagReply, kVersion);
      w.i32(kErrTooManyConnections);
      w.u16(kMinVersion);
      w.u16(kVersion);
      w.str("the node serves " + std::to_string(kMaxConnections) +
            " connections already; a client is leaking connections");
      const uint8_t* f = w.finish();
      ssize_t sent = send(fd, f, w.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)sent;
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) c->pid = cred.pid;
    Conn* raw = c.get();
    ctr_.connections++;
    ctr_.connections_total++;
    std::lock_guard<std::mutex> lk(conns_mu_);
    try {
      c->th = std::thread([this, raw] { serve(raw); });
    } catch (...) {
      ctr_.connections--;
      ::close(fd);
      continue;
    }
    conns_.push_back(std::move(c));
  }
}

void NodeServer::reap_finished(bool all) {
  std::lock_guard<std::mutex> lk(conns_mu_);
  for (size_t i = 0; i < conns_.size();) {
    if (all || conns_[i]->done.load()) {
      if (conns_[i]->th.joinable()) conns_[i]->th.join();
      ::close(conns_[i]->fd);
      conns_.erase(conns_.begin() + static_cast<long>(i));
    } else {
      i++;
    }
  }
}

void NodeServer::count_op(uint16_t op) {
  ctr_.requests++;
  if (op < kOpCount) ctr_.by_op[op]++;
}

namespace {

// Receives more bytes into c's buffer. idle: no frame has started, so wait as long as it takes
// (until the node stops); otherwise the frame must continue before `deadline`.
// Returns 0, or an errno value (ECONNRESET: peer closed; ETIMEDOUT; ESHUTDOWN: node stopping).
template <typename ConnT>
int fill(ConnT* c, int wake_fd, bool idle, Clock::time_point deadline) {
  for (;;) {
    if (idle) {  // nothing expected yet: sleep in poll first
      pollfd p[2] = {{c->fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
      int pr = poll(p, 2, -1);
      if (pr < 0 && errno != EINTR) return errno;
      if (p[1].revents) return ESHUTDOWN;
      if (pr <= 0) continue;
    }
    ssize_t r = recv(c->fd, c->rx.data() + c->rx_end, c->rx.size() - c->rx_end, MSG_DONTWAIT);
    if (r > 0) {
      c->rx_end += static_cast<size_t>(r);
      return 0;
    }
    if (r == 0) return ECONNRESET;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    if (idle) continue;
    int left = ms_left(deadline);
    if (left == 0) return ETIMEDOUT;
    pollfd p[2] = {{c->fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    int pr = poll(p, 2, left);
    if (pr == 0) return ETIMEDOUT;
    if (pr > 0 && p[1].revents) return ESHUTDOWN;
  }
}

}  // namespace

void NodeServer::serve(Conn* c) {
  c->rx.resize(kRxInitial);
  const auto timeout = std::chrono::milliseconds(timeout_ms_);

  auto send_frame = [&](const uint8_t* p, size_t n) { return send_all(c->fd, p, n, Clock::now() + timeout) == 0; };
  auto send_error = [&](uint32_t rid, int32_t code, const std::string& msg) {
    Writer& w = c->w;
    w.begin(kError, rid, kFlagReply, kVersion);
    w.i32(code);
    w.u16(kMinVersion);
    w.u16(kVersion);
    w.str(msg);
    const uint8_t* f = w.finish();
    send_frame(f, w.size());
  };

  // Handles one frame; false closes the connection.
  auto handle = [&](const Header& h, Reader r) -> bool {
    Writer& w = c->w;
    if (h.flags & kFlagReply) {
      ctr_.bad_frames++;
      send_error(h.request_id, kErrBadFrame, "clients send requests, not replies");
      return false;
    }
    if (!c->hello && h.op != kHello && h.op != kPing) {
      send_error(h.request_id, kErrHelloFirst, std::string("send HELLO before ") + op_name(h.op));
      return false;
    }
    if (c->hello && h.op != kHello && h.version != c->version) {
      ctr_.version_mismatches++;
      send_error(h.request_id, kErrVersion,
                 "frame version " + std::to_string(h.version) + " differs from the version agreed at HELLO (" +
                     std::to_string(c->version) + ")");
      return false;
    }
    auto bad_body = [&]() {
      ctr_.bad_frames++;
      send_error(h.request_id, kErrBadFrame, std::string("malformed ") + op_name(h.op) + " body");
      return false;
    };
    count_op(h.op);
    switch (h.op) {
      case kHello: {
        uint16_t cmin = r.u16(), cmax = r.u16();
        r.u32();  // client pid (SO_PEERCRED is what we trust)
        r.str(4096);
        if (!r.ok()) return bad_body();
        uint16_t chosen = std::min(cmax, kVersion);
        if (chosen < std::max(cmin, kMinVersion)) {
          ctr_.version_mismatches++;
          send_error(h.request_id, kErrVersion,
                     "protocol version mismatch: this node speaks versions " + std::to_string(kMinVersion) + ".." +
                         std::to_string(kVersion) + ", the client speaks " + std::to_string(cmin) + ".." +
                         std::to_string(cmax) + "; run client and node from the same mooncake-hicache release");
          return false;
        }
        HelloReply hr;
        hr.version = chosen;
        hr.node_pid = static_cast<uint32_t>(getpid());
        hr.instance = instance_;
        hr.arena_size = store_.arena_size();
        hr.max_batch = kMaxBatch;
        hr.max_key_len = kMaxKeyLen;
        hr.info = "mooncake-hicache node pid " + std::to_string(getpid()) + " on " + path_;
        w.begin(kHello, h.request_id, kFlagReply, chosen);
        encode_hello_reply(w, hr);
        const uint8_t* f = w.finish();
        // The arena memfd rides on the reply's first byte.
        iovec iov{const_cast<uint8_t*>(f), w.size()};
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
        int afd = store_.arena_fd();
        memcpy(CMSG_DATA(cm), &afd, sizeof afd);
        ssize_t n;
        auto deadline = Clock::now() + timeout;
        for (;;) {
          n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
          if (n >= 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) break;
          if (errno == EINTR) continue;
          pollfd p{c->fd, POLLOUT, 0};
          int left = ms_left(deadline);
          if (left == 0 || poll(&p, 1, left) <= 0) return false;
        }
        if (n < 0) return false;
        if (static_cast<size_t>(n) < w.size() && !send_frame(f + n, w.size() - static_cast<size_t>(n))) return false;
        c->hello = true;
        c->version = chosen;
        return true;
      }
      case kPing: {
        w.begin(kPing, h.request_id, kFlagReply, h.version);
        w.bytes(r.pos(), r.remaining());  // echo
        break;
      }
      case kPutReserve: {
        int64_t n = decode_put_reserve(r, &c->keys, &c->sizes, &c->depths);
        if (n < 0 || !r.done()) return bad_body();
        store_.put_reserve(c->keys.vec(), c->sizes, c->depths, &c->put_t);
        w.begin(kPutReserve, h.request_id, kFlagReply, c->version);
        w.reserve(4 + static_cast<size_t>(n) * kReserveResultWire);
        w.u32(static_cast<uint32_t>(n));
        uint64_t held = 0;
        for (const PutTicket& t : c->put_t) {
          w.i32(t.status);
          w.u64(t.offset);
          w.u64(t.token);
          if (t.status == status_code(Status::kOk)) {
            c->reservations.add(t.token);
            held++;
          }
        }
        ctr_.reservations_held += held;
        break;
      }
      case kPutCommit: {
        uint32_t n = r.count(9);
        if (!r.ok()) return bad_body();
        c->tokens.clear();
        c->oks.clear();
        c->owned.assign(n, -1);
        uint64_t unknown = 0;
        for (uint32_t i = 0; i < n; i++) {
          uint64_t t = r.u64();
          uint8_t ok = r.u8();
          if (!r.ok()) break;
          if (c->reservations.take(t)) {
            c->owned[i] = static_cast<int64_t>(c->tokens.size());
            c->tokens.push_back(t);
            c->oks.push_back(ok ? 1 : 0);
          } else {
            unknown++;
          }
        }
        ctr_.reservations_held -= c->tokens.size();
        ctr_.unknown_tokens += unknown;
        if (!r.done()) {
          // Hand what we took back to the table so disconnect cleanup aborts them.
          for (uint64_t t : c->tokens) c->reservations.add(t);
          ctr_.reservations_held += c->tokens.size();
          return bad_body();
        }
        c->res.assign(c->tokens.size(), status_code(Status::kInvalidParams));
        if (!c->tokens.empty()) store_.put_commit(c->tokens, c->oks, c->res.data());
        w.begin(kPutCommit, h.request_id, kFlagReply, c->version);
        w.reserve(4 + 4 * static_cast<size_t>(n));
        w.u32(n);
        for (uint32_t i = 0; i < n; i++) w.i32(c->owned[i] < 0 ? status_code(Status::kInvalidParams) : c->res[c->owned[i]]);
        break;
      }
      case kGetPin: {
        int64_t n = decode_keys(r, &c->keys);
        if (n < 0 || !r.done()) return bad_body();
        store_.get_pin(c->keys.vec(), &c->get_t);
        w.begin(kGetPin, h.request_id, kFlagReply, c->version);
        w.reserve(4 + static_cast<size_t>(n) * kPinResultWire);
        w.u32(static_cast<uint32_t>(n));
        uint64_t held = 0;
        for (const GetTicket& t : c->get_t) {
          w.i64(t.status);
          w.u64(t.offset);
          w.u64(t.token);
          w.u8(t.tier);
          if (t.status >= 0) {
            c->pins.add(t.token);
            held++;
          }
        }
        ctr_.pins_held += held;
        break;
      }
      case kGetUnpin: {
        uint32_t n = r.count(8);
        if (!r.ok()) return bad_body();
        c->tokens.clear();
        uint64_t unknown = 0;
        for (uint32_t i = 0; i < n; i++) {
          uint64_t t = r.u64();
          if (c->pins.take(t))
            c->tokens.push_back(t);
          else
            unknown++;
        }
        ctr_.unknown_tokens += unknown;
        ctr_.pins_held -= c->tokens.size();
        if (!c->tokens.empty()) store_.get_unpin(c->tokens);
        if (!r.done()) return bad_body();
        return true;  // no reply
      }
      case kExists: {
        int64_t n = decode_keys(r, &c->keys);
        if (n < 0 || !r.done()) return bad_body();
        c->res.resize(static_cast<size_t>(n));
        if (n) store_.batch_exists(c->keys.vec(), c->res.data());
        w.begin(kExists, h.request_id, kFlagReply, c->version);
        w.reserve(4 + 4 * static_cast<size_t>(n));
        w.u32(static_cast<uint32_t>(n));
        for (int64_t i = 0; i < n; i++) w.i32(c->res[static_cast<size_t>(i)]);
        break;
      }
      case kPrefetch: {
        int64_t n = decode_keys(r, &c->keys);
        if (n < 0 || !r.done()) return bad_body();
        int32_t q = n ? store_.prefetch(c->keys.vec()) : 0;
        w.begin(kPrefetch, h.request_id, kFlagReply, c->version);
        w.i32(q);
        break;
      }
      case kRemove: {
        int64_t n = decode_keys(r, &c->keys);
        if (n < 0 || !r.done()) return bad_body();
        w.begin(kRemove, h.request_id, kFlagReply, c->version);
        w.u32(static_cast<uint32_t>(n));
        for (int64_t i = 0; i < n; i++) w.i32(store_.remove(c->keys.vec()[static_cast<size_t>(i)]));
        break;
      }
      case kRemoveAll: {
        if (!r.done()) return bad_body();
        int32_t rc = store_.remove_all();
        w.begin(kRemoveAll, h.request_id, kFlagReply, c->version);
        w.i32(rc);
        break;
      }
      case kStats: {
        if (!r.done()) return bad_body();
        std::string s = store_.stats_json();
        std::string node = stats_json();
        if (!s.empty() && s.back() == '}') {
          s.pop_back();
          s += (s.size() > 1 ? ",\"node\":" : "\"node\":") + node + "}";
        } else {
          s = "{\"node\":" + node + "}";
        }
        w.begin(kStats, h.request_id, kFlagReply, c->version);
        w.str(s);
        break;
      }
      default:
        send_error(h.request_id, kErrUnknownOp,
                   "op " + std::to_string(h.op) + " is not known to this node (protocol " + std::to_string(kVersion) + ")");
        return true;  // framing is intact: keep serving
    }
    const uint8_t* f = w.finish();
    return send_frame(f, w.size());
  };

  for (;;) {
    if (stopping_.load()) break;
    // A whole header, then a whole body, in the buffer.
    bool closed = false;
    while (c->rx_end - c->rx_start < kHeaderSize) {
      if (c->rx_start == c->rx_end) c->rx_start = c->rx_end = 0;
      bool idle = c->rx_start == c->rx_end;
      if (c->rx_end + kHeaderSize > c->rx.size()) {  // compact
        memmove(c->rx.data(), c->rx.data() + c->rx_start, c->rx_end - c->rx_start);
        c->rx_end -= c->rx_start;
        c->rx_start = 0;
      }
      if (fill(c, wake_fd_, idle, Clock::now() + timeout) != 0) {
        closed = true;
        break;
      }
    }
    if (closed) break;
    Header h = decode_header(c->rx.data() + c->rx_start);
    if (h.magic != kMagic) {
      ctr_.bad_frames++;
      send_error(h.request_id, kErrBadFrame, "bad frame magic: not a mooncake-hicache client");
      break;
    }
    if (h.version < kMinVersion || h.version > kVersion) {
      ctr_.version_mismatches++;
      send_error(h.request_id, kErrVersion,
                 "protocol version mismatch: this node speaks versions " + std::to_string(kMinVersion) + ".." +
                     std::to_string(kVersion) + ", the client sent a version " + std::to_string(h.version) +
                     " frame; run client and node from the same mooncake-hicache release");
      break;
    }
    if (h.body_len > kMaxBody) {
      ctr_.bad_frames++;
      send_error(h.request_id, kErrBadFrame,
                 "frame body of " + std::to_string(h.body_len) + " bytes exceeds the limit of " + std::to_string(kMaxBody));
      break;
    }
    size_t total = kHeaderSize + static_cast<size_t>(h.body_len);
    if (c->rx_start + total > c->rx.size()) {
      memmove(c->rx.data(), c->rx.data() + c->rx_start, c->rx_end - c->rx_start);
      c->rx_end -= c->rx_start;
      c->rx_start = 0;
      if (total > c->rx.size()) c->rx.resize(total);
    }
    auto deadline = Clock::now() + timeout;
    while (c->rx_end - c->rx_start < total) {
      if (fill(c, wake_fd_, false, deadline) != 0) {
        closed = true;
        break;
      }
    }
    if (closed) break;
    bool keep;
    try {
      keep = handle(h, Reader(c->rx.data() + c->rx_start + kHeaderSize, static_cast<size_t>(h.body_len)));
    } catch (const std::exception& e) {
      send_error(h.request_id, kErrInternal, std::string("node failed the request: ") + e.what());
      keep = false;
    }
    if (!keep) break;
    c->rx_start += total;
    if (c->rx.size() > 4 * kRxInitial && c->rx_end == c->rx_start) {  // a huge frame passed: shrink
      c->rx.assign(kRxInitial, 0);
      c->rx_start = c->rx_end = 0;
    }
  }

  // The connection is over: give back what the client still held.
  shutdown(c->fd, SHUT_RDWR);
  std::vector<uint64_t> toks;
  c->reservations.drain(&toks);
  if (!toks.empty()) {
    store_.abort_puts(toks);
    ctr_.reservations_held -= toks.size();
    ctr_.released_reservations += toks.size();
  }
  toks.clear();
  c->pins.drain(&toks);
  if (!toks.empty()) {
    store_.get_unpin(toks);
    ctr_.pins_held -= toks.size();
    ctr_.released_pins += toks.size();
  }
  ctr_.connections--;
  c->done.store(true);
}

NodeServerStats NodeServer::stats() const {
  NodeServerStats s;
  s.connections = ctr_.connections.load();
  s.connections_total = ctr_.connections_total.load();
  s.requests = ctr_.requests.load();
  for (int i = 0; i < kOpCount; i++) s.requests_by_op[i] = ctr_.by_op[i].load();
  s.bad_frames = ctr_.bad_frames.load();
  s.version_mismatches = ctr_.version_mismatches.load();
  s.refused_connections = ctr_.refused_connections.load();
  s.pins_held = ctr_.pins_held.load();
  s.reservations_held = ctr_.reservations_held.load();
  s.released_pins = ctr_.released_pins.load();
  s.released_reservations = ctr_.released_reservations.load();
  s.unknown_tokens = ctr_.unknown_tokens.load();
  std::lock_guard<std::mutex> lk(conns_mu_);
  for (const auto& c : conns_)
    if (!c->done.load()) s.client_pids.push_back(c->pid);
  return s;
}

std::string NodeServer::stats_json() const {
  NodeServerStats s = stats();
  std::ostringstream o;
  char inst[24];
  snprintf(inst, sizeof inst, "%016llx", static_cast<unsigned long long>(instance_));
  o << "{\"pid\":" << getpid() << ",\"socket_path\":\"" << json_escape(path_) << "\",\"instance\":\"" << inst << "\",\"protocol_version\":" << kVersion
    << ",\"arena_sealed\":" << (arena_sealed_ ? "true" : "false") << ",\"connections\":" << s.connections
    << ",\"connections_total\":" << s.connections_total << ",\"requests\":" << s.requests << ",\"requests_by_op\":{";
  bool first = true;
  for (int i = 1; i < kOpCount; i++) {
    o << (first ? "" : ",") << "\"" << op_name(static_cast<uint16_t>(i)) << "\":" << s.requests_by_op[i];
    first = false;
  }
  o << "},\"bad_frames\":" << s.bad_frames << ",\"version_mismatches\":" << s.version_mismatches
    << ",\"refused_connections\":" << s.refused_connections
    << ",\"pins_held\":" << s.pins_held << ",\"reservations_held\":" << s.reservations_held
    << ",\"released_pins\":" << s.released_pins << ",\"released_reservations\":" << s.released_reservations
    << ",\"unknown_tokens\":" << s.unknown_tokens << ",\"client_pids\":[";
  for (size_t i = 0; i < s.client_pids.size(); i++) o << (i ? "," : "") << s.client_pids[i];
  o << "]}";
  return o.str();
}

}  // namespace mch
