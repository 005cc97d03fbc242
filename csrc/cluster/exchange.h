// Exchange: one request to one peer and its reply, as a non-blocking state machine, and
// run_exchanges(), which drives the exchanges of one batch round together: one poll() over
// their sockets per wake-up, until each is done or failed or the deadline passes (never a busy
// poll, never a thread per request).
//
// An exchange on a fresh link first connects and authenticates (transport/auth.h: it checks the
// peer's id and proof of the secret), then sends the request frame and the value bytes after it
// straight from the caller's buffers (writev), and reads the reply: header and table into the
// link's buffer (exactly, so no value byte is read into it), then a PEER_GET's values straight
// into the destinations dest() names (readv). A link that ends healthy is kept for reuse.
//
// Data paths: a request's table says how its value bytes travel. kInline: in the stream, as
// above. kRdma (build_put_rdma / build_get_rdma): the table carries descriptors of the caller's
// registered buffers and the node moves the bytes with one-sided RDMA over a lane (an RC queue
// pair set up by an RDMA_CONNECT exchange); only the frames cross the socket. Such an exchange
// keeps its lane (lane()) so the pool client can put it in error when the request does not end
// well, and can be rebuilt inline (downgrade()) when the node refuses the lane.
//
// An Exchange and its PeerLink are used by one thread at a time (the calling thread of a batch).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/rdma_client.h"
#include "common/sg_list.h"
#include "node/peer_protocol.h"
#include "transport/auth.h"
#include "transport/io_vec.h"
#include "transport/stream.h"

namespace mch::cluster {

// One authenticated connection to a member (reused across batches).
struct PeerLink {
  std::unique_ptr<Stream> stream;  // a non-blocking TCP SocketStream
  bool authenticated = false;
  uint16_t version = proto::kVersion;
  uint64_t instance = 0;  // the node's, from AUTH (random per node start)
  uint32_t next_id = 1;
  std::vector<uint8_t> rx;  // header + table of replies (never value bytes)
};

class Exchange {
 public:
  enum class Phase { kIdle, kConnect, kChallenge, kSendAuth, kAuthReply, kSend, kHead, kValues, kDone, kFailed };
  // dest(k, len): where the value of the request's k-th key goes (its bytes are read into the
  // segments in order); nullptr: drop it.
  using Dest = std::function<const SgList*(uint32_t k, uint64_t len)>;

  // ---- the request (built before start) ----
  // PEER_PUT: the frame holds the table; the value bytes of values[idx[k]] follow.
  void build_put(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                 const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths,
                 const std::vector<SgList>& values);
  // PEER_GET with capacities caps[idx[k]]; dest(k, len) places each value.
  void build_get(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                 const std::vector<uint64_t>& caps, Dest dest);
  // The same over RDMA: d holds key k's descriptors (d.first by position in idx). inline_build
  // rebuilds the request inline (downgrade()).
  void build_put_rdma(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                      const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& depths,
                      const proto::RdmaDescs& d, std::shared_ptr<ClientLane> lane,
                      std::function<void(Exchange&)> inline_build);
  void build_get_rdma(const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                      const proto::RdmaDescs& d, std::shared_ptr<ClientLane> lane,
                      std::function<void(Exchange&)> inline_build);
  // Drops the lane and rebuilds the request inline (the node refused the lane).
  void downgrade();
  void build_rdma_connect(const proto::RdmaConnect& c);
  // EXISTS, PREFETCH, REMOVE (the local protocol's key-list bodies; step: PREFETCH's pages a step).
  void build_keys(uint16_t op, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
                  uint32_t step = 0);
  // STATS, VIEW, REMOVE_ALL, PING: an empty body.
  void build_empty(uint16_t op);

  // Starts on `link`: an authenticated one from the pool, or a fresh one whose stream is still
  // connecting (connect, handshake and the request must then finish by connect_deadline
  // for the handshake part). expected_id: the member id the peer must prove it is.
  void start(std::unique_ptr<PeerLink> link, const std::string& expected_id, const Secret* secret,
             Clock::time_point connect_deadline);

  // For run_exchanges(): the descriptor and events to poll for (-1 when finished).
  int poll_fd() const;
  short poll_events() const;
  Clock::time_point deadline(Clock::time_point call_deadline) const;
  // Moves what the socket allows now; called when poll() reported it ready.
  void progress();
  void fail(int err, const std::string& msg);

  bool finished() const { return phase_ == Phase::kDone || phase_ == Phase::kFailed; }
  bool sending() const { return phase_ == Phase::kSend; }
  Phase phase() const { return phase_; }
  Clock::time_point done_at() const { return done_at_; }  // when it finished
  bool ok() const { return phase_ == Phase::kDone; }
  // Whether the failure happened on a link reused from the pool before any reply byte arrived
  // (the peer closed an idle connection): worth one retry on a fresh connection.
  bool stale_link_failure() const { return phase_ == Phase::kFailed && reused_ && !got_reply_; }
  uint16_t op() const { return op_; }
  uint32_t keys() const { return n_; }

  // ---- results ----
  int error() const { return error_; }               // errno value; EPROTO: see error_code()
  int32_t error_code() const { return error_code_; }  // the ERROR frame's code (proto::ErrorCode)
  const std::string& message() const { return message_; }
  uint64_t epoch() const { return epoch_; }          // PEER_PUT / PEER_GET replies
  proto::Reader reply() const;                       // the reply body (table only for PEER_GET)
  const std::vector<int64_t>& get_status() const { return status_; }
  uint64_t payload_sent() const { return payload_out_; }
  const std::shared_ptr<ClientLane>& lane() const { return lane_; }
  bool lane_down() const { return lane_down_; }  // the reply said the lane broke
  uint64_t payload_received() const { return payload_in_; }
  // Takes the link back (for the peer's pool) once the exchange is done.
  std::unique_ptr<PeerLink> take_link();

 private:
  void begin_frame(uint16_t op, uint64_t table_hint);
  bool send_some(IoVec& v);
  bool recv_at_least(size_t min, size_t max);
  bool recv_frame(uint64_t max_body);
  bool recv_head();
  bool recv_values();
  void on_challenge();
  void on_auth_reply();
  void start_request();
  bool reply_table_bytes(const proto::Header& h, uint64_t* table);
  void on_error_frame(int err_for_auth);
  void on_table();
  void plan_values(const proto::Header& h, uint64_t table);

  // request
  uint16_t op_ = 0;
  uint32_t n_ = 0;
  proto::Writer w_;
  std::vector<Segment> payload_;
  uint64_t payload_out_ = 0;
  std::vector<uint64_t> caps_;
  Dest dest_;
  uint64_t table_hint_ = 0;  // expected reply table bytes (0: unknown)
  std::shared_ptr<ClientLane> lane_;  // kRdma: the lane the node moves the bytes over
  std::function<void(Exchange&)> inline_build_;
  bool lane_down_ = false;
  uint64_t rdma_out_ = 0;  // value bytes of an RDMA put (read by the node)
  // state
  Phase phase_ = Phase::kIdle;
  std::unique_ptr<PeerLink> link_;
  std::string expected_id_;
  const Secret* secret_ = nullptr;
  Clock::time_point connect_deadline_ = Clock::time_point::max();
  bool reused_ = false, got_reply_ = false;
  IoVec out_, in_;
  proto::Writer auth_w_;
  Nonce nonce_c_{}, nonce_s_{};
  size_t have_ = 0, need_ = 0;
  proto::Header head_{};
  bool head_parsed_ = false;
  // results
  int error_ = 0;
  int32_t error_code_ = 0;
  std::string message_;
  uint64_t epoch_ = 0;
  std::vector<int64_t> status_;
  uint64_t payload_in_ = 0;
  std::vector<uint8_t> discard_;
  Clock::time_point done_at_{};
};

// Sends what each exchange can send right now (a round starts its requests with it before the
// local node's share is served, so the remote ones are on their way meanwhile).
void kick_exchanges(const std::vector<Exchange*>& ex);
// Drives the exchanges until each has finished; those not finished by `deadline` (or their own
// connect deadline) fail with ETIMEDOUT.
void run_exchanges(const std::vector<Exchange*>& ex, Clock::time_point deadline);

}  // namespace mch::cluster
