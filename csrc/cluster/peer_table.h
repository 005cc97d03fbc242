// Peer and PeerTable: what a pool client knows about each member it talks to over TCP.
//
// A Peer owns the member's endpoint (resolved on first use), a small pool of authenticated
// links (PeerLink, exchange.h) reused across batches, its health as this client sees it, the
// requests in flight to it (reads prefer the least loaded holder) and its counters. A peer that
// failed (refused, reset, timed out, failed the handshake) is down until its cool-down ends:
// calls skip it meanwhile, so a dead or frozen member costs one timeout per cool-down window,
// not one per call. The first call after the window tries it again.
//
// PeerTable maps members (id, host, port) to Peers, created lazily.
//
// Thread-safe: a Peer's mutex guards its idle links, health and last error; counters and the
// in-flight count are atomics. PeerTable's mutex guards its map.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cluster/exchange.h"
#include "common/note_log.h"
#include "node/peer_protocol.h"
#include "transport/tcp.h"

namespace mch::cluster {

struct PeerReport {  // a snapshot for stats
  std::string id, address, last_error;
  bool up = true;
  int64_t down_ms_left = 0;
  uint64_t requests = 0, failures = 0, timeouts = 0, bytes_sent = 0, bytes_received = 0, idle_links = 0;
  int64_t in_flight = 0;
};

class Peer {
 public:
  explicit Peer(const proto::MemberInfo& m) : member_(m) {}
  const proto::MemberInfo& member() const { return member_; }
  std::string address() const;

  // A link to use: an idle authenticated one (*reused = true) or a fresh one still connecting.
  // nullptr with *err, *msg when no connection can even be started (bad address, no fds).
  std::unique_ptr<PeerLink> link(bool* reused, int* err, std::string* msg);
  void give_back(std::unique_ptr<PeerLink> link);
  void drop_idle();  // the member closed idle links: open fresh ones

  bool down(Clock::time_point now) const;
  // Marks the peer down until `until` (a note on the transition from up); drops idle links.
  void mark_down(int err, const std::string& msg, Clock::time_point until, NoteLog& notes);
  void mark_up(NoteLog& notes);  // a request succeeded

  void count(const Exchange& ex);  // requests, failures, bytes of a finished exchange
  PeerReport report(Clock::time_point now) const;
  std::atomic<int64_t> in_flight{0};

 private:
  const proto::MemberInfo member_;
  mutable std::mutex mu_;  // guards endpoint_, idle_, up_, down_until_, last_error_
  std::unique_ptr<TcpEndpoint> endpoint_;
  std::vector<std::unique_ptr<PeerLink>> idle_;
  std::vector<uint64_t> idle_gen_;  // fork generation each idle link was opened in
  bool up_ = true;
  Clock::time_point down_until_{};
  std::string last_error_;
  std::atomic<uint64_t> requests_{0}, failures_{0}, timeouts_{0}, bytes_sent_{0}, bytes_received_{0};
};

class PeerTable {
 public:
  std::shared_ptr<Peer> get(const proto::MemberInfo& m);
  std::vector<std::shared_ptr<Peer>> all() const;

 private:
  mutable std::mutex mu_;  // guards peers_
  std::unordered_map<std::string, std::shared_ptr<Peer>> peers_;  // "id@host:port"
};

}  // namespace mch::cluster
