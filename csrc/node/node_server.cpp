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

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
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

NodeServer::NodeServer(TieredStore& store, std::string socket_path, int timeout_ms)
    : store_(store), path_(std::move(socket_path)), timeout_ms_(timeout_ms > 0 ? timeout_ms : 5000) {}

NodeServer::~NodeServer() { stop(); }

void NodeServer::start() {
  if (running_.load()) throw EngineError(EngineError::kInUse, "this node is already serving " + path_);
  auto listener = std::make_unique<UnixListener>(path_);
  int wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wfd < 0) throw EngineError(EngineError::kIo, std::string("eventfd: ") + strerror(errno));
  // Clients get a read-write descriptor of the arena; seal its size so a client cannot shrink
  // it under the node (which would SIGBUS the node). Works when the memfd allows sealing.
  arena_sealed_ = fcntl(store_.arena_fd(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0;
  listener_ = std::move(listener);
  wake_fd_ = wfd;
  instance_ = random_instance();
  dispatcher_ = std::make_unique<Dispatcher>(store_, ctr_, instance_,
                                             "mooncake-hicache node pid " + std::to_string(getpid()) + " on " + path_,
                                             [this] { return full_stats_json(); }, &views_);
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

// Tells a connection over the cap why it is closed (unasked ERROR, request_id 0).
void NodeServer::refuse(Stream& s) {
  ctr_.refused_connections++;
  Writer w;
  encode_error(w, 0, kErrTooManyConnections,
               "the node serves " + std::to_string(kMaxConnections) +
                   " connections already; a client is leaking connections");
  const uint8_t* f = w.finish();
  s.send_all(f, w.size(), Clock::now());
}

void NodeServer::accept_loop() {
  while (!stopping_.load()) {
    std::unique_ptr<Stream> st = listener_->accept(wake_fd_, 1000);
    if (stopping_.load()) return;
    reap_finished();
    if (!st) continue;
    if (ctr_.connections.load() >= kMaxConnections) {
      refuse(*st);
      continue;
    }
    auto s = std::make_unique<Session>(std::move(st));
    Session* raw = s.get();
    ctr_.connections++;
    ctr_.connections_total++;
    std::lock_guard<std::mutex> lk(sessions_mu_);
    try {
      s->th = std::thread([this, raw] { serve(raw); });
    } catch (...) {
      ctr_.connections--;
      continue;
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
  int e = o == Dispatcher::Outcome::kReplyWithArena ? s->stream->send_with_fd(f, s->w.size(), store_.arena_fd(), deadline)
                                                    : s->stream->send_all(f, s->w.size(), deadline);
  return e == 0 && o != Dispatcher::Outcome::kFailed;
}

// Reads, checks and handles one frame; false ends the session.
bool NodeServer::serve_one(Session* s) {
  Header h;
  const auto timeout = std::chrono::milliseconds(timeout_ms_);
  if (s->rx.read_header(*s->stream, &h, true, Clock::time_point::max(), timeout_ms_, wake_fd_) != 0) return false;
  if (h.magic != kMagic) {
    ctr_.bad_frames++;
    return send_reply(s, Dispatcher::fail(*s, h.request_id, kErrBadFrame, "bad frame magic: not a mooncake-hicache client"));
  }
  if (h.version < kMinVersion || h.version > kVersion) {
    ctr_.version_mismatches++;
    return send_reply(s, Dispatcher::fail(*s, h.request_id, kErrVersion,
                                          "protocol version mismatch: this node speaks versions " +
                                              std::to_string(kMinVersion) + ".." + std::to_string(kVersion) +
                                              ", the client sent a version " + std::to_string(h.version) +
                                              " frame; run client and node from the same mooncake-hicache release"));
  }
  if (h.body_len > kMaxBody) {
    ctr_.bad_frames++;
    return send_reply(s, Dispatcher::fail(*s, h.request_id, kErrBadFrame,
                                          "frame body of " + std::to_string(h.body_len) + " bytes exceeds the limit of " +
                                              std::to_string(kMaxBody)));
  }
  if (s->rx.read_body(*s->stream, h, Clock::now() + timeout, wake_fd_) != 0) return false;
  Dispatcher::Outcome o;
  try {
    o = dispatcher_->handle(*s, h, s->rx.body(h));
  } catch (const std::exception& e) {
    o = Dispatcher::fail(*s, h.request_id, kErrInternal, std::string("node failed the request: ") + e.what());
  }
  s->rx.consume(h);
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
