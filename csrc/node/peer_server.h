// PeerServer: a cluster member's TCP side. Serves the node's TieredStore to the ranks and nodes
// of other hosts (node/peer_protocol.h), next to the NodeServer that serves the local ranks.
//
// Composition:
//   TcpListener       bound to the configured address only (transport/tcp.h)
//   one poller thread  epoll over the listener, the handshakes and every idle session: accepts,
//                      runs handshakes in fixed slots (node/peer_handshake.h: nothing is
//                      allocated before a peer has proved it knows the secret), hands readable
//                      sessions to the workers, and closes handshakes and idle sessions past
//                      their deadlines
//   worker threads     serve a readable session's frames (node/peer_dispatcher.h), then give it
//                      back to the poller (EPOLLONESHOT re-armed)
//   PeerRdma           with opt.rdma: the devices, the registered arena and the RDMA lanes of the
//                      data path kRdma (node/peer_rdma.h); its completion threads
// So a thousand idle or silent connections cost descriptors and slots, not threads, and never
// delay the sessions that send requests. Limits: max_handshakes slots (when all are taken the
// oldest handshake is dropped: a flood of silent connections cannot lock peers out), and
// max_connections sessions plus handshakes (beyond it a new connection gets an unasked ERROR 7).
//
// Threading: start(), stop() and the destructor from the owner's thread; stats() and
// take_notes() from any thread. mu_ guards sessions_, ready_ and each session's busy and
// last_active fields; the handshake slots belong to the poller. Does not own the NodeServer,
// whose store, view and STATS it shares; stop() before the NodeServer stops.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/note_log.h"
#include "node/node_server.h"
#include "node/peer_dispatcher.h"
#include "node/peer_handshake.h"
#include "node/peer_rdma.h"
#include "node/peer_stats.h"
#include "transport/auth.h"
#include "transport/tcp.h"

namespace mch {

struct PeerServerOptions {
  std::string host = "127.0.0.1";  // bind this address only
  uint16_t port = 0;               // 0: any free port (see PeerServer::port())
  std::string node_id;             // this member's id, sent in the challenge and covered by the node's proof
  std::string secret;              // the cluster's shared secret
  int handshake_timeout_ms = 1000; // a connection must authenticate within it
  int request_timeout_ms = 5000;   // a frame that has started must arrive (and its reply leave) within it
  int idle_timeout_ms = 600000;    // an authenticated connection idle this long is closed
  unsigned workers = 8;
  unsigned max_connections = 4096;
  unsigned max_handshakes = 256;
  bool rdma = false;               // also serve the RDMA data path (node/peer_rdma.h)
  PeerRdmaOptions rdma_options;
};

class PeerServer {
 public:
  PeerServer(NodeServer& node, PeerServerOptions opt);
  ~PeerServer();  // stop()
  PeerServer(const PeerServer&) = delete;
  PeerServer& operator=(const PeerServer&) = delete;

  // Binds and listens; starts the threads. Throws EngineError (tcp.h: kInvalid, kInUse, kIo;
  // with rdma: kInvalid when there is no verbs provider or a device cannot be used).
  void start();
  // Closes the listener and every connection (releasing what they held) and joins the threads.
  void stop();
  bool running() const { return running_.load(); }
  uint16_t port() const { return port_; }
  PeerStats stats() const;
  std::vector<Note> take_notes();

 private:
  struct Tag;
  void poll_loop();
  void on_listener();
  void accept_one(int fd);
  HandshakeSlot* free_slot();
  void on_handshake(uint32_t slot, uint64_t generation);
  void promote(HandshakeSlot& hs, uint16_t version, std::string peer);
  void close_slot(HandshakeSlot& hs);
  void note_rejection(HandshakeSlot& hs, PeerHandshake::Reason why);
  void on_session(uint64_t id);
  void sweep();
  void worker_loop();
  bool serve_ready(PeerSession& s);
  void release(PeerSession& s);
  void stop_descriptors();
  void start_rdma();

  NodeServer& node_;
  const PeerServerOptions opt_;
  Secret secret_;
  uint64_t instance_ = 0;
  uint16_t port_ = 0;
  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  std::unique_ptr<TcpListener> listener_;
  int epfd_ = -1;
  int wake_fd_ = -1;  // eventfd: wakes the poller and any blocked worker I/O on stop()
  std::thread poller_;
  std::vector<std::thread> workers_;

  // Poller thread only.
  std::unique_ptr<PeerHandshake> handshake_;
  std::vector<HandshakeSlot> slots_;
  Clock::time_point listener_paused_until_{};
  Clock::time_point next_sweep_{}, next_idle_sweep_{};

  mutable std::mutex mu_;  // see the header comment
  std::condition_variable ready_cv_;
  std::unordered_map<uint64_t, std::unique_ptr<PeerSession>> sessions_;
  std::deque<uint64_t> ready_;
  uint64_t next_session_ = 1;

  NodeCounters nc_;  // the local-protocol ops served over TCP (EXISTS, STATS, ...) and tokens
  PeerCounters pc_;
  std::unique_ptr<Dispatcher> local_;
  std::unique_ptr<PeerRdma> rdma_;  // with opt_.rdma; outlives the sessions that hold its lanes
  std::unique_ptr<PeerDispatcher> dispatcher_;
  NoteLog notes_{64};
  std::atomic<uint64_t> rejections_logged_{0};
};

}  // namespace mch
