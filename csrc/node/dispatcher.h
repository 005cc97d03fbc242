// Dispatcher: turns one request frame of a Session into calls on the TieredStore and one reply
// frame, one method per operation (docs/protocol.md). It enforces the session rules (HELLO
// first, the agreed version, requests not replies), keeps each session's tokens, and counts
// every frame. It never touches a socket: the reply is left in the session's Writer and the
// outcome tells the server what to do with it.
//
// Any session thread may call handle() concurrently for its own session: the store is
// thread-safe and the counters are atomics. Does not own the store.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "node/node_stats.h"
#include "node/protocol.h"
#include "node/session.h"
#include "node/view_state.h"
#include "tiering/tiered_store.h"

namespace mch {

class Dispatcher {
 public:
  enum class Outcome {
    kReply,           // send s.w
    kReplyWithArena,  // send s.w with the arena memfd attached (HELLO)
    kReplyWithDataFile,  // send s.w with the NVMe data file attached, read-only (OPEN_DATA)
    kNoReply,         // nothing to send (GET_UNPIN)
    kFailed,          // send s.w (an ERROR frame), then close the connection
  };

  // settings: this node's settings fingerprint (node/settings_check.h; "" checks nothing).
  // stats_json: the node's whole STATS reply (store and node sections).
  // views: the membership view served by VIEW (nullptr: VIEW is an unknown op).
  Dispatcher(TieredStore& store, NodeCounters& ctr, uint64_t instance, std::string info, std::string settings,
             std::function<std::string()> stats_json, const ViewState* views = nullptr)
      : store_(store),
        ctr_(ctr),
        instance_(instance),
        info_(std::move(info)),
        settings_(std::move(settings)),
        stats_json_(std::move(stats_json)),
        views_(views) {}

  // Checks a header before any of its body is read: magic, version, the ops allowed before
  // HELLO and the op's body bound (node/limits.h). kFailed (an ERROR frame in s.w) refuses it;
  // kReply lets the caller read the body and call handle().
  Outcome check_header(Session& s, const proto::Header& h);
  Outcome handle(Session& s, const proto::Header& h, proto::Reader body);
  // Puts an ERROR frame in s.w; returns kFailed.
  static Outcome fail(Session& s, uint32_t request_id, int32_t code, const std::string& message);

 private:
  Outcome check_session(Session& s, const proto::Header& h);
  Outcome bad_body(Session& s, const proto::Header& h);
  Outcome hello(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome ping(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome put_reserve(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome put_commit(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome get_pin(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome get_unpin(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome exists(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome prefetch(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome remove(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome remove_all(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome stats(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome value_size(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome open_data(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome remove_prefix(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome get_locate(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome locate_release(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome view(Session& s, const proto::Header& h, proto::Reader& r);
  Outcome unknown_op(Session& s, const proto::Header& h);
  bool take_given_back(Session& s, proto::Reader& r, TokenTable& table, std::atomic<uint64_t>& held);
  // Takes the commit tokens this session owns out of its table; false for a malformed body.
  bool take_commit_tokens(Session& s, proto::Reader& r, uint32_t n);

  TieredStore& store_;
  NodeCounters& ctr_;
  const uint64_t instance_;
  const std::string info_;
  const std::string settings_;
  const std::function<std::string()> stats_json_;
  const ViewState* const views_;
};

}  // namespace mch
