// NodeServer: serves one TieredStore to the client processes of a host over a Unix domain
// stream socket (protocol.h). Bytes never cross the socket: HELLO hands each connection the
// arena memfd and clients memcpy straight into / out of the slots the node reserves or pins.
//
// Owns: the listening socket (and its file, removed by stop() if it is still ours), an accept
// thread, and one thread per connection (ranks per host are few). Each connection remembers the
// put tokens it reserved and the get tokens it pinned; when the connection closes for any reason
// (client exit, SIGKILL, bad frame, node stop) they are aborted / unpinned, so a dead client
// never leaks slots. A token a connection did not get is never passed to the store.
// Does not own the TieredStore: the caller keeps it alive (and open) until stop() returns.
//
// Threading: start(), stop() and the destructor from one owner thread; stats() from any thread.
// Connection threads call the TieredStore concurrently (it is thread-safe) and never touch
// Python.
#pragma once
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "node/protocol.h"

namespace mch {

class TieredStore;

struct NodeServerStats {
  uint64_t connections = 0;        // open now
  uint64_t connections_total = 0;  // accepted since start
  uint64_t requests = 0;           // frames handled (all ops)
  uint64_t requests_by_op[proto::kOpCount] = {};
  uint64_t bad_frames = 0;           // connections closed for a malformed frame
  uint64_t version_mismatches = 0;   // connections refused for their protocol version
  uint64_t refused_connections = 0;  // over kMaxConnections
  uint64_t pins_held = 0;            // pins clients hold now
  uint64_t reservations_held = 0;    // put slots reserved and not yet committed
  uint64_t released_pins = 0;        // unpinned by the node for clients that went away
  uint64_t released_reservations = 0;  // aborted by the node for clients that went away
  uint64_t unknown_tokens = 0;       // commit/unpin tokens the connection did not own (ignored)
  std::vector<int32_t> client_pids;  // peers connected now (SO_PEERCRED)
};

class NodeServer {
 public:
  // Connections served at once (one thread each). Ranks per host times their calling threads
  // stay far below it; a runaway client gets an ERROR frame instead of exhausting threads.
  static constexpr uint64_t kMaxConnections = 1024;

  // timeout_ms: a frame that has started must finish arriving within it, and a reply must be
  // taken by the client within it; otherwise the connection is dropped (and its tokens freed).
  NodeServer(TieredStore& store, std::string socket_path, int timeout_ms = 5000);
  ~NodeServer();  // stop()
  NodeServer(const NodeServer&) = delete;
  NodeServer& operator=(const NodeServer&) = delete;

  // Binds and listens. Throws EngineError: kInvalid for a path too long for sun_path or one that
  // exists and is not a socket, kInUse when a live node answers on the path ("a node is already
  // serving <path>"), kIo otherwise. A stale socket file (connect() refused) is replaced.
  void start();
  // Closes the listener and every connection, joins all threads, removes the socket file if it
  // is still the one start() created. Idempotent.
  void stop();
  bool running() const { return running_.load(); }
  const std::string& socket_path() const { return path_; }
  uint64_t instance() const { return instance_; }

  NodeServerStats stats() const;
  // stats() as a JSON object (the "node" section of the STATS reply).
  std::string stats_json() const;

 private:
  struct Conn;
  void accept_loop();
  void serve(Conn* c);
  void reap_finished(bool all);
  void count_op(uint16_t op);

  TieredStore& store_;
  const std::string path_;
  const int timeout_ms_;
  uint64_t instance_ = 0;     // random per start(): tells clients the arena is a new one
  bool arena_sealed_ = false;  // the arena memfd's size is sealed (clients cannot resize it)

  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: wakes the accept thread on stop()
  dev_t sock_dev_ = 0;
  ino_t sock_ino_ = 0;
  std::thread acceptor_;

  // Guards conns_ (the list, not the connections' state): taken by the accept thread to add and
  // reap, by stop() and by stats(). Never held while a connection thread is joined except in
  // reap_finished(), which joins only threads that have already finished.
  mutable std::mutex conns_mu_;
  std::vector<std::unique_ptr<Conn>> conns_;

  struct Counters {
    std::atomic<uint64_t> connections{0}, connections_total{0}, requests{0}, bad_frames{0},
        version_mismatches{0}, refused_connections{0}, pins_held{0}, reservations_held{0}, released_pins{0},
        released_reservations{0}, unknown_tokens{0};
    std::atomic<uint64_t> by_op[proto::kOpCount] = {};
  } ctr_;
};

}  // namespace mch
