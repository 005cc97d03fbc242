// PeerServer: see peer_server.h (threads, limits) and peer_protocol.h (frames).
#include "node/peer_server.h"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "common/error.h"
#include "tiering/tiered_store.h"
#include "transport/socket_stream.h"

namespace mch {

using namespace proto;

// epoll data: the kind in the top two bits; a handshake carries its slot and generation, a
// session its id (ids are never reused, so an event for a closed session finds nothing).
struct PeerServer::Tag {
  enum Kind : uint64_t { kListener = 0, kWake = 1, kHandshake = 2, kSession = 3 };
  static uint64_t make(Kind k, uint64_t payload) { return (uint64_t(k) << 62) | (payload & ((1ull << 62) - 1)); }
  static uint64_t handshake(uint32_t slot, uint64_t generation) {
    return make(kHandshake, (generation << 16) | slot);
  }
  static Kind kind(uint64_t tag) { return static_cast<Kind>(tag >> 62); }
  static uint64_t payload(uint64_t tag) { return tag & ((1ull << 62) - 1); }
};

namespace {

constexpr uint32_t kSessionEvents = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
constexpr uint64_t kGenerationMask = (1ull << 46) - 1;

uint64_t random_instance() {
  std::random_device rd;
  uint64_t v = (uint64_t(rd()) << 32) ^ rd();
  return v ? v : 1;
}

void epoll_set(int epfd, int op, int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  epoll_ctl(epfd, op, fd, &ev);
}

std::string peer_address(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (a.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&a);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof host);
    port = ntohs(in->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

}  // namespace

PeerServer::PeerServer(NodeServer& node, PeerServerOptions opt)
    : node_(node), opt_(std::move(opt)), secret_(opt_.secret) {
  if (opt_.node_id.empty() || opt_.node_id.size() > kMaxIdLen)
    throw EngineError(EngineError::kInvalid, "the peer server needs this member's id (1 to 64 bytes)");
}

PeerServer::~PeerServer() { stop(); }

// ---- life -----------------------------------------------------------------------------------

void PeerServer::start() {
  if (running_.load()) throw EngineError(EngineError::kInUse, "the peer server is already running");
  listener_ = std::make_unique<TcpListener>(opt_.host, opt_.port);
  port_ = listener_->port();
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epfd_ < 0 || wake_fd_ < 0) {
    int e = errno;
    stop_descriptors();
    throw EngineError(EngineError::kIo, std::string("epoll/eventfd: ") + strerror(e));
  }
  instance_ = random_instance();
  try {
    if (opt_.rdma) start_rdma();
  } catch (...) {
    stop_descriptors();
    throw;
  }
  handshake_ = std::make_unique<PeerHandshake>(secret_, opt_.node_id, instance_);
  slots_.assign(std::max(1u, opt_.max_handshakes), HandshakeSlot{});
  std::string info = "mooncake-hicache node " + opt_.node_id + " pid " + std::to_string(getpid()) + " on " +
                     listener_->address();
  // No settings fingerprint over TCP: members may differ in local settings (tiers, socket).
  local_ = std::make_unique<Dispatcher>(node_.store(), nc_, instance_, info, "",
                                        [this] { return node_.full_stats_json(); }, &node_.views());
  dispatcher_ = std::make_unique<PeerDispatcher>(node_.store(), node_.views(), nc_, pc_, *local_,
                                                 opt_.request_timeout_ms, rdma_.get());
  epoll_set(epfd_, EPOLL_CTL_ADD, listener_->fd(), EPOLLIN, Tag::make(Tag::kListener, 0));
  epoll_set(epfd_, EPOLL_CTL_ADD, wake_fd_, EPOLLIN, Tag::make(Tag::kWake, 0));
  stopping_.store(false);
  running_.store(true);
  node_.set_peer_stats([this] { return stats(); });
  poller_ = std::thread([this] { poll_loop(); });
  for (unsigned i = 0; i < std::max(1u, opt_.workers); i++) workers_.emplace_back([this] { worker_loop(); });
}

void PeerServer::stop() {
  if (!running_.load()) return;
  node_.set_peer_stats(nullptr);
  {
    std::lock_guard<std::mutex> lk(mu_);  // a worker between its check and its wait sees it
    stopping_.store(true);
  }
  uint64_t one = 1;
  ssize_t wr = write(wake_fd_, &one, sizeof one);  // stays readable: wakes the poller and blocked I/O
  (void)wr;
  if (poller_.joinable()) poller_.join();
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [id, s] : sessions_) s->stream->shutdown();
  }
  ready_cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  std::unordered_map<uint64_t, std::unique_ptr<PeerSession>> all;
  {
    std::lock_guard<std::mutex> lk(mu_);
    all.swap(sessions_);
    ready_.clear();
  }
  for (auto& [id, s] : all) release(*s);
  for (HandshakeSlot& hs : slots_)
    if (hs.fd >= 0) close_slot(hs);
  all.clear();  // the sessions hold lanes of rdma_
  dispatcher_.reset();
  rdma_.reset();
  stop_descriptors();
  running_.store(false);
}

// Opens the RDMA devices and registers the arena on them (throws EngineError).
void PeerServer::start_rdma() {
  const rdma::VerbsApi* api = rdma::verbs_provider();
  if (!api) throw EngineError(EngineError::kInvalid, rdma::verbs_unavailable_reason());
  TieredStore& store = node_.store();
  rdma_ = std::make_unique<PeerRdma>(*api, opt_.rdma_options, store.arena_base(), store.arena_size(), instance_);
}

std::vector<Note> PeerServer::take_notes() {
  std::vector<Note> out = notes_.take();
  if (rdma_) {
    std::vector<Note> more = rdma_->take_notes();
    out.insert(out.end(), more.begin(), more.end());
  }
  return out;
}

void PeerServer::stop_descriptors() {
  if (listener_) listener_->close();
  if (epfd_ >= 0) ::close(epfd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  epfd_ = wake_fd_ = -1;
}

// ---- the poller ----------------------------------------------------------------------------

void PeerServer::poll_loop() {
  epoll_event ev[64];
  while (!stopping_.load()) {
    int n = epoll_wait(epfd_, ev, 64, 100);
    for (int i = 0; i < n && !stopping_.load(); i++) {
      uint64_t tag = ev[i].data.u64;
      switch (Tag::kind(tag)) {
        case Tag::kListener: on_listener(); break;
        case Tag::kWake: break;
        case Tag::kHandshake: on_handshake(Tag::payload(tag) & 0xffff, Tag::payload(tag) >> 16); break;
        case Tag::kSession: on_session(Tag::payload(tag)); break;
      }
    }
    if (!stopping_.load()) sweep();
  }
}

void PeerServer::on_listener() {
  for (int k = 0; k < 64; k++) {  // a bounded burst; level-triggered epoll brings us back
    int fd = listener_->accept_fd();
    if (fd >= 0) {
      accept_one(fd);
      continue;
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
      // Out of descriptors: stop accepting for a moment (a level-triggered listener would spin).
      notes_.warn("peer server: out of file descriptors (" + std::string(strerror(errno)) +
                  "); pausing accepts for 100 ms (raise the node's open-file limit)");
      epoll_set(epfd_, EPOLL_CTL_MOD, listener_->fd(), 0, Tag::make(Tag::kListener, 0));
      listener_paused_until_ = Clock::now() + std::chrono::milliseconds(100);
    }
    return;
  }
}

void PeerServer::accept_one(int fd) {
  pc_.accepted++;
  if (pc_.sessions.load() + pc_.handshakes.load() >= opt_.max_connections) {
    pc_.refused_connections++;
    handshake_->send_error(fd, kErrTooManyConnections,
                           "the node serves " + std::to_string(opt_.max_connections) +
                               " peer connections already; a peer is leaking connections");
    ::close(fd);
    return;
  }
  HandshakeSlot* hs = free_slot();
  uint32_t slot = static_cast<uint32_t>(hs - slots_.data());
  if (!handshake_->begin(*hs, fd, opt_.handshake_timeout_ms)) {
    ::close(fd);
    hs->fd = -1;
    return;
  }
  pc_.handshakes++;
  epoll_set(epfd_, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, Tag::handshake(slot, hs->generation & kGenerationMask));
}

// A free handshake slot; when none is free, the oldest handshake is dropped for the newcomer
// (silent connections cannot lock real peers out).
HandshakeSlot* PeerServer::free_slot() {
  HandshakeSlot* oldest = nullptr;
  for (HandshakeSlot& hs : slots_) {
    if (hs.fd < 0) return &hs;
    if (!oldest || hs.started < oldest->started) oldest = &hs;
  }
  pc_.evicted_handshakes++;
  close_slot(*oldest);
  return oldest;
}

void PeerServer::close_slot(HandshakeSlot& hs) {
  ::close(hs.fd);  // leaves epoll with it
  hs.fd = -1;
  pc_.handshakes--;
}

void PeerServer::on_handshake(uint32_t slot, uint64_t generation) {
  if (slot >= slots_.size()) return;
  HandshakeSlot& hs = slots_[slot];
  if (hs.fd < 0 || (hs.generation & kGenerationMask) != generation) return;  // a stale event
  uint16_t version = 0;
  std::string peer;
  PeerHandshake::Reason why = PeerHandshake::Reason::kNone;
  switch (handshake_->on_input(hs, node_.views().epoch(), &version, &peer, &why)) {
    case PeerHandshake::Result::kPending: return;
    case PeerHandshake::Result::kDone: return promote(hs, version, std::move(peer));
    case PeerHandshake::Result::kRejected: note_rejection(hs, why); return close_slot(hs);
    case PeerHandshake::Result::kClosed: return close_slot(hs);
  }
}

void PeerServer::note_rejection(HandshakeSlot& hs, PeerHandshake::Reason why) {
  const char* what = "sent a malformed handshake";
  if (why == PeerHandshake::Reason::kMac) {
    pc_.auth_failures++;
    what = "failed authentication (wrong cluster secret)";
  } else if (why == PeerHandshake::Reason::kVersion) {
    pc_.version_mismatches++;
    what = "speaks another protocol version";
  } else {
    pc_.bad_frames++;
  }
  uint64_t n = ++rejections_logged_;
  if (n <= 10 || n % 1000 == 0)  // a flood is logged, not logged a thousand times
    notes_.warn("peer server: refused a connection from " + peer_address(hs.fd) + ": it " + what +
                (n > 10 ? " (" + std::to_string(n) + " refused so far; see stats()['peer'])" : ""));
}

// The handshake succeeded: the connection becomes a session (its first allocation).
void PeerServer::promote(HandshakeSlot& hs, uint16_t version, std::string peer) {
  int fd = hs.fd;
  hs.fd = -1;
  pc_.handshakes--;
  std::string where = peer_address(fd);
  auto stream = std::make_unique<SocketStream>(fd, false);
  std::lock_guard<std::mutex> lk(mu_);
  uint64_t id = next_session_++;
  auto s = std::make_unique<PeerSession>(std::move(stream), id, pc_.bytes_staged, pc_.bytes_discarded);
  s->hello = true;
  s->version = version;
  s->peer = peer + " at " + where;
  s->last_active = Clock::now();
  PeerSession& ref = *s;
  sessions_.emplace(id, std::move(s));
  pc_.sessions++;
  pc_.authenticated++;
  epoll_set(epfd_, EPOLL_CTL_MOD, fd, kSessionEvents, Tag::make(Tag::kSession, ref.id));
}

void PeerServer::on_session(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second->busy) return;
  it->second->busy = true;
  ready_.push_back(id);
  ready_cv_.notify_one();
}

// Closes handshakes past their deadline (every 100 ms) and idle sessions (every second).
void PeerServer::sweep() {
  Clock::time_point now = Clock::now();
  if (now < next_sweep_) return;
  next_sweep_ = now + std::chrono::milliseconds(100);
  if (listener_paused_until_ != Clock::time_point{} && now >= listener_paused_until_) {
    listener_paused_until_ = {};
    epoll_set(epfd_, EPOLL_CTL_MOD, listener_->fd(), EPOLLIN, Tag::make(Tag::kListener, 0));
  }
  for (HandshakeSlot& hs : slots_) {
    if (hs.fd < 0 || now < hs.deadline) continue;
    pc_.handshake_timeouts++;
    close_slot(hs);
  }
  if (now < next_idle_sweep_) return;
  next_idle_sweep_ = now + std::chrono::seconds(1);
  std::vector<std::unique_ptr<PeerSession>> idle;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      PeerSession& s = *it->second;
      if (s.busy || now - s.last_active < std::chrono::milliseconds(opt_.idle_timeout_ms)) {
        ++it;
        continue;
      }
      idle.push_back(std::move(it->second));
      it = sessions_.erase(it);
    }
  }
  pc_.idle_timeouts += idle.size();
  for (auto& s : idle) release(*s);
  idle.clear();
  if (rdma_) rdma_->sweep();
}

// ---- the workers ---------------------------------------------------------------------------

void PeerServer::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    ready_cv_.wait(lk, [this] { return stopping_.load() || !ready_.empty(); });
    if (stopping_.load()) return;
    uint64_t id = ready_.front();
    ready_.pop_front();
    auto it = sessions_.find(id);
    if (it == sessions_.end()) continue;
    PeerSession* s = it->second.get();
    lk.unlock();
    bool keep = serve_ready(*s);
    lk.lock();
    if (keep && !stopping_.load()) {
      s->busy = false;
      s->last_active = Clock::now();
      epoll_set(epfd_, EPOLL_CTL_MOD, s->stream->poll_fd(), kSessionEvents, Tag::make(Tag::kSession, id));
      continue;
    }
    if (stopping_.load()) return;  // stop() releases every session
    std::unique_ptr<PeerSession> gone = std::move(sessions_[id]);
    sessions_.erase(id);
    lk.unlock();
    release(*gone);
    gone.reset();
    lk.lock();
  }
}

// Serves the frames a readable session has sent; false ends it.
bool PeerServer::serve_ready(PeerSession& s) {
  for (;;) {
    Header h;
    auto deadline = Clock::now() + std::chrono::milliseconds(opt_.request_timeout_ms);
    if (s.rx.read_header(*s.stream, &h, false, deadline, opt_.request_timeout_ms, wake_fd_) != 0) return false;
    try {
      if (!dispatcher_->serve(s, h, wake_fd_)) return false;
    } catch (const std::exception& e) {
      notes_.warn("peer server: a request from " + s.peer + " failed: " + e.what());
      return false;
    }
    if (s.rx.buffered() == 0) return true;  // back to the poller until more arrives
  }
}

// A session is over: give back what its peer still held (a request cut short), close it.
void PeerServer::release(PeerSession& s) {
  s.stream->shutdown();
  uint64_t reservations = 0, pins = 0;
  release_held(s, node_.store(), &reservations, &pins);
  nc_.reservations_held -= reservations;
  nc_.released_reservations += reservations;
  nc_.pins_held -= pins;
  nc_.released_pins += pins;
  pc_.sessions--;
}

// ---- figures -------------------------------------------------------------------------------

PeerStats PeerServer::stats() const {
  PeerStats s;
  s.take(pc_);
  s.listen = listener_ ? listener_->address() : "";
  s.node_id = opt_.node_id;
  s.port = port_;
  s.workers = std::max(1u, opt_.workers);
  if (rdma_) s.rdma = rdma_->stats();
  for (uint16_t op : {kExists, kPrefetch, kRemove, kRemoveAll, kStats, kPing}) {
    s.requests_by_op.emplace_back(op_name(op), nc_.by_op[op].load());
    s.requests += nc_.by_op[op].load();
  }
  for (auto [op, n] : {std::pair<uint16_t, uint64_t>{kPeerPut, pc_.peer_puts.load()},
                       {kPeerGet, pc_.peer_gets.load()}, {kView, pc_.views.load()}, {kRdmaConnect, pc_.rdma_connects.load()}}) {
    s.requests_by_op.emplace_back(peer_op_name(op), n);
    s.requests += n;
  }
  return s;
}

}  // namespace mch
