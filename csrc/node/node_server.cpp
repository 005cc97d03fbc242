// NodeServer: see node_server.h (composition, threads) and node/protocol.h (frames).
#include "node/node_server.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdio>
#include <random>

#include "common/error.h"
#include "tiering/tiered_store.h"
#include "transport/uds.h"

#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

namespace mch {

using namespace proto;

namespace {

uint64_t random_instance() {
  std::random_device rd;
  uint64_t v = (uint64_t(rd()) << 32) ^ rd();
  return v ? v : 1;
}

}  // namespace

namespace {
NodeServerOptions with_timeout(int timeout_ms) {
  NodeServerOptions o;
  o.limits.timeout_ms = timeout_ms;
  return o;
}
}  // namespace

NodeServer::NodeServer(TieredStore& store, std::string socket_path, int timeout_ms)
    : NodeServer(store, std::move(socket_path), with_timeout(timeout_ms)) {}

NodeServer::NodeServer(TieredStore& store, std::string socket_path, NodeServerOptions options)
    : store_(store),
      path_(std::move(socket_path)),
      opt_(std::move(options)),
      timeout_ms_(opt_.limits.timeout_ms > 0 ? opt_.limits.timeout_ms : 5000),
      peers_(opt_.allowed_uids) {
  if (opt_.limits.max_connections == 0)
    throw EngineError(EngineError::kInvalid, "node.max_connections must be at least 1");
}

NodeServer::~NodeServer() { stop(); }

void NodeServer::start() {
  if (running_.load()) throw EngineError(EngineError::kInUse, "this node is already serving " + path_);
  // Clients get a read-write descriptor of the arena: its size and its seals must be locked
  // (dram/dram_arena.h) before the first one does, or a client could resize it under the node
  // (SIGBUS) or add a write seal that makes every later client's mapping fail.
  const int need = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW;
  int seals = fcntl(store_.arena_fd(), F_GET_SEALS);
  arena_sealed_ = seals >= 0 && (seals & need) == need;
  if (!arena_sealed_)
    throw EngineError(EngineError::kIo, "the DRAM arena's memfd is not sealed (seals " + std::to_string(seals) +
                                            "); refusing to share it with clients");
  auto listener = std::make_unique<UnixListener>(path_, opt_.socket_mode);
  int wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wfd < 0) throw EngineError(EngineError::kIo, std::string("eventfd: ") + strerror(errno));
  listener_ = std::move(listener);
  wake_fd_ = wfd;
  instance_ = random_instance();
  dispatcher_ = std::make_unique<Dispatcher>(store_, ctr_, instance_,
                                             "mooncake-hicache node pid " + std::to_string(getpid()) + " on " + path_,
                                             opt_.settings, [this] { return full_stats_json(); }, &views_);
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
  std::vector<std::unique_ptr<Session>> all;
  {
    std::lock_guard<std::mutex> lk(sessions_mu_);
    all.swap(sessions_);
  }
  for (auto& s : all) s->stream->shutdown();
  for (auto& s : all)
    if (s->th.joinable()) s->th.join();
  all.clear();
  listener_->close();
  ::close(wake_fd_);
  wake_fd_ = -1;
  running_.store(false);
}

// Tells a connection why it is closed (unasked ERROR, request_id 0), before it says anything.
void NodeServer::refuse(Stream& s, int32_t code, const std::string& message) {
  Writer w;
  encode_error(w, 0, code, message);
  const uint8_t* f = w.finish();
  s.send_all(f, w.size(), Clock::now());
}

void NodeServer::accept_loop() {
  while (!stopping_.load()) {
    std::unique_ptr<Stream> st = listener_->accept(wake_fd_, 1000);
    if (stopping_.load()) return;
    reap_finished();
    if (st) admit(std::move(st));
  }
}

// The connection the node closes to make room for a new one: a silent one (no HELLO yet, the
// oldest first), else the one idle the longest, if idle for evict_idle_after_ms and holding no
// tokens. Never one in the middle of a request. Caller holds sessions_mu_.
Session* NodeServer::eviction_victim(Clock::time_point now) {
  const int64_t idle_floor =
      (now - std::chrono::milliseconds(opt_.limits.evict_idle_after_ms)).time_since_epoch().count();
  Session* best = nullptr;
  auto rank = [](Session* s) { return std::make_pair(s->greeted.load() ? 1 : 0, s->idle_since_ns.load()); };
  for (auto& s : sessions_) {
    int64_t since = s->idle_since_ns.load();
    if (s->done.load() || s->evicted.load() || since == 0) continue;
    if (s->greeted.load() && (s->holding.load() > 0 || since > idle_floor)) continue;
    if (!best || rank(s.get()) < rank(best)) best = s.get();
  }
  return best;
}

// At the cap: closes one idle connection (eviction_victim). False when every one is busy.
bool NodeServer::make_room() {
  if (ctr_.connections.load() - evicting_.load() < opt_.limits.max_connections) return true;
  std::lock_guard<std::mutex> lk(sessions_mu_);
  Session* v = eviction_victim(Clock::now());
  if (!v) return false;
  v->evicted.store(true);
  evicting_++;
  ctr_.evicted_connections++;
  v->stream->shutdown();
  return true;
}

// A new connection: its peer must be allowed, and there must be room (or an idle one to close).
void NodeServer::admit(std::unique_ptr<Stream> st) {
  if (!peers_.allows(st->peer_uid())) {
    ctr_.refused_peers++;
    return refuse(*st, kErrNotAllowed, peers_.refusal(st->peer_uid(), "a client", "this node's socket " + path_));
  }
  if (!make_room()) {
    ctr_.refused_connections++;
    return refuse(*st, kErrTooManyConnections,
                  "too many connections: the node serves " + std::to_string(opt_.limits.max_connections) +
                      " connections, all busy; raise node.max_connections or find the client that leaks them");
  }
  {
    auto s = std::make_unique<Session>(std::move(st));
    Session* raw = s.get();
    raw->mark_idle(0);
    ctr_.connections++;
    ctr_.connections_total++;
    std::lock_guard<std::mutex> lk(sessions_mu_);
    try {
      s->th = std::thread([this, raw] { serve(raw); });
    } catch (...) {
      ctr_.connections--;
      return;
    }
    sessions_.push_back(std::move(s));
  }
}

void NodeServer::reap_finished() {
  std::lock_guard<std::mutex> lk(sessions_mu_);
  for (size_t i = 0; i < sessions_.size();) {
    if (!sessions_[i]->done.load()) {
      i++;
      continue;
    }
    if (sessions_[i]->th.joinable()) sessions_[i]->th.join();
    sessions_.erase(sessions_.begin() + static_cast<long>(i));
  }
}

bool NodeServer::send_reply(Session* s, Dispatcher::Outcome o) {
  if (o == Dispatcher::Outcome::kNoReply) return true;
  const uint8_t* f = s->w.finish();
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  int fd = o == Dispatcher::Outcome::kReplyWithArena ? store_.arena_fd()
           : o == Dispatcher::Outcome::kReplyWithDataFile ? store_.data_fd()
                                                           : -1;
  int e = fd >= 0 ? s->stream->send_with_fd(f, s->w.size(), fd, deadline) : s->stream->send_all(f, s->w.size(), deadline);
  return e == 0 && o != Dispatcher::Outcome::kFailed;
}

// Reads, checks and handles one frame; false ends the session. Before HELLO the whole frame
// must arrive within the HELLO deadline; after it a connection may idle between requests.
bool NodeServer::serve_one(Session* s) {
  Header h;
  const auto timeout = std::chrono::milliseconds(timeout_ms_);
  const auto hello_by = s->accepted + std::chrono::milliseconds(opt_.limits.hello_deadline_ms());
  s->mark_idle(s->reservations.total() + s->pins.total() + s->locations.total());
  int e = s->rx.read_header(*s->stream, &h, s->hello, hello_by, timeout_ms_, wake_fd_);
  s->idle_since_ns.store(0);
  if (e == ETIMEDOUT && !s->hello) ctr_.hello_timeouts++;
  if (e != 0) return false;
  if (dispatcher_->check_header(*s, h) == Dispatcher::Outcome::kFailed) return send_reply(s, Dispatcher::Outcome::kFailed);
  if (s->rx.read_body(*s->stream, h, s->hello ? Clock::now() + timeout : hello_by, wake_fd_) != 0) return false;
  Dispatcher::Outcome o;
  try {
    o = dispatcher_->handle(*s, h, s->rx.body(h));
  } catch (const std::exception& e) {
    o = Dispatcher::fail(*s, h.request_id, kErrInternal, std::string("node failed the request: ") + e.what());
  }
  s->rx.consume(h);
  s->greeted.store(s->hello);
  return send_reply(s, o);
}

void NodeServer::serve(Session* s) {
  while (!stopping_.load() && serve_one(s)) {
  }
  end_session(s);
}

// The session is over: give back what the client still held.
void NodeServer::end_session(Session* s) {
  s->stream->shutdown();
  uint64_t reservations = 0, pins = 0;
  release_held(*s, store_, &reservations, &pins);
  ctr_.reservations_held -= reservations;
  ctr_.released_reservations += reservations;
  ctr_.pins_held -= pins;
  ctr_.released_pins += pins;
  std::vector<uint64_t> locations;  // NVMe regions pinned for the client's direct reads
  s->locations.drain(&locations);
  if (!locations.empty()) {
    store_.release_locations(locations);
    ctr_.locations_held -= locations.size();
    ctr_.released_locations += locations.size();
  }
  if (s->evicted.load()) evicting_--;  // first: connections - evicting_ never goes below zero
  ctr_.connections--;
  s->done.store(true);
}

NodeStats NodeServer::stats() const {
  NodeStats s;
  s.pid = getpid();
  s.socket_path = path_;
  char inst[24];
  snprintf(inst, sizeof inst, "%016llx", static_cast<unsigned long long>(instance_));
  s.instance = inst;
  s.arena_sealed = arena_sealed_;
  s.take(ctr_);
  std::lock_guard<std::mutex> lk(sessions_mu_);
  for (const auto& c : sessions_)
    if (!c->done.load()) s.client_pids.push_back(c->pid);
  return s;
}

std::string NodeServer::stats_json() const { return to_json(stats()); }

std::string NodeServer::full_stats_json() const {
  NodeReport r;
  r.store = store_.stats();
  r.node = stats();
  std::lock_guard<std::mutex> lk(peer_stats_mu_);
  if (peer_stats_) {
    r.has_peer = true;
    r.peer = peer_stats_();
  }
  return to_json(r);
}

void NodeServer::set_peer_stats(std::function<PeerStats()> fn) {
  std::lock_guard<std::mutex> lk(peer_stats_mu_);
  peer_stats_ = std::move(fn);
}

}  // namespace mch
