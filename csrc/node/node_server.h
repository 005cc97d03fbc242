// NodeServer: serves one TieredStore to the client processes of a host. Composition only:
//   a Listener (transport/uds.h today: bytes never cross the socket; HELLO hands each session
//   the arena memfd and clients memcpy straight into / out of the slots the node reserves or
//   pins), one Session per connection (node/session.h: its tokens are released when it ends,
//   for any reason), and a Dispatcher (node/dispatcher.h) that runs each request.
//
// Who may connect (node/peer_policy.h) and every bound on what a connection may make the node
// do (node/limits.h) are checked here, before a session's first frame is read.
//
// Owns the listener, an accept thread and one thread per session (ranks per host are few).
// Does not own the TieredStore: the caller keeps it alive (and open) until stop() returns.
//
// Threading: start(), stop() and the destructor from one owner thread; stats*() from any
// thread. Session threads call the TieredStore concurrently (it is thread-safe) and never
// touch Python.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "node/dispatcher.h"
#include "node/limits.h"
#include "node/node_stats.h"
#include "node/peer_policy.h"
#include "node/session.h"
#include "node/view_state.h"
#include "transport/stream.h"

namespace mch {

class TieredStore;

struct NodeServerOptions {
  limits::ServerLimits limits;
  uint32_t socket_mode = 0600;          // the socket file's permission bits, whatever the umask
  std::vector<uint32_t> allowed_uids;   // client uids served besides the node's own
  std::string settings;                 // this node's settings fingerprint (settings_check.h)
};

class NodeServer {
 public:
  // The default cap on connections served at once (limits::ServerLimits::max_connections).
  static constexpr uint64_t kMaxConnections = limits::kDefaultMaxConnections;

  // timeout_ms: a frame that has started must finish arriving within it, and a reply must be
  // taken by the client within it; otherwise the connection is dropped (and its tokens freed).
  NodeServer(TieredStore& store, std::string socket_path, int timeout_ms = 5000);
  NodeServer(TieredStore& store, std::string socket_path, NodeServerOptions options);
  ~NodeServer();  // stop()
  NodeServer(const NodeServer&) = delete;
  NodeServer& operator=(const NodeServer&) = delete;

  // Binds and listens. Throws EngineError: kInvalid for a path too long for sun_path or one that
  // exists and is not a socket, kInUse when a live node answers on the path ("a node is already
  // serving <path>"), kIo otherwise. A stale socket file (connect() refused) is replaced.
  void start();
  // Closes the listener and every session, joins all threads, removes the socket file if it is
  // still the one start() created. Idempotent.
  void stop();
  bool running() const { return running_.load(); }
  const std::string& socket_path() const { return path_; }
  uint64_t instance() const { return instance_; }

  NodeStats stats() const;
  std::string stats_json() const;       // stats() as JSON: the "node" section
  std::string full_stats_json() const;  // the STATS reply: the store's sections plus "node" (and "peer")

  // The cluster side (a member serves peers over TCP: node/peer_server.h). The membership view
  // this node serves (VIEW), the store the peer server shares, and the "peer" section of the
  // STATS reply (fn from any thread until it is reset with nullptr).
  ViewState& views() { return views_; }
  TieredStore& store() { return store_; }
  void set_peer_stats(std::function<PeerStats()> fn);

 private:
  void accept_loop();
  void admit(std::unique_ptr<Stream> st);
  bool make_room();
  Session* eviction_victim(Clock::time_point now);
  void refuse(Stream& s, int32_t code, const std::string& message);
  void serve(Session* s);
  bool serve_one(Session* s);
  bool send_reply(Session* s, Dispatcher::Outcome o);
  void end_session(Session* s);
  void reap_finished();

  TieredStore& store_;
  const std::string path_;
  const NodeServerOptions opt_;
  const int timeout_ms_;
  const PeerPolicy peers_;
  uint64_t instance_ = 0;      // random per start(): tells clients the arena is a new one
  bool arena_sealed_ = false;  // the arena memfd's size is sealed (clients cannot resize it)

  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<Dispatcher> dispatcher_;
  int wake_fd_ = -1;  // eventfd: wakes the accept thread and idle sessions on stop()
  std::thread acceptor_;

  // Guards sessions_ (the list, not the sessions' state): taken by the accept thread to add and
  // reap, by stop() and by stats(). Joins only threads that have already finished while held.
  mutable std::mutex sessions_mu_;
  std::vector<std::unique_ptr<Session>> sessions_;

  NodeCounters ctr_;
  std::atomic<uint64_t> evicting_{0};  // sessions told to close to make room, not yet ended
  ViewState views_;
  mutable std::mutex peer_stats_mu_;  // guards peer_stats_
  std::function<PeerStats()> peer_stats_;
};

}  // namespace mch
