// PeerSession and PeerDispatcher: one authenticated TCP connection of a node (a rank or node
// of another host) and the ops served on it (node/peer_protocol.h).
//
// A PeerSession is a Session (node/session.h: tokens, frame reader, writer, scratch) plus what
// the TCP side needs: its id in the server's table, whether a worker is serving it, when it was
// last active, and the ranges value bytes move through. It exists only after the handshake.
//
// PeerDispatcher serves one frame of a session; value bytes move through the ValueMover of the
// table's data path (value_mover.h: inline in the stream for TCP; rdma_mover.h: one-sided RDMA
// into / out of the peer's registered memory):
//   PEER_PUT  reserve slots for the table, move each value straight into its slot (inline values
//             without a slot are read and dropped), commit the slots whose bytes all arrived
//             (a slot whose transfer failed is given back and its key fails), reply with the
//             results. When a key gets NO_SPACE because this very batch holds the slots, the
//             slots received so far are committed (made evictable) and the rest reserved again
//             before their bytes move.
//   PEER_GET  pin, move the values (RDMA: written into the peer's buffers), reply with the status
//             table (inline: followed by the values from the pinned slots), unpin.
//   RDMA_CONNECT  sets up a lane (node/peer_rdma.h); ERROR kErrRdmaLane on a node without RDMA.
//   EXISTS, PREFETCH, REMOVE, REMOVE_ALL, STATS, PING, VIEW: the local Dispatcher's methods.
// A session's reservations and pins live in its token tables while a request runs, so a
// connection that dies mid-request leaves nothing behind (the server releases them).
//
// serve() is called by one worker at a time per session; several workers call it for
// different sessions concurrently (the store is thread-safe, counters are atomics).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "node/dispatcher.h"
#include "node/node_stats.h"
#include "node/peer_protocol.h"
#include "node/peer_rdma.h"
#include "node/peer_stats.h"
#include "node/rdma_mover.h"
#include "node/session.h"
#include "node/value_mover.h"
#include "node/view_state.h"
#include "transport/io_vec.h"

namespace mch {

struct PeerSession : Session {
  // staged, discarded: the server's counts of value bytes copied out of the frame buffer and
  // read and dropped.
  PeerSession(std::unique_ptr<Stream> s, uint64_t session_id, std::atomic<uint64_t>& staged,
              std::atomic<uint64_t>& discarded)
      : Session(std::move(s), 16 * 1024), id(session_id), inline_mover(*this, staged, discarded) {}

  const uint64_t id;
  bool busy = false;               // a worker serves it now (guarded by the server's mutex)
  Clock::time_point last_active;   // guarded by the server's mutex
  std::string peer;                // who it is (from AUTH), for messages
  std::vector<uint32_t> pending;   // PEER_PUT: keys moved into slots, not yet committed
  std::vector<uint64_t> held;      // tokens of the request being served
  InlineMover inline_mover;        // value bytes in the stream (data path kInline)
  proto::RdmaDescs descs;          // data path kRdma: the request's descriptors
  std::unique_ptr<RdmaMover> rdma_mover;  // made on the first kRdma request (holds its lane)
};

class PeerDispatcher {
 public:
  // local: serves the ops shared with the local protocol (constructed with `nc` and the views).
  // rdma: the node's RDMA side (nullptr: TCP only).
  PeerDispatcher(TieredStore& store, const ViewState& views, NodeCounters& nc, PeerCounters& pc, Dispatcher& local,
                 int timeout_ms, PeerRdma* rdma = nullptr)
      : store_(store), views_(views), nc_(nc), pc_(pc), local_(local), timeout_ms_(timeout_ms), rdma_(rdma) {}

  // Serves the frame whose header `h` has been read into s.rx. false: close the connection.
  bool serve(PeerSession& s, const proto::Header& h, int wake_fd);

 private:
  bool check_header(PeerSession& s, const proto::Header& h);
  bool put(PeerSession& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
  int64_t decode_put(PeerSession& s, proto::Reader& r, uint64_t* payload);
  bool put_values(PeerSession& s, ValueMover& m, Clock::time_point deadline, int wake_fd);
  void hold_reservations(PeerSession& s, size_t from);
  void commit(PeerSession& s, const ValueMover& m);
  void reserve_again(PeerSession& s, size_t from);
  // The mover for a table's data path, bound to the request; nullptr with *code and *msg (an
  // ERROR to answer) when this node does not serve the path or the RDMA lane is not usable.
  ValueMover* mover(PeerSession& s, uint8_t data_path, uint32_t n, bool put, int32_t* code, std::string* msg);
  bool get(PeerSession& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
  void reply_get(PeerSession& s, const proto::Header& h, ValueMover& m, uint32_t n);
  bool rdma_connect(PeerSession& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
  void unpin(PeerSession& s);
  bool delegate(PeerSession& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
  // Sends an ERROR frame; returns false (the connection is closed after it).
  bool fail(PeerSession& s, const proto::Header& h, int32_t code, const std::string& message);
  bool send_reply(PeerSession& s, Clock::time_point deadline);

  TieredStore& store_;
  const ViewState& views_;
  NodeCounters& nc_;
  PeerCounters& pc_;
  Dispatcher& local_;
  const int timeout_ms_;
  PeerRdma* rdma_;
};

}  // namespace mch
