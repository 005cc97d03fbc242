// NodeClient implementation: read node_client.h (pool, failures) and protocol.h (frames).
#include "node/node_client.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>

#include "common/put_waves.h"
#include "common/status.h"
#include "transport/frame_reader.h"
#include "transport/uds.h"

namespace mch {

using namespace proto;

namespace {
// Bumped in the child of every fork(): connections inherited from the parent share their sockets
// (and request ids) with it, so a child must never use them. Written only by the atfork hook.
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
  std::unique_ptr<Stream> stream;
  std::shared_ptr<ArenaMap> map;
  uint32_t next_id = 1;
  uint64_t fork_gen = 0;  // the process generation that opened it (see g_fork_gen)
  uint16_t version = kVersion;
  uint16_t sent_op = 0;
  uint32_t sent_id = 0;
  std::string error;       // message of the last ERROR frame
  int32_t error_code = 0;  // its code (proto::ErrorCode)
  Writer w;
  FrameReader rx{4096};
  Header last{};          // the frame last received (still buffered in rx)
  bool have_last = false;
  // Per-call scratch, reused so a warm call allocates nothing per key.
  std::vector<uint32_t> idx, retry;
  std::vector<uint64_t> sizes, tokens;
  PutWaveScratch waves;

  uint32_t begin(uint16_t op) {
    sent_op = op;
    sent_id = next_id++;
    w.begin(op, sent_id, 0, version);
    return sent_id;
  }
};

// ---- construction, notes, errors ------------------------------------------------------------

NodeClient::NodeClient(std::string socket_path, int timeout_ms, uint16_t protocol_version)
    : NodeClient(std::make_unique<UnixEndpoint>(std::move(socket_path)), timeout_ms, protocol_version) {}

NodeClient::NodeClient(std::unique_ptr<Endpoint> endpoint, int timeout_ms, uint16_t protocol_version)
    : endpoint_(std::move(endpoint)),
      path_(endpoint_->address()),
      timeout_ms_(timeout_ms > 0 ? timeout_ms : 5000),
      version_(protocol_version) {
  connect_first();
}

void NodeClient::connect_first() {
  int err = 0;
  std::string msg;
  std::unique_ptr<Conn> c = connect_new(&err, &msg);
  if (c) {
    healthy_.store(true);
    return release(std::move(c));
  }
  // A node that speaks other versions is a deployment error: say so now. A node that is not
  // (yet) running is not: the client starts unhealthy and connects on a later call.
  if (err == EPROTONOSUPPORT) throw EngineError(EngineError::kFormat, msg);
  std::lock_guard<std::mutex> lk(pool_mu_);
  last_error_ = msg;
  last_errno_ = err;
  if (err == ETIMEDOUT) cooldown_until_ = Clock::now() + std::chrono::milliseconds(timeout_ms_);
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

int NodeClient::last_error_code() const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  return healthy_.load() ? 0 : last_errno_;
}

std::vector<Note> NodeClient::take_notes() { return notes_.take(); }

void NodeClient::mark_down(int err, const std::string& msg) {
  std::lock_guard<std::mutex> lk(pool_mu_);
  last_error_ = msg;
  last_errno_ = err;
  if (healthy_.exchange(false))
    notes_.warn("node unavailable (" + msg + "); reads miss and writes fail until a node answers again");
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

// ---- frames ---------------------------------------------------------------------------------

int NodeClient::send_request(Conn& c) {
  const uint8_t* f = c.w.finish();
  return c.stream->send_all(f, c.w.size(), Clock::now() + std::chrono::milliseconds(timeout_ms_));
}

// Receives one whole reply frame. The node sends nothing unasked except an ERROR before closing,
// so nothing may follow the frame.
int NodeClient::recv_reply(Conn& c, Reader* reply, Clock::time_point deadline, int* fd_out) {
  if (c.have_last) c.rx.consume(c.last);
  c.have_last = false;
  Header& h = c.last;
  int e = c.rx.read_header(*c.stream, &h, false, deadline, timeout_ms_, -1, fd_out);
  if (e) return e;
  if (h.magic != kMagic || !(h.flags & kFlagReply) || h.body_len > kMaxBody) return EPROTO;
  if ((e = c.rx.read_body(*c.stream, h, deadline, -1)) != 0) return e;
  c.have_last = true;
  if (c.rx.buffered() > kHeaderSize + h.body_len) return EPROTO;
  if (h.request_id != c.sent_id && !(h.op == kError && h.request_id == 0)) return EPROTO;
  if (h.op == kError) {
    ErrorReply er = decode_error(c.rx.body(h));
    c.error_code = er.code;
    c.error = er.message;
    return EPROTO;
  }
  if (h.op != c.sent_op) return EPROTO;
  *reply = c.rx.body(h);
  return 0;
}

int NodeClient::roundtrip(Conn& c, Reader* reply) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  int e = send_request(c);
  return e ? e : recv_reply(c, reply, deadline, nullptr);
}

// Fire and forget: the node handles a connection's frames in order.
int NodeClient::send_unpin(Conn& c, const std::vector<uint64_t>& tokens) {
  c.begin(kGetUnpin);
  c.w.reserve(4 + 8 * tokens.size());
  c.w.u32(static_cast<uint32_t>(tokens.size()));
  for (uint64_t t : tokens) c.w.u64(t);
  return send_request(c);
}

// ---- connections ----------------------------------------------------------------------------

// HELLO, sent with our lowest version (also our only one today). *arena_fd gets the memfd.
int NodeClient::say_hello(Conn& c, HelloReply* hr, int* arena_fd) {
  c.begin(kHello);
  c.w.u16(version_);
  c.w.u16(version_);
  c.w.u32(static_cast<uint32_t>(getpid()));
  c.w.str("mooncake-hicache client");
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  Reader r;
  int e = send_request(c);
  if (e == 0) {
    e = recv_reply(c, &r, deadline, arena_fd);
  } else if (e == EPIPE || e == ECONNRESET) {
    // The node may have refused us right after accept (too many connections) and closed before
    // our HELLO went out: its ERROR frame is still queued for us. Read it if it is there.
    e = recv_reply(c, &r, Clock::now(), arena_fd) == EPROTO && !c.error.empty() ? EPROTO : e;
  }
  if (e == 0 && (!decode_hello_reply(r, hr) || *arena_fd < 0 || hr->arena_size == 0)) e = EPROTO;
  return e;
}

// Maps the node's arena (one mapping per node instance, shared by all connections to it).
bool NodeClient::attach_arena(Conn& c, const HelloReply& hr, int afd, int* err, std::string* msg) {
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (map_ && map_->instance == hr.instance) return (c.map = map_), true;
  }
  void* p = mmap(nullptr, hr.arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, afd, 0);
  if (p == MAP_FAILED) {
    *err = errno;
    *msg = "cannot map the node's arena (" + std::to_string(hr.arena_size) + " bytes): " + strerror(errno);
    return false;
  }
#ifdef MADV_HUGEPAGE
  madvise(p, hr.arena_size, MADV_HUGEPAGE);  // shmem THP in "advise" mode needs it per mapping
#endif
  auto m = std::make_shared<ArenaMap>();
  m->base = static_cast<uint8_t*>(p);
  m->size = hr.arena_size;
  m->instance = hr.instance;
  std::vector<std::unique_ptr<Conn>> stale;  // closed outside the lock
  std::lock_guard<std::mutex> lk(pool_mu_);
  if (map_ && map_->instance == hr.instance) return (c.map = map_), true;  // mapped meanwhile; ours goes
  char mib[32];
  snprintf(mib, sizeof mib, "%.0f MiB", hr.arena_size / 1048576.0);
  notes_.add(std::string(map_ ? "reconnected to a new node" : "connected to the node") + " on " + path_ + " (pid " +
             std::to_string(hr.node_pid) + ", arena " + mib + ", protocol " + std::to_string(hr.version) + ")" +
             (map_ ? "; the previous node's DRAM content is gone" : ""));
  map_ = m;
  c.map = m;
  stale.swap(idle_);  // connections to the previous node
  info_ = NodeInfo{hr.version, hr.node_pid, hr.instance, hr.arena_size, hr.info};
  return true;
}

std::unique_ptr<NodeClient::Conn> NodeClient::connect_new(int* err, std::string* msg) {
  auto c = std::make_unique<Conn>();
  c->version = version_;
  c->fork_gen = fork_gen();
  c->stream = endpoint_->connect(timeout_ms_, err, msg);
  if (!c->stream) return nullptr;
  HelloReply hr;
  int afd = -1;
  int e = say_hello(*c, &hr, &afd);
  struct FdGuard {
    int& fd;
    ~FdGuard() {
      if (fd >= 0) ::close(fd);
    }
  } guard{afd};
  if (e != 0) {
    *err = (e == EPROTO && c->error_code == kErrVersion) ? EPROTONOSUPPORT : e;
    *msg = describe(e, c.get());
    return nullptr;
  }
  c->version = hr.version;
  return attach_arena(*c, hr, afd, err, msg) ? std::move(c) : nullptr;
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
      if (c->map == map_ && c->fork_gen == fork_gen() && c->stream->quiet()) return c;
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
  if (c) return c;
  if (err == ETIMEDOUT) {
    std::lock_guard<std::mutex> lk(pool_mu_);
    cooldown_until_ = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  }
  mark_down(err, msg);
  *why = Fail::kUnavailable;
  return nullptr;
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
  mark_down(err, msg);
  c.reset();  // closing the socket makes the node release this connection's tokens
}

// ---- batch calls ----------------------------------------------------------------------------

void NodeClient::check_keys(const std::vector<std::string>& keys, size_t n_values, int32_t* results,
                            std::vector<uint32_t>* idx) {
  idx->clear();
  for (size_t i = 0; i < keys.size(); i++) {
    int32_t st = key_code(keys[i]);
    if (st == status_code(Status::kOk) && i >= n_values) st = status_code(Status::kInvalidParams);
    results[i] = st;
    if (st == status_code(Status::kOk)) idx->push_back(static_cast<uint32_t>(i));
  }
}

// The node side of run_put_waves (common/put_waves.h): PUT_RESERVE and PUT_COMMIT frames, and
// the copy into the mapped arena.
struct NodeClient::PutOps {
  NodeClient& client;
  std::unique_ptr<Conn>& c;
  const std::vector<std::string>& keys;
  const std::vector<SgList>& values;
  const std::vector<uint32_t>& depths;
  int32_t* results;

  bool lost(int e, const char* what, const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
    for (uint32_t i : a) results[i] = status_code(Status::kNodeUnavailable);
    for (uint32_t i : b) results[i] = status_code(Status::kNodeUnavailable);
    client.fail(std::move(c), e, what);
    return false;
  }
  bool reserve(const std::vector<uint32_t>& todo, std::vector<Reservation>* out) {
    c->begin(kPutReserve);
    encode_put_reserve(c->w, keys, todo, c->sizes, depths);
    Reader r;
    int e = client.roundtrip(*c, &r);
    if (e == 0 && (r.u32() != todo.size() || r.remaining() != todo.size() * kReserveResultWire)) e = EPROTO;
    if (e) return lost(e, "put", todo, {});
    out->resize(todo.size());
    for (Reservation& x : *out) {
      x.status = r.i32();
      x.offset = r.u64();
      x.token = r.u64();
      if (x.status > 0 && x.status != kAlreadyStored) x.status = status_code(Status::kNodeUnavailable);
    }
    return true;
  }
  int32_t copy(uint32_t i, const Reservation& x) {
    if (!c->map->holds(x.offset, c->sizes[i])) return status_code(Status::kNodeUnavailable);  // never write outside
    gather(values[i], c->map->base + x.offset, c->sizes[i]);
    return status_code(Status::kOk);
  }
  bool commit(const std::vector<uint64_t>& tokens, const std::vector<uint8_t>& oks, const std::vector<uint32_t>& pos,
              const std::vector<uint32_t>& retry, std::vector<int32_t>* res) {
    c->begin(kPutCommit);
    c->w.reserve(4 + 9 * tokens.size());
    c->w.u32(static_cast<uint32_t>(tokens.size()));
    for (size_t t = 0; t < tokens.size(); t++) {
      c->w.u64(tokens[t]);
      c->w.u8(oks[t]);
    }
    Reader r;
    int e = client.roundtrip(*c, &r);
    if (e == 0 && (r.u32() != tokens.size() || r.remaining() != 4ull * tokens.size())) e = EPROTO;
    if (e) return lost(e, "put commit", pos, retry);
    res->resize(tokens.size());
    for (int32_t& x : *res) x = r.i32();
    return true;
  }
};

void NodeClient::batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                           const std::vector<uint32_t>& depths, int32_t* results) {
  if (keys.empty()) return;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  std::vector<uint32_t> local_idx;
  std::vector<uint32_t>& todo = c ? c->idx : local_idx;
  check_keys(keys, values.size(), results, &todo);
  if (c) c->sizes.assign(keys.size(), 0);
  for (size_t k = 0; k < todo.size();) {  // sizes, and null pointers as INVALID_PARAMS
    uint32_t i = todo[k];
    bool null_ptr = false;
    uint64_t sz = sg_bytes(values[i], &null_ptr);
    if (c) c->sizes[i] = sz;
    if (!null_ptr && c) {
      k++;
      continue;
    }
    results[i] = null_ptr ? status_code(Status::kInvalidParams)
                          : status_code(why == Fail::kClosed ? Status::kClosed : Status::kNodeUnavailable);
    todo.erase(todo.begin() + static_cast<long>(k));
  }
  if (!c) return;
  PutOps ops{*this, c, keys, values, depths, results};
  run_put_waves(todo, results, ops, c->waves);
  if (c) release(std::move(c));
}

// One wave of pin -> copy -> unpin for the keys in c->idx; keys the node could not stage in
// DRAM (NO_SPACE: the slots are pinned, typically by this batch) go to c->retry.
bool NodeClient::get_wave(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys,
                          const std::vector<SgList>& buffers, int64_t* results) {
  c->begin(kGetPin);
  encode_keys(c->w, keys, c->idx);
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == 0 && (r.u32() != c->idx.size() || r.remaining() != c->idx.size() * kPinResultWire)) e = EPROTO;
  if (e) {
    for (uint32_t i : c->idx) results[i] = status_code(Status::kNotFound);
    fail(std::move(c), e, "get");
    return false;
  }
  c->tokens.clear();
  c->retry.clear();
  for (uint32_t i : c->idx) {
    int64_t status = r.i64();
    uint64_t off = r.u64(), token = r.u64();
    r.u8();  // tier
    results[i] = status == status_code(Status::kNoSpace) ? status_code(Status::kNotFound) : status;
    if (status == status_code(Status::kNoSpace)) c->retry.push_back(i);
    if (status < 0) continue;
    c->tokens.push_back(token);
    bool null_ptr = false;
    uint64_t len = static_cast<uint64_t>(status), cap = sg_bytes(buffers[i], &null_ptr);
    if (!c->map->holds(off, len))
      results[i] = status_code(Status::kNotFound);  // never read outside the arena
    else if (null_ptr)
      results[i] = status_code(Status::kInvalidParams);
    else if (cap < len)
      results[i] = status_code(Status::kBufferTooSmall);
    else
      scatter(c->map->base + off, len, buffers[i]);
  }
  if (c->tokens.empty()) return true;  // nothing pinned: the misses stand
  // The copies above are complete and valid; a failed unpin only loses the connection (and the
  // node unpins when it sees it close).
  if ((e = send_unpin(*c, c->tokens)) != 0) {
    fail(std::move(c), e, "unpin");
    return false;
  }
  c->idx.swap(c->retry);
  return true;
}

void NodeClient::batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results) {
  if (keys.empty()) return;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  std::vector<uint32_t> local_idx;
  std::vector<int32_t> codes(keys.size());
  check_keys(keys, buffers.size(), codes.data(), c ? &c->idx : &local_idx);
  const int64_t down = status_code(why == Fail::kClosed ? Status::kClosed : Status::kNotFound);
  for (size_t i = 0; i < keys.size(); i++)
    results[i] = codes[i] == status_code(Status::kOk) && !c ? down : codes[i];
  if (!c) return;
  while (!c->idx.empty()) {
    size_t before = c->idx.size();
    if (!get_wave(c, keys, buffers, results)) return;
    if (c->idx.size() == before && c->tokens.empty()) break;  // nothing pinned: no progress
  }
  release(std::move(c));
}

void NodeClient::batch_exists(const std::vector<std::string>& keys, int32_t* results) {
  if (keys.empty()) return;
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  std::vector<uint32_t> local_idx;
  std::vector<uint32_t>& idx = c ? c->idx : local_idx;
  check_keys(keys, keys.size(), results, &idx);
  if (!c) {
    for (uint32_t i : idx) results[i] = why == Fail::kClosed ? status_code(Status::kClosed) : 0;
    return;
  }
  if (idx.empty()) return release(std::move(c));
  c->begin(kExists);
  encode_keys(c->w, keys, idx);
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == 0 && (r.u32() != idx.size() || r.remaining() != 4ull * idx.size())) e = EPROTO;
  if (e) {
    for (uint32_t i : idx) results[i] = 0;
    return fail(std::move(c), e, "exists");
  }
  for (uint32_t i : idx) results[i] = r.i32();
  release(std::move(c));
}

int32_t NodeClient::prefetch(const std::vector<std::string>& keys, uint32_t step) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return 0;
  std::vector<int32_t> codes(keys.size());
  check_keys(keys, keys.size(), codes.data(), &c->idx);
  if (c->idx.empty()) {
    release(std::move(c));
    return 0;
  }
  c->begin(kPrefetch);
  encode_keys(c->w, keys, c->idx);
  if (step) c->w.u32(step);  // optional trailing field: absent means the node's default step
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
  if (!c) return status_code(why == Fail::kClosed ? Status::kClosed : Status::kNodeUnavailable);
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
  if (!c) return status_code(why == Fail::kClosed ? Status::kClosed : Status::kNodeUnavailable);
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
  if (!c) return status_code(why == Fail::kClosed ? Status::kClosed : Status::kNotFound);
  c->idx.assign(1, 0);
  std::vector<std::string> one{key};
  c->begin(kGetPin);
  encode_keys(c->w, one, c->idx);
  Reader r;
  int e = roundtrip(*c, &r);
  uint32_t m = e == 0 ? r.u32() : 0;
  int64_t status = r.i64();
  uint64_t off = r.u64(), token = r.u64();
  r.u8();
  if (e == 0 && (m != 1 || !r.done())) e = EPROTO;
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
  if ((e = send_unpin(*c, {token})) != 0) {
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
