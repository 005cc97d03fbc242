// NodeClient implementation: read node_client.h (pool, failures) and protocol.h (frames).
#include "node/node_client.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "common/status.h"

namespace mch {

using namespace proto;

namespace {
// Bumped in the child of every fork(): connections inherited from the parent share their sockets
// (and request ids) with it, so a child must never use them.
std::atomic<uint64_t> g_fork_gen{0};
void on_fork_child() { g_fork_gen.fetch_add(1, std::memory_order_relaxed); }
uint64_t fork_gen() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, on_fork_child); });
  return g_fork_gen.load(std::memory_order_relaxed);
}
}  // namespace

struct NodeClient::ArenaMap {
  uint8_t* base = nullptr;
  uint64_t size = 0;
  uint64_t instance = 0;
  ~ArenaMap() {
    if (base) munmap(base, size);
  }
  // [off, off + len) lies inside the arena.
  bool holds(uint64_t off, uint64_t len) const { return off <= size && len <= size - off; }
};

struct NodeClient::Conn {
  int fd = -1;
  std::shared_ptr<ArenaMap> map;
  uint32_t next_id = 1;
  uint64_t fork_gen = 0;  // the process generation that opened it (see g_fork_gen)
  uint16_t version = kVersion;
  uint16_t sent_op = 0;
  uint32_t sent_id = 0;
  std::string error;      // message of the last ERROR frame
  int32_t error_code = 0;  // its code (proto::ErrorCode)
  Writer w;
  std::vector<uint8_t> rx;
  // Per-call scratch, reused so a warm call allocates nothing per key.
  std::vector<uint32_t> idx, pos, retry;
  std::vector<uint64_t> sizes, tokens;
  std::vector<ReserveResult> rr;
  ~Conn() {
    if (fd >= 0) ::close(fd);
  }
  uint32_t begin(uint16_t op) {
    sent_op = op;
    sent_id = next_id++;
    w.begin(op, sent_id, 0, version);
    return sent_id;
  }
};

namespace {

// Receives one whole frame into rx (the header at rx[0]). The first byte may carry a file
// descriptor (SCM_RIGHTS); it is stored in *fd_out when fd_out is given.
int recv_frame(int fd, std::vector<uint8_t>* rx, Clock::time_point deadline, Header* h, int* fd_out) {
  if (rx->size() < 4096) rx->resize(4096);
  size_t have = 0, total = kHeaderSize;
  bool wait_first = true;  // the reply cannot be there yet: sleep in poll before recv
  while (have < total) {
    if (wait_first) {
      pollfd p{fd, POLLIN, 0};
      int left = ms_left(deadline);
      int pr = ::poll(&p, 1, left);  // left == 0: just look
      if (pr == 0) return ETIMEDOUT;
      if (pr < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      wait_first = false;
    }
    ssize_t r;
    if (fd_out && have == 0) {
      iovec iov{rx->data(), rx->size()};
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = cbuf;
      msg.msg_controllen = sizeof cbuf;
      r = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (r > 0) {
        for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
          if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
          size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t k = 0; k < nfd; k++) {
            int got;
            memcpy(&got, CMSG_DATA(cm) + k * sizeof(int), sizeof got);
            if (*fd_out < 0)
              *fd_out = got;
            else
              ::close(got);
          }
        }
      }
    } else {
      // Until the header is in, read as much as fits: the node sends nothing unasked, so the
      // buffer can only fill with this frame (usually header and body in one recv).
      size_t want = total == kHeaderSize ? rx->size() - have : total - have;
      r = ::recv(fd, rx->data() + have, want, MSG_DONTWAIT);
    }
    if (r > 0) {
      have += static_cast<size_t>(r);
      if (total == kHeaderSize && have >= kHeaderSize) {
        *h = decode_header(rx->data());
        if (h->magic != kMagic || !(h->flags & kFlagReply) || h->body_len > kMaxBody) return EPROTO;
        total = kHeaderSize + static_cast<size_t>(h->body_len);
        if (rx->size() < total) rx->resize(total);
      }
      if (have > total) return EPROTO;  // one frame at a time: nothing may follow it
      continue;
    }
    if (r == 0) return ECONNRESET;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    wait_first = true;
  }
  return 0;
}

}  // namespace

NodeClient::NodeClient(std::string socket_path, int timeout_ms, uint16_t protocol_version)
    : path_(std::move(socket_path)), timeout_ms_(timeout_ms > 0 ? timeout_ms : 5000), version_(protocol_version) {
  sockaddr_un addr;
  if (path_.empty()) throw EngineError(EngineError::kInvalid, "node socket path is empty");
  if (path_.size() >= sizeof(addr.sun_path))
    throw EngineError(EngineError::kInvalid,
                      "node socket path '" + path_ + "' is " + std::to_string(path_.size()) +
                          " bytes; Unix socket paths are limited to " + std::to_string(sizeof(addr.sun_path) - 1) +
                          " bytes: choose a shorter path");
  int err = 0;
  std::string msg;
  std::unique_ptr<Conn> c = connect_new(&err, &msg);
  if (!c) {
    // A node that speaks other versions is a deployment error: say so now. A node that is not
    // (yet) running is not: the client starts unhealthy and connects on a later call.
    if (err == EPROTONOSUPPORT) throw EngineError(EngineError::kFormat, msg);
    std::lock_guard<std::mutex> lk(pool_mu_);
    last_error_ = msg;
    if (err == ETIMEDOUT) cooldown_until_ = Clock::now() + std::chrono::milliseconds(timeout_ms_);
    return;
  }
  healthy_.store(true);
  release(std::move(c));
}

NodeClient::~NodeClient() { close(); }

void NodeClient::close() {
  std::vector<std::unique_ptr<Conn>> drop;
  std::shared_ptr<ArenaMap> map;
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    closed_ = true;
    drop.swap(idle_);
    map.swap(map_);
  }
  healthy_.store(false);
}

std::string NodeClient::last_error() const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  return last_error_;
}

std::vector<std::string> NodeClient::take_notes() {
  std::lock_guard<std::mutex> lk(pool_mu_);
  std::vector<std::string> out;
  out.swap(notes_);
  return out;
}

void NodeClient::note_locked(std::string line) {
  if (notes_.size() < kMaxNotes) notes_.push_back(std::move(line));
}

void NodeClient::mark_down(const std::string& msg) {
  std::lock_guard<std::mutex> lk(pool_mu_);
  last_error_ = msg;
  if (healthy_.exchange(false))
    note_locked("node unavailable (" + msg + "); reads miss and writes fail until a node answers again");
}

NodeInfo NodeClient::info() const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  return info_;
}

std::string NodeClient::describe(int err, const Conn* c) const {
  switch (err) {
    case ETIMEDOUT: return "node at " + path_ + " did not answer within " + std::to_string(timeout_ms_) + " ms";
    case ECONNRESET:
    case EPIPE: return "node at " + path_ + " closed the connection (node stopped or died)";
    case EPROTO:
      if (c && !c->error.empty()) return "node at " + path_ + " refused the request: " + c->error;
      return "node at " + path_ + " sent a malformed reply";
    default: return "node at " + path_ + ": " + strerror(err);
  }
}

std::unique_ptr<NodeClient::Conn> NodeClient::connect_new(int* err, std::string* msg) {
  auto c = std::make_unique<Conn>();
  c->version = version_;
  c->fork_gen = fork_gen();
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    *err = errno;
    *msg = std::string("socket: ") + strerror(errno);
    return nullptr;
  }
  // Backstops for the kernel's own waits (connect() on a full backlog honours SO_SNDTIMEO);
  // our I/O is non-blocking with deadlines.
  timeval tv{timeout_ms_ / 1000, (timeout_ms_ % 1000) * 1000};
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  int rc;
  do {
    rc = ::connect(c->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    *err = (errno == EAGAIN) ? ETIMEDOUT : errno;
    *msg = *err == ETIMEDOUT ? describe(ETIMEDOUT, nullptr)
                             : "cannot connect to the node at " + path_ + ": " + strerror(errno) +
                                   (errno == ENOENT || errno == ECONNREFUSED ? " (is the node running?)" : "");
    return nullptr;
  }
  // HELLO (sent with our lowest version, which is also our only one today).
  c->begin(kHello);
  c->w.u16(version_);
  c->w.u16(version_);
  c->w.u32(static_cast<uint32_t>(getpid()));
  c->w.str("mooncake-hicache client");
  const uint8_t* f = c->w.finish();
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  int e = send_all(c->fd, f, c->w.size(), deadline);
  Header h;
  int afd = -1;
  if (e == 0) {
    e = recv_frame(c->fd, &c->rx, deadline, &h, &afd);
  } else if (e == EPIPE || e == ECONNRESET) {
    // The node may have refused us right after accept (too many connections) and closed before
    // our HELLO went out: its ERROR frame is still queued for us. Read it if it is there.
    if (recv_frame(c->fd, &c->rx, Clock::now(), &h, &afd) == 0 && h.op == kError) e = 0;
  }
  struct FdGuard {
    int& fd;
    ~FdGuard() {
      if (fd >= 0) ::close(fd);
    }
  } guard{afd};
  if (e == 0 && h.op == kError) {  // for our HELLO, or unasked (request_id 0) before closing
    Reader r(c->rx.data() + kHeaderSize, h.body_len);
    c->error_code = r.i32();
    r.u16();
    r.u16();
    c->error = std::string(r.str(4096));
    e = EPROTO;
  } else if (e == 0 && (h.op != kHello || h.request_id != c->sent_id)) {
    e = EPROTO;
  }
  HelloReply hr;
  if (e == 0) {
    Reader r(c->rx.data() + kHeaderSize, h.body_len);
    if (!decode_hello_reply(r, &hr) || afd < 0 || hr.arena_size == 0) e = EPROTO;
  }
  if (e != 0) {
    *err = (e == EPROTO && c->error_code == kErrVersion) ? EPROTONOSUPPORT : e;
    *msg = describe(e, c.get());
    return nullptr;
  }
  c->version = hr.version;

  // One mapping per node instance, shared by all connections to it.
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (map_ && map_->instance == hr.instance) {
      c->map = map_;
      return c;
    }
  }
  void* p = mmap(nullptr, hr.arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, afd, 0);
  if (p == MAP_FAILED) {
    *err = errno;
    *msg = "cannot map the node's arena (" + std::to_string(hr.arena_size) + " bytes): " + strerror(errno);
    return nullptr;
  }
#ifdef MADV_HUGEPAGE
  madvise(p, hr.arena_size, MADV_HUGEPAGE);  // shmem THP in "advise" mode needs it per mapping
#endif
  auto m = std::make_shared<ArenaMap>();
  m->base = static_cast<uint8_t*>(p);
  m->size = hr.arena_size;
  m->instance = hr.instance;
  std::vector<std::unique_ptr<Conn>> stale;
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (map_ && map_->instance == hr.instance) {
      c->map = map_;  // another thread mapped it meanwhile; ours is unmapped below
    } else {
      char mib[32];
      snprintf(mib, sizeof mib, "%.0f MiB", hr.arena_size / 1048576.0);
      note_locked(std::string(map_ ? "reconnected to a new node" : "connected to the node") + " on " + path_ +
                  " (pid " + std::to_string(hr.node_pid) + ", arena " + mib + ", protocol " +
                  std::to_string(hr.version) + ")" + (map_ ? "; the previous node's DRAM content is gone" : ""));
      map_ = m;
      c->map = m;
      stale.swap(idle_);  // connections to the previous node
      info_.version = hr.version;
      info_.node_pid = hr.node_pid;
      info_.instance = hr.instance;
      info_.arena_size = hr.arena_size;
      info_.info = hr.info;
    }
  }
  return c;
}

std::unique_ptr<NodeClient::Conn> NodeClient::acquire(Fail* why) {
  std::vector<std::unique_ptr<Conn>> drop;  // closed outside the lock
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (closed_) {
      *why = Fail::kClosed;
      return nullptr;
    }
    while (!idle_.empty()) {
      std::unique_ptr<Conn> c = std::move(idle_.back());
      idle_.pop_back();
      // An idle connection has nothing to read; anything readable means the node closed it.
      pollfd p{c->fd, POLLIN | POLLRDHUP, 0};
      if (c->map == map_ && c->fork_gen == fork_gen() && ::poll(&p, 1, 0) == 0) return c;
      drop.push_back(std::move(c));
      for (auto& o : idle_) drop.push_back(std::move(o));  // the others went with the same node
      idle_.clear();
    }
    if (Clock::now() < cooldown_until_) {
      *why = Fail::kUnavailable;
      return nullptr;
    }
  }
  drop.clear();
  int err = 0;
  std::string msg;
  std::unique_ptr<Conn> c = connect_new(&err, &msg);
  if (!c) {
    if (err == ETIMEDOUT) {
      std::lock_guard<std::mutex> lk(pool_mu_);
      cooldown_until_ = Clock::now() + std::chrono::milliseconds(timeout_ms_);
    }
    mark_down(msg);
    *why = Fail::kUnavailable;
    return nullptr;
  }
  return c;
}

void NodeClient::release(std::unique_ptr<Conn> c) {
  healthy_.store(true);
  std::lock_guard<std::mutex> lk(pool_mu_);
  if (!closed_ && c->map == map_) idle_.push_back(std::move(c));
  // else: c (a connection to an older node, or we are closed) closes when it goes out of scope.
}

void NodeClient::fail(std::unique_ptr<Conn> c, int err, const std::string& what) {
  std::string msg = what + ": " + describe(err, c.get());
  std::vector<std::unique_ptr<Conn>> drop;
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    drop.swap(idle_);  // the same node answers them: do not hand them out again
    if (err == ETIMEDOUT) cooldown_until_ = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  }
  mark_down(msg);
  c.reset();  // closing the socket makes the node release this connection's tokens
}

int NodeClient::roundtrip(Conn& c, Reader* reply) {
  const uint8_t* f = c.w.finish();
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  int e = send_all(c.fd, f, c.w.size(), deadline);
  if (e) return e;
  Header h;
  e = recv_frame(c.fd, &c.rx, deadline, &h, nullptr);
  if (e) return e;
  if (h.request_id != c.sent_id && !(h.op == kError && h.request_id == 0)) return EPROTO;
  if (h.op == kError) {
    Reader r(c.rx.data() + kHeaderSize, h.body_len);
    c.error_code = r.i32();
    r.u16();
    r.u16();
    c.error = std::string(r.str(4096));
    return EPROTO;
  }
  if (h.op != c.sent_op) return EPROTO;
  *reply = Reader(c.rx.data() + kHeaderSize, static_cast<size_t>(h.body_len));
  return 0;
}

// ---- batch calls ---------------------------------------------------------------------------

void NodeClient::batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                           const std::vector<uint32_t>& depths, int32_t* results) {
  const size_t n = keys.size();
  if (n == 0) return;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  const int32_t down = why == Fail::kClosed ? status_code(Status::kClosed) : status_code(Status::kNodeUnavailable);
  std::vector<uint32_t> local_idx;
  std::vector<uint32_t>& todo = c ? c->idx : local_idx;
  todo.clear();
  if (c) c->sizes.assign(n, 0);
  for (size_t i = 0; i < n; i++) {
    int32_t st = key_code(keys[i]);
    bool null_ptr = false;
    uint64_t sz = i < values.size() ? sg_bytes(values[i], &null_ptr) : 0;
    if (st == status_code(Status::kOk) && (i >= values.size() || null_ptr)) st = status_code(Status::kInvalidParams);
    results[i] = st;
    if (st != status_code(Status::kOk)) continue;
    if (!c) {
      results[i] = down;
      continue;
    }
    c->sizes[i] = sz;
    todo.push_back(static_cast<uint32_t>(i));
  }
  if (!c) return;

  // Waves of reserve -> copy -> commit. A key refused with NO_SPACE (every slot of its class is
  // reserved, typically by this very batch when it is larger than the DRAM tier) is retried in
  // the next wave, once the pages committed by this one have become evictable. Every wave
  // commits at least one page or ends the call, so it terminates.
  std::vector<uint8_t> oks;  // one small vector per call (not per key)
  while (!todo.empty()) {
    c->begin(kPutReserve);
    encode_put_reserve(c->w, keys, todo, c->sizes, depths);
    Reader r;
    int e = roundtrip(*c, &r);
    if (e == 0) {
      uint32_t m = r.u32();
      if (m != todo.size() || r.remaining() != m * kReserveResultWire) e = EPROTO;
    }
    if (e) {
      for (uint32_t i : todo) results[i] = status_code(Status::kNodeUnavailable);
      return fail(std::move(c), e, "put");
    }
    c->tokens.clear();
    c->pos.clear();
    c->retry.clear();
    oks.clear();
    const ArenaMap& map = *c->map;
    for (uint32_t j = 0; j < todo.size(); j++) {
      int32_t status = r.i32();
      uint64_t off = r.u64(), token = r.u64();
      uint32_t i = todo[j];
      if (status == 1) {  // stored already: nothing to copy
        results[i] = status_code(Status::kOk);
      } else if (status == status_code(Status::kNoSpace)) {
        results[i] = status_code(Status::kNoSpace);
        c->retry.push_back(i);
      } else if (status < 0) {
        results[i] = status;
      } else if (status != status_code(Status::kOk) || !map.holds(off, c->sizes[i])) {
        results[i] = status_code(Status::kNodeUnavailable);  // never write outside the arena; give the slot back
        c->tokens.push_back(token);
        c->pos.push_back(i);
        oks.push_back(0);
      } else {
        gather(values[i], map.base + off, c->sizes[i]);
        c->tokens.push_back(token);
        c->pos.push_back(i);
        oks.push_back(1);
      }
    }
    if (c->tokens.empty()) break;  // nothing reserved: the NO_SPACE results stand

    c->begin(kPutCommit);
    c->w.reserve(4 + 9 * c->tokens.size());
    c->w.u32(static_cast<uint32_t>(c->tokens.size()));
    for (size_t t = 0; t < c->tokens.size(); t++) {
      c->w.u64(c->tokens[t]);
      c->w.u8(oks[t]);
    }
    e = roundtrip(*c, &r);
    if (e == 0) {
      uint32_t m = r.u32();
      if (m != c->tokens.size() || r.remaining() != 4ull * m) e = EPROTO;
    }
    if (e) {
      for (uint32_t i : c->pos) results[i] = status_code(Status::kNodeUnavailable);
      for (uint32_t i : c->retry) results[i] = status_code(Status::kNodeUnavailable);
      return fail(std::move(c), e, "put commit");
    }
    size_t committed = 0;
    for (size_t t = 0; t < c->pos.size(); t++) {
      int32_t res = r.i32();
      if (!oks[t]) continue;
      results[c->pos[t]] = res;
      committed += res == status_code(Status::kOk);
    }
    if (committed == 0) break;
    todo.swap(c->retry);
  }
  release(std::move(c));
}

void NodeClient::batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results) {
  const size_t n = keys.size();
  if (n == 0) return;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  const int64_t down = why == Fail::kClosed ? status_code(Status::kClosed) : status_code(Status::kNotFound);
  std::vector<uint32_t> local_idx;
  std::vector<uint32_t>& todo = c ? c->idx : local_idx;
  todo.clear();
  for (size_t i = 0; i < n; i++) {
    int32_t st = key_code(keys[i]);
    if (st == status_code(Status::kOk) && i >= buffers.size()) st = status_code(Status::kInvalidParams);
    results[i] = st;
    if (st != status_code(Status::kOk)) continue;
    if (!c) {
      results[i] = down;
      continue;
    }
    todo.push_back(static_cast<uint32_t>(i));
  }
  if (!c) return;

  // Waves of pin -> copy -> unpin: a key the node could not stage in DRAM (NO_SPACE: the slots
  // are pinned, typically by this batch) is asked for again after this wave's unpin.
  while (!todo.empty()) {
    c->begin(kGetPin);
    encode_keys(c->w, keys, todo);
    Reader r;
    int e = roundtrip(*c, &r);
    if (e == 0) {
      uint32_t m = r.u32();
      if (m != todo.size() || r.remaining() != m * kPinResultWire) e = EPROTO;
    }
    if (e) {
      for (uint32_t i : todo) results[i] = status_code(Status::kNotFound);
      return fail(std::move(c), e, "get");
    }
    c->tokens.clear();
    c->retry.clear();
    const ArenaMap& map = *c->map;
    for (uint32_t j = 0; j < todo.size(); j++) {
      int64_t status = r.i64();
      uint64_t off = r.u64(), token = r.u64();
      r.u8();  // tier
      uint32_t i = todo[j];
      if (status == status_code(Status::kNoSpace)) {
        results[i] = status_code(Status::kNotFound);
        c->retry.push_back(i);
        continue;
      }
      if (status < 0) {
        results[i] = status;
        continue;
      }
      c->tokens.push_back(token);
      uint64_t len = static_cast<uint64_t>(status);
      bool null_ptr = false;
      uint64_t cap = sg_bytes(buffers[i], &null_ptr);
      if (!map.holds(off, len)) {
        results[i] = status_code(Status::kNotFound);  // never read outside the arena
      } else if (null_ptr) {
        results[i] = status_code(Status::kInvalidParams);
      } else if (cap < len) {
        results[i] = status_code(Status::kBufferTooSmall);
      } else {
        scatter(map.base + off, len, buffers[i]);
        results[i] = status;
      }
    }
    if (c->tokens.empty()) break;  // nothing pinned: the misses stand
    // Fire and forget: the node handles this connection's frames in order.
    c->begin(kGetUnpin);
    c->w.reserve(4 + 8 * c->tokens.size());
    c->w.u32(static_cast<uint32_t>(c->tokens.size()));
    for (uint64_t t : c->tokens) c->w.u64(t);
    const uint8_t* f = c->w.finish();
    e = send_all(c->fd, f, c->w.size(), Clock::now() + std::chrono::milliseconds(timeout_ms_));
    // The copies above are complete and valid; a failed unpin only loses the connection (and
    // the node unpins when it sees it close).
    if (e) return fail(std::move(c), e, "unpin");
    todo.swap(c->retry);
  }
  release(std::move(c));
}

void NodeClient::batch_exists(const std::vector<std::string>& keys, int32_t* results) {
  const size_t n = keys.size();
  if (n == 0) return;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  const int32_t down = why == Fail::kClosed ? status_code(Status::kClosed) : 0;
  std::vector<uint32_t> local_idx;
  std::vector<uint32_t>& idx = c ? c->idx : local_idx;
  idx.clear();
  for (size_t i = 0; i < n; i++) {
    int32_t st = key_code(keys[i]);
    results[i] = st;
    if (st != status_code(Status::kOk)) continue;
    if (!c) {
      results[i] = down;
      continue;
    }
    idx.push_back(static_cast<uint32_t>(i));
  }
  if (!c) return;
  if (idx.empty()) return release(std::move(c));
  c->begin(kExists);
  encode_keys(c->w, keys, idx);
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == 0) {
    uint32_t m = r.u32();
    if (m != idx.size() || r.remaining() != 4ull * m) e = EPROTO;
  }
  if (e) {
    for (uint32_t i : idx) results[i] = 0;
    return fail(std::move(c), e, "exists");
  }
  for (uint32_t i : idx) results[i] = r.i32();
  release(std::move(c));
}

int32_t NodeClient::prefetch(const std::vector<std::string>& keys) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return 0;
  c->idx.clear();
  for (size_t i = 0; i < keys.size(); i++)
    if (key_code(keys[i]) == status_code(Status::kOk)) c->idx.push_back(static_cast<uint32_t>(i));
  if (c->idx.empty()) {
    release(std::move(c));
    return 0;
  }
  c->begin(kPrefetch);
  encode_keys(c->w, keys, c->idx);
  Reader r;
  int e = roundtrip(*c, &r);
  int32_t q = e == 0 ? r.i32() : 0;
  if (e == 0 && !r.done()) e = EPROTO;
  if (e) {
    fail(std::move(c), e, "prefetch");
    return 0;
  }
  release(std::move(c));
  return q;
}

int32_t NodeClient::remove(const std::string& key) {
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return why == Fail::kClosed ? status_code(Status::kClosed) : status_code(Status::kNodeUnavailable);
  c->begin(kRemove);
  c->w.u32(1);
  c->w.str(key);
  Reader r;
  int e = roundtrip(*c, &r);
  int32_t rc = 0;
  if (e == 0) {
    uint32_t m = r.u32();
    rc = r.i32();
    if (m != 1 || !r.done()) e = EPROTO;
  }
  if (e) {
    fail(std::move(c), e, "remove");
    return status_code(Status::kNodeUnavailable);
  }
  release(std::move(c));
  return rc;
}

int32_t NodeClient::remove_all() {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return why == Fail::kClosed ? status_code(Status::kClosed) : status_code(Status::kNodeUnavailable);
  c->begin(kRemoveAll);
  Reader r;
  int e = roundtrip(*c, &r);
  int32_t rc = e == 0 ? r.i32() : 0;
  if (e == 0 && !r.done()) e = EPROTO;
  if (e) {
    fail(std::move(c), e, "remove_all");
    return status_code(Status::kNodeUnavailable);
  }
  release(std::move(c));
  return rc;
}

bool NodeClient::stats_json(std::string* out) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) {
    if (why == Fail::kClosed) {
      std::lock_guard<std::mutex> lk(pool_mu_);
      last_error_ = "the client is closed";
    }
    return false;
  }
  c->begin(kStats);
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == 0) {
    std::string_view s = r.str();
    if (!r.done()) e = EPROTO;
    out->assign(s.data(), s.size());
  }
  if (e) {
    fail(std::move(c), e, "stats");
    return false;
  }
  release(std::move(c));
  return true;
}

int64_t NodeClient::get_value(const std::string& key, const std::function<uint8_t*(size_t)>& alloc) {
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return why == Fail::kClosed ? status_code(Status::kClosed) : status_code(Status::kNotFound);
  c->idx.assign(1, 0);
  std::vector<std::string> one{key};
  c->begin(kGetPin);
  encode_keys(c->w, one, c->idx);
  Reader r;
  int e = roundtrip(*c, &r);
  int64_t status = status_code(Status::kNotFound);
  uint64_t off = 0, token = 0;
  if (e == 0) {
    uint32_t m = r.u32();
    status = r.i64();
    off = r.u64();
    token = r.u64();
    r.u8();
    if (m != 1 || !r.done()) e = EPROTO;
  }
  if (e) {
    fail(std::move(c), e, "get");
    return status_code(Status::kNotFound);
  }
  if (status < 0) {
    release(std::move(c));
    return status;
  }
  int64_t result = status;
  if (!c->map->holds(off, static_cast<uint64_t>(status))) {
    result = status_code(Status::kNotFound);
  } else if (alloc) {
    uint8_t* dst = alloc(static_cast<size_t>(status));
    if (dst)
      memcpy(dst, c->map->base + off, static_cast<size_t>(status));
    else
      result = status_code(Status::kInvalidParams);
  }
  c->begin(kGetUnpin);
  c->w.u32(1);
  c->w.u64(token);
  const uint8_t* f = c->w.finish();
  e = send_all(c->fd, f, c->w.size(), Clock::now() + std::chrono::milliseconds(timeout_ms_));
  if (e) {
    fail(std::move(c), e, "unpin");
    return result;
  }
  release(std::move(c));
  return result;
}

int64_t NodeClient::value_size(const std::string& key) { return get_value(key, nullptr); }

bool NodeClient::ping() {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return false;
  c->begin(kPing);
  c->w.u64(c->sent_id);
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == 0 && (r.u64() != c->sent_id || !r.done())) e = EPROTO;
  if (e) {
    fail(std::move(c), e, "ping");
    return false;
  }
  release(std::move(c));
  return true;
}

}  // namespace mch
