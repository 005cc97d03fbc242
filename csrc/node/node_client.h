// NodeClient: one process's handle on one node (node_server.h), with the same batch methods as
// the in-process engines so mooncake_hicache.Store can drive either. The node is named by an
// Endpoint (transport/stream.h): a client that uses several nodes (the cluster's pool client)
// holds one NodeClient per node. One request per batch goes over the endpoint's streams; value
// bytes move with one memcpy between the caller's buffers and the node's arena, which the client
// maps from the memfd the node sends at HELLO (so the endpoint must pass descriptors: the Unix
// socket does; a TCP data path is the cluster issue's).
//
// Owns: its Endpoint, a small pool of connections (one per concurrently calling thread, opened on demand, each
// with its own HELLO) and one shared mapping of the node's arena (ArenaMap, held through
// shared_ptr by every connection and so by every call in flight). A restarted node has a new
// arena: the next HELLO maps it, connections to the old node are dropped, and the old mapping
// is unmapped when its last user lets go (bytes copied out of a pinned slot are valid even if
// the node dies after the pin: the mapping keeps the memfd alive).
//
// Failures never raise and never hang: every round trip has a deadline of timeout_ms. When the
// node is gone or late, reads return NOT_FOUND (a miss), exists returns 0 and writes return
// NODE_UNAVAILABLE; the connection is dropped (the node then releases whatever it held for it).
// The next call tries one fresh connection; after a timeout, calls within the next timeout_ms
// fail at once without trying (a hung node costs one timeout per window, not one per call).
// healthy() says whether the last call reached the node.
//
// Trust: the client talks only to a node run by its own uid or one of allowed_uids (the kernel's
// peer credentials; node/peer_policy.h), and sends its settings fingerprint in HELLO so a node
// built from other settings refuses it. A batch larger than one frame may carry (node/limits.h:
// 65,536 keys, or the op's body bound) is sent as several requests, never refused.
//
// Threading: every method may be called from any thread concurrently. pool_mu_ guards the idle
// list, the current mapping, the cool-down, closed_ and last_error_; it is held only for those
// list/field operations, never across socket I/O or memcpy. A Conn is used by one thread at a
// time: it is taken out of the pool for the whole call. No method calls into Python except the
// `alloc` callback of get_value, which runs while no lock is held.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "node/peer_policy.h"
#include "node/protocol.h"
#include "transport/stream.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/note_log.h"
#include "common/sg_list.h"

namespace mch {

struct NodeClientOptions {
  int timeout_ms = 5000;
  uint16_t protocol_version = proto::kVersion;  // a test hook: a client of another version
  std::vector<uint32_t> allowed_uids;           // node uids trusted besides this process's own
  std::string settings;                         // this client's settings fingerprint ("": none)
};

struct NodeInfo {
  uint16_t version = 0;     // protocol version agreed at HELLO
  uint32_t node_pid = 0;
  uint64_t instance = 0;    // random per node start
  uint64_t arena_size = 0;
  std::string info;
};

class DirectReader;

class NodeClient {
 public:
  // Connects and says HELLO. Throws EngineError: kFormat when the node speaks other protocol
  // versions (the message says which), kInvalid for a path too long for a Unix socket. When no
  // node answers it does not throw: healthy() is false, last_error() says why, and later calls
  // try to connect. protocol_version is a test hook (a client of another version).
  NodeClient(std::string socket_path, int timeout_ms = 5000, uint16_t protocol_version = proto::kVersion);
  NodeClient(std::unique_ptr<Endpoint> endpoint, int timeout_ms = 5000, uint16_t protocol_version = proto::kVersion);
  NodeClient(std::unique_ptr<Endpoint> endpoint, NodeClientOptions options);
  ~NodeClient();
  NodeClient(const NodeClient&) = delete;
  NodeClient& operator=(const NodeClient&) = delete;

  // results[i]: 0 or a negative Status. depths may be empty. mode (common/put_waves.h):
  // kReplace, or kKeepExisting (a key already stored reports 0 and is not copied).
  void batch_put(const std::vector<std::string>& keys, const std::vector<SgList>& values,
                 const std::vector<uint32_t>& depths, int32_t* results, PutMode mode = PutMode::kReplace);
  // results[i]: bytes copied into buffers[i] (spread over its segments in order), or a negative
  // Status: NOT_FOUND, BUFFER_TOO_SMALL (the value is larger than the segments), ...
  void batch_get(const std::vector<std::string>& keys, const std::vector<SgList>& buffers, int64_t* results);
  // results[i]: the node's answer: 1 in DRAM, 2 on NVMe only, 0 absent (or node unavailable),
  // negative Status for a bad key.
  void batch_exists(const std::vector<std::string>& keys, int32_t* results);
  // Keys queued for promotion; step: pages per promotion step (0: the node's default).
  int32_t prefetch(const std::vector<std::string>& keys, uint32_t step = 0);
  int32_t remove(const std::string& key);
  int32_t remove_all();
  // Keys removed (every key that starts with prefix, on every tier of the node), or a Status.
  int64_t remove_prefix(const std::string& prefix);
  // The node's figures as a JSON object; false (and last_error()) when the node is unavailable.
  bool stats_json(std::string* out);
  // Pins key, asks alloc(len) for a destination, copies, unpins. Returns len or a negative
  // Status. alloc may return nullptr (then status_code(Status::kInvalidParams)).
  int64_t get_value(const std::string& key, const std::function<uint8_t*(size_t)>& alloc);
  // The value's length or a negative Status (NOT_FOUND also when the node is unavailable); moves
  // no page and counts no hit on the node (VALUE_SIZE).
  int64_t value_size(const std::string& key);
  bool ping();
  // Test hook: GET_LOCATE one key and keep the location (the node releases it when this
  // client's connection ends). Returns the value's length or a Status.
  int64_t locate_and_hold(const std::string& key);
  // Bench hook: where each key's value lies in the node's data file, (its length or a Status,
  // its file offset), found with GET_LOCATE and released at once. A benchmark's disk limit
  // replays the same reads with fio (bench/store_bench.py).
  std::vector<std::pair<int64_t, uint64_t>> locations(const std::vector<std::string>& keys);

  // A request this class does not know by name (the cluster layer's VIEW): sends `op` with
  // `body`, puts the reply body in *reply. false when the node is unavailable or does not know
  // the op (last_error() says which; an unknown op does not count as the node being down).
  bool call(uint16_t op, const std::string& body, std::string* reply);
  // Drops every connection; later calls return CLOSED. Calls in flight finish normally.
  void close();

  bool healthy() const { return healthy_.load(); }
  std::string last_error() const;
  // Why the last call did not reach the node, as an errno value (0: it did): ETIMEDOUT for a
  // node that holds the socket but does not answer, ECONNREFUSED/ENOENT for no node, EACCES for
  // a node of another uid (or one that refuses ours), EUSERS when the node has too many
  // connections, ESTALE for a node started with other settings, EPROTO ...
  int last_error_code() const;
  // Lines worth logging once (connected, node lost, reconnected to a new node). Cleared when
  // taken; at most 64 are kept.
  std::vector<Note> take_notes();
  NodeInfo info() const;  // of the node last greeted
  const std::string& socket_path() const { return path_; }  // the endpoint's address
  int timeout_ms() const { return timeout_ms_; }

 private:
  struct ArenaMap;
  struct Conn;
  enum class Fail { kNone, kClosed, kUnavailable };

  std::unique_ptr<Conn> acquire(Fail* why);
  void release(std::unique_ptr<Conn> c);
  void fail(std::unique_ptr<Conn> c, int err, const std::string& what);
  struct PutOps;
  template <class T, class Write, class Read>
  T ask(uint16_t op, const char* what, T unavailable, Write write, Read read);
  template <class T>
  T single_key(uint16_t op, const std::string& key, const char* what, T unavailable);
  void connect_first();
  std::unique_ptr<Conn> connect_new(int* err, std::string* msg);
  int say_hello(Conn& c, proto::HelloReply* hr, int* arena_fd);
  bool attach_arena(Conn& c, const proto::HelloReply& hr, int arena_fd, int* err, std::string* msg);
  int send_request(Conn& c);
  int recv_reply(Conn& c, proto::Reader* reply, Clock::time_point deadline, int* fd_out);
  int roundtrip(Conn& c, proto::Reader* reply);
  int send_unpin(Conn& c, const std::vector<uint64_t>& tokens);
  // Pins, copies and unpins the keys in c->idx (in waves); false when the connection failed.
  bool get_part(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                int64_t* results);
  // Pins, copies and unpins one wave of gets; false when the connection failed (results set).
  bool get_wave(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                int64_t* results);
  // Direct reads (node/direct_reader.h): pages on NVMe that the node did not stage in DRAM.
  std::shared_ptr<DirectReader> data_reader(std::unique_ptr<Conn>& c);
  bool locate(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys, const std::vector<uint32_t>& idx,
              std::vector<proto::LocateResult>* locs);
  int send_release(Conn& c, const std::vector<proto::LocateResult>& locs);
  bool read_direct(std::unique_ptr<Conn>& c, const std::vector<std::string>& keys, const std::vector<SgList>& buffers,
                   int64_t* results);
  static int64_t located_fits(const proto::LocateResult& l, const SgList& buf);
  int64_t get_value_direct(std::unique_ptr<Conn>& c, const std::vector<std::string>& one,
                           const std::function<uint8_t*(size_t)>& alloc);
  // Valid keys into *idx with their results set; others' results are their Status.
  void check_keys(const std::vector<std::string>& keys, size_t n_values, int32_t* results, std::vector<uint32_t>* idx);
  std::string describe(int err, const Conn* c) const;
  void mark_down(int err, const std::string& msg);  // healthy -> unhealthy, with a note on the transition

  const std::unique_ptr<Endpoint> endpoint_;
  const std::string path_;
  const int timeout_ms_;
  const uint16_t version_;
  const PeerPolicy peers_;
  const std::string settings_;
  std::atomic<bool> healthy_{false};

  mutable std::mutex pool_mu_;  // see the header comment for what it guards
  std::vector<std::unique_ptr<Conn>> idle_;
  std::shared_ptr<ArenaMap> map_;  // the current node's arena
  NodeInfo info_;
  Clock::time_point cooldown_until_{};
  bool closed_ = false;
  std::string last_error_;
  int last_errno_ = 0;
  NoteLog notes_{64};
};

}  // namespace mch
