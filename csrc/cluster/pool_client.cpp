// PoolClient: see pool_client.h (the call flow) and docs/cluster.md (the data path).
#include "cluster/pool_client.h"

#include "cluster/pool_call.h"

#include <errno.h>

#include <algorithm>
#include <limits>

#include "common/error.h"
#include "common/keys.h"
#include "common/status.h"

namespace mch::cluster {

using namespace proto;

// ---- construction, view ---------------------------------------------------------------------

PoolClient::PoolClient(std::shared_ptr<NodeClient> local, PoolOptions opt) : opt_(std::move(opt)), local_(std::move(local)) {
  if (!opt_.secret.empty()) secret_ = std::make_unique<Secret>(opt_.secret);
  view_ = std::make_shared<const ClusterView>(ViewInfo{}, Clock::now());
  if (!opt_.rdma) return;
  const rdma::VerbsApi* api = rdma::verbs_provider();
  if (!api) throw EngineError(EngineError::kInvalid, rdma::verbs_unavailable_reason());
  rdma_ = std::make_unique<RdmaClient>(*api, opt_.rdma_options);
}

int PoolClient::register_buffer(void* p, uint64_t n, std::string* err) {
  return rdma_ ? rdma_->register_buffer(p, n, err) : 0;
}

bool PoolClient::unregister_buffer(void* p) { return rdma_ ? rdma_->unregister_buffer(p) : true; }

PoolClient::~PoolClient() { close(); }

// Later calls answer CLOSED; pooled links are closed (calls in flight finish normally).
void PoolClient::close() {
  closed_.store(true);
  for (const auto& p : peers_.all()) p->drop_idle();
}

void PoolClient::set_local(std::shared_ptr<NodeClient> local) {
  std::lock_guard<std::mutex> lk(local_mu_);
  local_ = std::move(local);
}

std::shared_ptr<NodeClient> PoolClient::local() const {
  std::lock_guard<std::mutex> lk(local_mu_);
  return local_;
}

void PoolClient::set_view(const ViewInfo& v) {
  auto cv = std::make_shared<const ClusterView>(v, Clock::now());
  std::lock_guard<std::mutex> lk(view_mu_);
  view_ = std::move(cv);
  refreshed_at_ = Clock::now();
  stale_ = false;
  ctr_.view_refreshes++;
}

bool PoolClient::refresh_view() {
  std::shared_ptr<NodeClient> node = local();
  std::unique_lock<std::mutex> one(refresh_mu_, std::try_to_lock);
  if (!node || !one) return false;
  std::string body;
  ViewInfo v;
  bool ok = node->call(kView, "", &body);
  if (ok) {
    Reader r(reinterpret_cast<const uint8_t*>(body.data()), body.size());
    ok = decode_view(r, &v);
    if (!ok) notes_.warn("pool: the node sent a malformed view; keeping the previous one");
  }
  if (ok) {
    set_view(v);
    return true;
  }
  std::lock_guard<std::mutex> lk(view_mu_);
  refreshed_at_ = Clock::now();  // the node is away: keep the last view, ask again later
  return false;
}

std::shared_ptr<const ClusterView> PoolClient::view() { return snapshot(true); }

std::shared_ptr<const ClusterView> PoolClient::snapshot(bool refresh) {
  {
    std::lock_guard<std::mutex> lk(view_mu_);
    bool due = stale_ || Clock::now() - refreshed_at_ >= std::chrono::milliseconds(opt_.view_refresh_ms);
    if (!refresh || !due) return view_;
  }
  refresh_view();
  std::lock_guard<std::mutex> lk(view_mu_);
  return view_;
}

void PoolClient::note_epoch(const Call& c, uint64_t epoch) {
  if (epoch == 0 || epoch == c.view->epoch()) return;
  std::lock_guard<std::mutex> lk(view_mu_);
  stale_ = true;  // a peer has seen another view: ask the node on the next call
}

PoolClient::Call PoolClient::begin_call() {
  Call c;
  c.view = snapshot(true);
  c.local = local();
  c.peers.resize(c.view->targets().size());
  c.stale_retried.assign(c.view->targets().size(), 0);
  c.deadline = Clock::now() + std::chrono::milliseconds(opt_.request_timeout_ms);
  return c;
}

std::shared_ptr<Peer> PoolClient::peer_of(Call& c, uint16_t t) {
  std::shared_ptr<Peer>& slot = c.peers[t];
  if (!slot) slot = peers_.get(c.view->targets()[t].member);
  return slot;
}

bool PoolClient::available(Call& c, uint16_t t) {
  if (c.is_local(t)) return true;  // the node client fails fast by itself when its node is away
  if (c.view->targets()[t].member.port == 0) return false;  // no listener: not reachable over TCP
  return !peer_of(c, t)->down(Clock::now());
}

Clock::time_point PoolClient::cooldown_end() const {
  return Clock::now() + std::chrono::milliseconds(opt_.cooldown_ms ? opt_.cooldown_ms : opt_.request_timeout_ms);
}

// Puts `e` on a link to `p` (a pooled one, or a fresh connection). false: none could be started
// (the peer is marked down).
bool PoolClient::start_on(Peer& p, Exchange& e) {
  bool reused = false;
  int err = 0;
  std::string msg;
  std::unique_ptr<PeerLink> link = p.link(&reused, &err, &msg);
  if (!link) {
    p.mark_down(err, msg, cooldown_end(), notes_);
    return false;
  }
  e.start(std::move(link), p.member().id, secret_.get(),
          Clock::now() + std::chrono::milliseconds(opt_.connect_timeout_ms));
  p.in_flight++;
  ctr_.requests++;
  return true;
}

// ---- rounds ---------------------------------------------------------------------------------

// Starts every remote exchange of the round (Round::ex, set by the caller).
void PoolClient::start_remote(Call& c, Round& r) {
  std::vector<Exchange*> live;
  for (size_t t = 0; t < r.ex.size(); t++) {
    if (!r.ex[t]) continue;
    if (start_on(*peer_of(c, static_cast<uint16_t>(t)), *r.ex[t])) {
      live.push_back(r.ex[t].get());
      continue;
    }
    r.ex[t].reset();
    r.failed[t] = 1;
  }
  kick_exchanges(live);
}

// Waits for the round's remote exchanges and books their outcome. A request that failed on a
// pooled link the member had closed while idle is sent once more on a fresh connection, and so
// is (inline) one whose RDMA lane the member refused; any other failure marks the member down
// for the cool-down. RDMA lanes of requests that did not end well are put in error first.
void PoolClient::finish_remote(Call& c, Round& r) {
  std::vector<Exchange*> live;
  for (auto& e : r.ex)
    if (e) live.push_back(e.get());
  run_exchanges(live, c.deadline);
  live.clear();
  for (size_t t = 0; t < r.ex.size(); t++) {
    Exchange* e = r.ex[t].get();
    if (!e) continue;
    bool refused_lane = settle_lane(*e);
    if (!(refused_lane || e->stale_link_failure()) || c.stale_retried[t]) continue;
    c.stale_retried[t] = 1;
    std::shared_ptr<Peer> p = peer_of(c, static_cast<uint16_t>(t));
    p->in_flight--;
    if (!refused_lane) p->drop_idle();
    if (e->lane()) e->downgrade();
    if (start_on(*p, *e)) live.push_back(e);
  }
  if (!live.empty()) run_exchanges(live, c.deadline);
  for (size_t t = 0; t < r.ex.size(); t++)
    if (r.ex[t]) book(c, r, static_cast<uint16_t>(t));
}

void PoolClient::book(Call& c, Round& r, uint16_t t) {
  Exchange& e = *r.ex[t];
  std::shared_ptr<Peer> p = peer_of(c, t);
  p->in_flight--;
  p->count(e);
  ctr_.bytes_sent += e.payload_sent();
  ctr_.bytes_received += e.payload_received();
  if (e.ok()) {
    p->mark_up(notes_);
    note_epoch(c, e.epoch());
    return;
  }
  r.failed[t] = 1;
  ctr_.request_failures++;
  p->mark_down(e.error(), e.message(), cooldown_end(), notes_);
}

void PoolClient::give_back_links(Call& c, Round& r) {
  for (size_t t = 0; t < r.ex.size(); t++)
    if (r.ex[t] && r.ex[t]->ok()) peer_of(c, static_cast<uint16_t>(t))->give_back(r.ex[t]->take_link());
}

// ---- members, figures ----------------------------------------------------------------------

std::vector<MemberProbe> PoolClient::probe(int timeout_ms, bool include_local) {
  std::shared_ptr<const ClusterView> v = snapshot(true);
  std::shared_ptr<NodeClient> node = local();
  const std::vector<MemberInfo>& members = v->info().members;
  std::vector<MemberProbe> out(members.size());
  std::vector<std::unique_ptr<Exchange>> ex(members.size());
  std::vector<std::shared_ptr<Peer>> peers(members.size());
  std::vector<Exchange*> live;
  Clock::time_point t0 = Clock::now();
  for (size_t m = 0; m < members.size(); m++) {
    out[m].id = members[m].id;
    peers[m] = peers_.get(members[m]);
    out[m].address = peers[m]->address();
    out[m].local = members[m].id == v->self_id();
    if (out[m].local) continue;  // over the Unix socket below (or by the caller, without one)
    ex[m] = std::make_unique<Exchange>();
    ex[m]->build_empty(kStats);
    if (start_on(*peers[m], *ex[m]))
      live.push_back(ex[m].get());
    else
      out[m].error = peers[m]->report(Clock::now()).last_error;
  }
  kick_exchanges(live);
  for (size_t m = 0; m < members.size(); m++) {
    if (!out[m].local || !include_local || !node) continue;
    out[m].ok = node->stats_json(&out[m].stats_json);
    out[m].error = out[m].ok ? "" : node->last_error();
    out[m].rtt_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  }
  run_exchanges(live, t0 + std::chrono::milliseconds(timeout_ms));
  for (size_t m = 0; m < members.size(); m++) {
    Exchange* e = ex[m].get();
    if (!e || e->phase() == Exchange::Phase::kIdle) continue;
    peers[m]->in_flight--;
    peers[m]->count(*e);
    out[m].rtt_ms = std::chrono::duration<double, std::milli>(e->done_at() - t0).count();
    if (e->ok()) {
      Reader r = e->reply();
      std::string_view js = r.str();
      out[m].ok = r.done();
      out[m].stats_json.assign(js.data(), js.size());
      peers[m]->mark_up(notes_);
      peers[m]->give_back(e->take_link());
    } else {
      out[m].error = e->message();
      peers[m]->mark_down(e->error(), e->message(), cooldown_end(), notes_);
    }
  }
  return out;
}

PoolStats PoolClient::stats() const {
  PoolStats s;
  s.take(ctr_);
  std::shared_ptr<const ClusterView> v;
  {
    std::lock_guard<std::mutex> lk(view_mu_);
    v = view_;
  }
  Clock::time_point now = Clock::now();
  s.epoch = v->epoch();
  s.self_id = v->self_id();
  s.members = v->info().members.size();
  for (const MemberInfo& m : v->info().members) s.live_members += m.healthy && m.weight > 0;
  s.in_grace = v->in_grace(now);
  s.replicas = opt_.replicas, s.write_quorum = opt_.write_quorum, s.spill_depth = opt_.spill_depth;
  for (const auto& p : peers_.all()) s.peers.push_back(p->report(now));
  if (rdma_) s.rdma = rdma_->stats();
  std::sort(s.peers.begin(), s.peers.end(), [](const PeerReport& a, const PeerReport& b) { return a.id < b.id; });
  return s;
}

std::vector<Note> PoolClient::take_notes() {
  std::vector<Note> out = notes_.take();
  if (rdma_) {
    std::vector<Note> more = rdma_->take_notes();
    out.insert(out.end(), more.begin(), more.end());
  }
  return out;
}

}  // namespace mch::cluster
