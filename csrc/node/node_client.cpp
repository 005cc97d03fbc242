// NodeClient implementation: read node_client.h (pool, failures) and protocol.h (frames).
#include "node/node_client.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "common/fork_generation.h"
#include "common/put_waves.h"
#include "common/status.h"
#include "node/direct_reader.h"
#include "node/limits.h"
#include "transport/frame_reader.h"
#include "transport/uds.h"

namespace mch {

using namespace proto;

namespace {
uint64_t fork_gen() { return fork_generation(); }  // common/fork_generation.h
}  // namespace

struct NodeClient::ArenaMap {
  uint8_t* base = nullptr;
  uint64_t size = 0;
  uint64_t instance = 0;
  // The reader of this node's NVMe data file, opened on first need (data_mu guards both).
  std::mutex data_mu;
  std::shared_ptr<DirectReader> reader;
  bool data_asked = false;
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
  uint64_t fork_gen = 0;  // the process generation that opened it (common/fork_generation.h)
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

  uint32_t begin(uint16_t op, uint32_t flags = 0) {
    sent_op = op;
    sent_id = next_id++;
    w.begin(op, sent_id, flags, version);
    return sent_id;
  }
};

// ---- construction, notes, errors ------------------------------------------------------------

NodeClient::NodeClient(std::string socket_path, int timeout_ms, uint16_t protocol_version)
    : NodeClient(std::make_unique<UnixEndpoint>(std::move(socket_path)), timeout_ms, protocol_version) {}

namespace {
NodeClientOptions plain(int timeout_ms, uint16_t protocol_version) {
  NodeClientOptions o;
  o.timeout_ms = timeout_ms;
  o.protocol_version = protocol_version;
  return o;
}

// The errno a refused HELLO stands for (node_client.h, last_error_code).
int hello_refusal_errno(int32_t error_code) {
  switch (error_code) {
    case kErrVersion: return EPROTONOSUPPORT;
    case kErrTooManyConnections: return EUSERS;
    case kErrNotAllowed: return EACCES;
    case kErrSettings: return ESTALE;
    default: return EPROTO;
  }
}

// idx cut into parts that each fit one request frame of `op`: at most kMaxBatch keys and at
// most limits::max_request_body(op) bytes, a key costing `per_key` bytes plus its length, each
// frame also carrying `trailer` bytes after the list.
std::vector<std::pair<size_t, size_t>> frame_parts(const std::vector<std::string>& keys,
                                                   const std::vector<uint32_t>& idx, uint16_t op, size_t per_key,
                                                   size_t trailer = 0) {
  std::vector<std::pair<size_t, size_t>> parts;
  const uint64_t max_body = limits::max_request_body(op);
  size_t begin = 0;
  uint64_t body = 4 + trailer;
  for (size_t j = 0; j < idx.size(); j++) {
    uint64_t cost = per_key + keys[idx[j]].size();
    if (j > begin && (j - begin >= kMaxBatch || body + cost > max_body)) {
      parts.emplace_back(begin, j);
      begin = j;
      body = 4 + trailer;
    }
    body += cost;
  }
  if (begin < idx.size()) parts.emplace_back(begin, idx.size());
  return parts;
}

// Runs run(part) (false: the connection was lost) over each part of idx; after a loss, lost(part)
// for the rest. One part (the usual case) runs on idx itself, without a copy.
template <class Run, class Lost>
void run_in_parts(std::vector<uint32_t>& idx, const std::vector<std::pair<size_t, size_t>>& parts, Run run,
                  Lost lost) {
  if (parts.size() <= 1) {
    run(idx);
    return;
  }
  std::vector<uint32_t> all(idx), part;  // idx may belong to the connection a failure drops
  bool alive = true;
  for (auto [a, b] : parts) {
    part.assign(all.begin() + static_cast<long>(a), all.begin() + static_cast<long>(b));
    if (alive)
      alive = run(part);
    else
      lost(part);
  }
}
}  // namespace

NodeClient::NodeClient(std::unique_ptr<Endpoint> endpoint, int timeout_ms, uint16_t protocol_version)
    : NodeClient(std::move(endpoint), plain(timeout_ms, protocol_version)) {}

NodeClient::NodeClient(std::unique_ptr<Endpoint> endpoint, NodeClientOptions options)
    : endpoint_(std::move(endpoint)),
      path_(endpoint_->address()),
      timeout_ms_(options.timeout_ms > 0 ? options.timeout_ms : 5000),
      version_(options.protocol_version),
      peers_(std::move(options.allowed_uids)),
      settings_(std::move(options.settings)) {
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
  c.w.str(settings_);
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
  // Never map past the end of the memfd: touching such a page raises SIGBUS in this process.
  struct stat st;
  if (e == 0 && (fstat(*arena_fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < hr->arena_size)) e = EPROTO;
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
  if (!peers_.allows(c->stream->peer_uid())) {  // never hand pages to a node of another user
    *err = EACCES;
    *msg = peers_.refusal(c->stream->peer_uid(), "the node", path_);
    return nullptr;
  }
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
    *err = e == EPROTO ? hello_refusal_errno(c->error_code) : e;
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
  PutMode mode;

  bool lost(int e, const char* what, const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
    for (uint32_t i : a) results[i] = status_code(Status::kNodeUnavailable);
    for (uint32_t i : b) results[i] = status_code(Status::kNodeUnavailable);
    client.fail(std::move(c), e, what);
    return false;
  }
  bool reserve(const std::vector<uint32_t>& todo, std::vector<Reservation>* out) {
    c->begin(kPutReserve, mode == PutMode::kKeepExisting ? kFlagKeepExisting : 0);
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
                           const std::vector<uint32_t>& depths, int32_t* results, PutMode mode) {
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
  PutOps ops{*this, c, keys, values, depths, results, mode};
  run_in_parts(
      todo, frame_parts(keys, todo, kPutReserve, 4 + 8 + 4),
      [&](std::vector<uint32_t>& part) {
        run_put_waves(part, results, ops, c->waves);
        return c != nullptr;
      },
      [&](const std::vector<uint32_t>& part) {
        for (uint32_t i : part) results[i] = status_code(Status::kNodeUnavailable);
      });
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
  run_in_parts(
      c->idx, frame_parts(keys, c->idx, kGetPin, 4),
      [&](std::vector<uint32_t>& part) {
        if (&part != &c->idx) c->idx = part;
        return get_part(c, keys, buffers, results);
      },
      [&](const std::vector<uint32_t>& part) {
        for (uint32_t i : part) results[i] = status_code(Status::kNotFound);
      });
  if (c) release(std::move(c));
}

bool NodeClient::get_part(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys,
                          const std::vector<SgList>& buffers, int64_t* results) {
  while (!c->idx.empty()) {
    size_t before = c->idx.size();
    if (!get_wave(c, keys, buffers, results)) return false;
    if (c->idx.size() == before && c->tokens.empty()) break;  // nothing pinned: no progress
  }
  // On NVMe but not stageable in DRAM: the client reads them itself, as an in-process store does.
  return c->idx.empty() || read_direct(c, keys, buffers, results);
}

// ---- direct reads -------------------------------------------------------------------------------

// This node's data file reader (OPEN_DATA on first need, once per node instance), or null when
// the node has none to give (no NVMe tier, or a transport that cannot pass descriptors).
std::shared_ptr<DirectReader> NodeClient::data_reader(std::unique_ptr<Conn>& c) {
  std::shared_ptr<ArenaMap> map = c->map;
  std::lock_guard<std::mutex> lk(map->data_mu);
  if (map->data_asked) return map->reader;
  c->begin(kOpenData);
  Reader r;
  int fd = -1, e = send_request(*c);
  if (e == 0) e = recv_reply(*c, &r, Clock::now() + std::chrono::milliseconds(timeout_ms_), &fd);
  int32_t status = e == 0 ? r.i32() : 0;
  if (e == 0 && !r.done()) e = EPROTO;
  if (e) {
    if (fd >= 0) ::close(fd);
    fail(std::move(c), e, "open data");
    return nullptr;
  }
  map->data_asked = true;
  if (status == status_code(Status::kOk) && fd >= 0) {
    try {
      map->reader = std::make_shared<DirectReader>(fd, notes_);
    } catch (const std::exception& ex) {
      notes_.warn(std::string("cannot read the node's NVMe file directly: ") + ex.what());
    }
  } else if (fd >= 0) {
    ::close(fd);
  }
  return map->reader;
}

// GET_LOCATE for keys[idx]: *locs gets one result per key. False when the connection failed.
bool NodeClient::locate(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys,
                        const std::vector<uint32_t>& idx, std::vector<LocateResult>* locs) {
  c->begin(kGetLocate);
  encode_keys(c->w, keys, idx);
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == 0 && (r.u32() != idx.size() || r.remaining() != idx.size() * kLocateResultWire)) e = EPROTO;
  if (e) {
    fail(std::move(c), e, "locate");
    return false;
  }
  locs->resize(idx.size());
  for (LocateResult& l : *locs) {
    l.status = r.i64();
    l.offset = r.u64();
    l.checksum = r.u64();
    l.token = r.u64();
  }
  return true;
}

// Fire and forget, like GET_UNPIN.
int NodeClient::send_release(Conn& c, const std::vector<LocateResult>& locs) {
  c.begin(kLocateRelease);
  c.w.reserve(4 + 8 * locs.size());
  uint32_t n = 0;
  for (const LocateResult& l : locs) n += l.status >= 0;
  c.w.u32(n);
  for (const LocateResult& l : locs)
    if (l.status >= 0) c.w.u64(l.token);
  return n ? send_request(c) : 0;
}

// Reads keys[c->idx] (on NVMe, not staged in DRAM) straight into their buffers: GET_LOCATE, the
// reads, LOCATE_RELEASE. Keys it cannot read stay misses. False when the connection failed.
bool NodeClient::read_direct(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys,
                             const std::vector<SgList>& buffers, int64_t* results) {
  std::shared_ptr<DirectReader> reader = data_reader(c);
  if (!c) return false;
  std::vector<LocateResult> locs;
  if (!reader || !locate(c, keys, c->idx, &locs)) return c != nullptr;
  std::vector<ValueRead> reads;
  std::vector<uint32_t> which;
  for (size_t j = 0; j < locs.size(); j++) {
    const uint32_t i = c->idx[j];
    results[i] = located_fits(locs[j], buffers[i]);
    if (results[i] != status_code(Status::kOk) || locs[j].status == 0) continue;
    reads.push_back(ValueRead{locs[j].offset, static_cast<uint64_t>(locs[j].status), locs[j].checksum, &buffers[i]});
    which.push_back(i);
  }
  std::vector<int64_t> got(reads.size());
  reader->read(reads, got.data());
  for (size_t j = 0; j < which.size(); j++) results[which[j]] = got[j];
  int e = send_release(*c, locs);
  if (e) fail(std::move(c), e, "release");
  return c != nullptr;
}

// kOk when a located value can be read into buf (then the result is set by the read), else the
// result: the location's own Status, BUFFER_TOO_SMALL or INVALID_PARAMS; 0 for an empty value.
int64_t NodeClient::located_fits(const LocateResult& l, const SgList& buf) {
  if (l.status <= 0) return l.status;
  bool null_ptr = false;
  uint64_t cap = sg_bytes(buf, &null_ptr);
  if (null_ptr) return status_code(Status::kInvalidParams);
  return cap < static_cast<uint64_t>(l.status) ? status_code(Status::kBufferTooSmall) : status_code(Status::kOk);
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
  auto absent = [&](const std::vector<uint32_t>& part) {
    for (uint32_t i : part) results[i] = 0;
  };
  run_in_parts(idx, frame_parts(keys, idx, kExists, 4), [&](std::vector<uint32_t>& part) {
    c->begin(kExists);
    encode_keys(c->w, keys, part);
    Reader r;
    int e = roundtrip(*c, &r);
    if (e == 0 && (r.u32() != part.size() || r.remaining() != 4ull * part.size())) e = EPROTO;
    if (e) {
      absent(part);
      fail(std::move(c), e, "exists");
      return false;
    }
    for (uint32_t i : part) results[i] = r.i32();
    return true;
  }, absent);
  if (c) release(std::move(c));
}

int32_t NodeClient::prefetch(const std::vector<std::string>& keys, uint32_t step) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return 0;
  std::vector<int32_t> codes(keys.size());
  check_keys(keys, keys.size(), codes.data(), &c->idx);
  int32_t queued = 0;
  run_in_parts(c->idx, frame_parts(keys, c->idx, kPrefetch, 4, step ? 4 : 0), [&](std::vector<uint32_t>& part) {
    if (part.empty()) return true;
    c->begin(kPrefetch);
    encode_keys(c->w, keys, part);
    if (step) c->w.u32(step);  // optional trailing field: absent means the node's default step
    Reader r;
    int e = roundtrip(*c, &r);
    int32_t q = e == 0 ? r.i32() : 0;
    if (e == 0 && !r.done()) e = EPROTO;
    if (e) {
      fail(std::move(c), e, "prefetch");
      return false;
    }
    queued += q;
    return true;
  }, [](const std::vector<uint32_t>&) {});
  if (c) release(std::move(c));
  return queued;
}

// One request whose body write(w) writes and whose reply read(r, &v) reads (false: malformed).
// Returns v, or `unavailable` (CLOSED once closed) when the node could not be asked.
template <class T, class Write, class Read>
T NodeClient::ask(uint16_t op, const char* what, T unavailable, Write write, Read read) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return why == Fail::kClosed ? T(status_code(Status::kClosed)) : unavailable;
  c->begin(op);
  write(c->w);
  Reader r;
  int e = roundtrip(*c, &r);
  T v{};
  if (e == 0 && (!read(r, &v) || !r.done())) e = EPROTO;
  if (e) {
    fail(std::move(c), e, what);
    return unavailable;
  }
  release(std::move(c));
  return v;
}

// ask() with a one-key list for body and a one-entry list for reply.
template <class T>
T NodeClient::single_key(uint16_t op, const std::string& key, const char* what, T unavailable) {
  return ask<T>(
      op, what, unavailable,
      [&](Writer& w) {
        w.u32(1);
        w.str(key);
      },
      [](Reader& r, T* v) {
        uint32_t m = r.u32();
        *v = sizeof(T) == 8 ? static_cast<T>(r.i64()) : static_cast<T>(r.i32());
        return m == 1;
      });
}

int32_t NodeClient::remove(const std::string& key) {
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  return single_key<int32_t>(kRemove, key, "remove", status_code(Status::kNodeUnavailable));
}

int64_t NodeClient::remove_prefix(const std::string& prefix) {
  if (prefix.empty() || prefix.size() > kMaxKeyLen) return status_code(Status::kInvalidParams);
  return ask<int64_t>(
      kRemovePrefix, "remove_prefix", status_code(Status::kNodeUnavailable), [&](Writer& w) { w.str(prefix); },
      [](Reader& r, int64_t* v) { return (*v = r.i64()), true; });
}

int32_t NodeClient::remove_all() {
  return ask<int32_t>(
      kRemoveAll, "remove_all", status_code(Status::kNodeUnavailable), [](Writer&) {},
      [](Reader& r, int32_t* v) { return (*v = r.i32()), true; });
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
  if (status == status_code(Status::kNoSpace)) return get_value_direct(c, one, alloc);
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

// get_value of a page on NVMe that the node could not stage: located, then read into alloc(len).
int64_t NodeClient::get_value_direct(std::unique_ptr<Conn>& c, const std::vector<std::string>& one,
                                     const std::function<uint8_t*(size_t)>& alloc) {
  std::shared_ptr<DirectReader> reader = data_reader(c);
  std::vector<LocateResult> locs;
  if (!c || !reader || !locate(c, one, {0}, &locs)) {
    if (c) release(std::move(c));
    return status_code(Status::kNotFound);
  }
  int64_t result = locs[0].status;
  uint8_t* dst = result > 0 && alloc ? alloc(static_cast<size_t>(result)) : nullptr;
  if (result > 0 && alloc && !dst) result = status_code(Status::kInvalidParams);
  if (dst) {
    SgList buf{Segment{dst, static_cast<uint64_t>(locs[0].status)}};
    reader->read({ValueRead{locs[0].offset, static_cast<uint64_t>(locs[0].status), locs[0].checksum, &buf}}, &result);
  }
  int e = send_release(*c, locs);
  if (e) {
    fail(std::move(c), e, "release");
    return result;
  }
  release(std::move(c));
  return result;
}

int64_t NodeClient::locate_and_hold(const std::string& key) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  std::vector<LocateResult> locs;
  if (!c || !locate(c, {key}, {0}, &locs)) return status_code(Status::kNodeUnavailable);
  release(std::move(c));
  return locs[0].status;
}

std::vector<std::pair<int64_t, uint64_t>> NodeClient::locations(const std::vector<std::string>& keys) {
  std::vector<std::pair<int64_t, uint64_t>> out(keys.size(), {status_code(Status::kNodeUnavailable), 0});
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  std::vector<uint32_t> idx;
  std::vector<int32_t> codes(keys.size());
  check_keys(keys, keys.size(), codes.data(), &idx);
  for (size_t i = 0; i < keys.size(); i++)
    if (codes[i] != status_code(Status::kOk)) out[i].first = codes[i];
  std::vector<LocateResult> locs;
  if (!c || idx.empty() || !locate(c, keys, idx, &locs)) {
    if (c) release(std::move(c));
    return out;
  }
  for (size_t j = 0; j < idx.size(); j++) out[idx[j]] = {locs[j].status, locs[j].offset};
  if (int e = send_release(*c, locs)) {
    fail(std::move(c), e, "release");
    return out;
  }
  release(std::move(c));
  return out;
}

int64_t NodeClient::value_size(const std::string& key) {
  int32_t st = key_code(key);
  if (st != status_code(Status::kOk)) return st;
  return single_key<int64_t>(kValueSize, key, "value_size", status_code(Status::kNotFound));
}

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

bool NodeClient::call(uint16_t op, const std::string& body, std::string* reply) {
  Fail why = Fail::kNone;
  std::unique_ptr<Conn> c = acquire(&why);
  if (!c) return false;
  c->begin(op);
  c->w.bytes(body.data(), body.size());
  c->error_code = 0;
  c->error.clear();
  Reader r;
  int e = roundtrip(*c, &r);
  if (e == EPROTO && c->error_code == kErrUnknownOp) {  // an older node: it is fine, the op is not
    std::lock_guard<std::mutex> lk(pool_mu_);
    last_error_ = describe(e, c.get());
  } else if (e) {
    fail(std::move(c), e, op_name(op));
    return false;
  } else {
    reply->assign(reinterpret_cast<const char*>(r.pos()), r.remaining());
  }
  release(std::move(c));
  return e == 0;
}

}  // namespace mch
