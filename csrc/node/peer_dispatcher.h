// PeerSession and PeerDispatcher: one authenticated TCP connection of a node (a rank or node
// of another host) and the ops served on it (node/peer_protocol.h).
//
// A PeerSession is a Session (node/session.h: tokens, frame reader, writer, scratch) plus what
// the TCP side needs: its id in the server's table, whether a worker is serving it, when it was
// last active, and the ranges value bytes move through. It exists only after the handshake.
//
// PeerDispatcher serves one frame of a session; value bytes move through the ValueMover of the
// table's data path (value_mover.h: inline in the stream for TCP):
//   PEER_PUT  reserve slots for the table, receive each value straight into its slot (values
//             without a slot are read and dropped), commit, reply with the results. When a key
//             gets NO_SPACE because this very batch holds the slots, the slots received so far
//             are committed (made evictable) and the rest reserved again before their bytes.
//   PEER_GET  pin, reply with the status table, then writev the values from the pinned slots,
//             unpin.
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
#include "node/peer_stats.h"
#include "node/session.h"
#include "node/value_mover.h"
#include "node/view_state.h"
#include "transport/io_vec.h"

namespace mch {

struct PeerSession : Session {
  // staged: the server's count of value bytes copied out of the frame buffer.
  PeerSession(std::unique_ptr<Stream> s, uint64_t session_id, std::atomic<uint64_t>& staged)
      : Session(std::move(s), 16 * 1024), id(session_id), inline_mover(*this, staged) {}

  const uint64_t id;
  bool busy = false;               // a worker serves it now (guarded by the server's mutex)
  Clock::time_point last_active;   // guarded by the server's mutex
  std::string peer;                // who it is (from AUTH), for messages
  IoVec iov;                       // value bytes of the request being served
  std::vector<uint8_t> scratch;    // discarded value bytes land here (allocated on first use)
  std::vector<uint32_t> pending;   // PEER_PUT: keys received into slots, not yet committed
  std::vector<uint64_t> held;      // tokens of the request being served
  InlineMover inline_mover;        // value bytes in the stream (data path kInline)
};

class PeerDispatcher {
 public:
  // local: serves the ops shared with the local protocol (constructed with `nc` and the views).
  PeerDispatcher(TieredStore& store, const ViewState& views, NodeCounters& nc, PeerCounters& pc, Dispatcher& local,
                 int timeout_ms)
      : store_(store), views_(views), nc_(nc), pc_(pc), local_(local), timeout_ms_(timeout_ms) {}

  // Serves the frame whose header `h` has been read into s.rx. false: close the connection.
  bool serve(PeerSession& s, const proto::Header& h, int wake_fd);

 private:
  bool check_header(PeerSession& s, const proto::Header& h);
  bool put(PeerSession& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
  bool put_values(PeerSession& s, ValueMover& m, Clock::time_point deadline, int wake_fd);
  void discard(PeerSession& s, uint64_t n);
  void hold_reservations(PeerSession& s, size_t from);
  void commit(PeerSession& s);
  void reserve_again(PeerSession& s, size_t from);
  // The mover for a table's data path; nullptr when this node does not serve it.
  ValueMover* mover(PeerSession& s, uint8_t data_path);
  bool get(PeerSession& s, const proto::Header& h, Clock::time_point deadline, int wake_fd);
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
};

}  // namespace mch
