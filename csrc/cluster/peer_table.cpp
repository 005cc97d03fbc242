// Peer and PeerTable: see peer_table.h.
#include "cluster/peer_table.h"

#include <errno.h>
#include <string.h>

#include "common/error.h"
#include "common/fork_generation.h"
#include "transport/socket_stream.h"

namespace mch::cluster {

namespace {
constexpr size_t kMaxIdleLinks = 16;
}  // namespace

std::string Peer::address() const {
  const std::string& h = member_.host;
  return (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + std::to_string(member_.port);
}

std::unique_ptr<PeerLink> Peer::link(bool* reused, int* err, std::string* msg) {
  std::vector<std::unique_ptr<PeerLink>> drop;  // closed outside the lock
  TcpEndpoint* ep = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    while (!idle_.empty()) {
      std::unique_ptr<PeerLink> l = std::move(idle_.back());
      uint64_t gen = idle_gen_.back();
      idle_.pop_back();
      idle_gen_.pop_back();
      // An idle link has nothing to read; anything readable means the node closed it.
      if (gen == fork_generation() && l->stream->quiet()) {
        *reused = true;
        return l;
      }
      drop.push_back(std::move(l));
    }
    if (!endpoint_) {
      try {
        endpoint_ = std::make_unique<TcpEndpoint>(member_.host, member_.port);
      } catch (const EngineError& e) {
        *err = EHOSTUNREACH;
        *msg = e.what();
        return nullptr;
      }
    }
    ep = endpoint_.get();  // set once, never replaced
  }
  *reused = false;
  int fd = ep->connect_start(err);
  if (fd < 0) {
    *msg = std::string("cannot connect: ") + strerror(*err);
    return nullptr;
  }
  auto l = std::make_unique<PeerLink>();
  l->stream = std::make_unique<SocketStream>(fd, false);
  return l;
}

void Peer::give_back(std::unique_ptr<PeerLink> link) {
  if (!link) return;
  std::lock_guard<std::mutex> lk(mu_);
  if (idle_.size() >= kMaxIdleLinks) return;  // closes it
  idle_.push_back(std::move(link));
  idle_gen_.push_back(fork_generation());
}

void Peer::drop_idle() {
  std::vector<std::unique_ptr<PeerLink>> drop;
  std::lock_guard<std::mutex> lk(mu_);
  drop.swap(idle_);
  idle_gen_.clear();
}

bool Peer::down(Clock::time_point now) const {
  std::lock_guard<std::mutex> lk(mu_);
  return !up_ && now < down_until_;
}

void Peer::mark_down(int err, const std::string& msg, Clock::time_point until, NoteLog& notes) {
  std::vector<std::unique_ptr<PeerLink>> drop;
  std::lock_guard<std::mutex> lk(mu_);
  drop.swap(idle_);
  idle_gen_.clear();
  last_error_ = msg;
  down_until_ = until;
  if (err == ETIMEDOUT) timeouts_++;
  if (!up_) return;
  up_ = false;
  notes.warn("pool: member " + member_.id + " at " + address() + " is down (" + msg +
             "); its pages are read from replicas or miss until it answers again");
}

void Peer::mark_up(NoteLog& notes) {
  std::lock_guard<std::mutex> lk(mu_);
  if (up_) return;
  up_ = true;
  notes.add("pool: member " + member_.id + " at " + address() + " answers again");
}

void Peer::count(const Exchange& ex) {
  requests_++;
  if (!ex.ok()) failures_++;
  bytes_sent_ += ex.payload_sent();
  bytes_received_ += ex.payload_received();
}

PeerReport Peer::report(Clock::time_point now) const {
  PeerReport r;
  r.id = member_.id;
  r.address = address();
  std::lock_guard<std::mutex> lk(mu_);
  r.up = up_;
  r.down_ms_left = up_ || now >= down_until_ ? 0 : ms_left(down_until_);
  r.last_error = last_error_;
  r.idle_links = idle_.size();
  r.requests = requests_, r.failures = failures_, r.timeouts = timeouts_;
  r.bytes_sent = bytes_sent_, r.bytes_received = bytes_received_;
  r.in_flight = in_flight.load();
  return r;
}

std::shared_ptr<Peer> PeerTable::get(const proto::MemberInfo& m) {
  std::string key = m.id + "@" + m.host + ":" + std::to_string(m.port);
  std::lock_guard<std::mutex> lk(mu_);
  auto it = peers_.find(key);
  if (it != peers_.end()) return it->second;
  auto p = std::make_shared<Peer>(m);
  peers_.emplace(key, p);
  return p;
}

std::vector<std::shared_ptr<Peer>> PeerTable::all() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::shared_ptr<Peer>> out;
  for (const auto& [k, p] : peers_) out.push_back(p);
  return out;
}

}  // namespace mch::cluster
