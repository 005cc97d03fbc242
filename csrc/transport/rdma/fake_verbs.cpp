// The fake verbs provider (fake_verbs.h): what it keeps and checks is described there.
#include "transport/rdma/fake_verbs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace mch::rdma {
namespace {

using fake::FaultKind;

constexpr uint64_t kDefaultMaxMr = 64ull << 20;
constexpr int kDevices = 2;
constexpr int kGids = 4;
constexpr uint32_t kMaxMrs = 8192;
constexpr uint32_t kMaxQps = 2048;
constexpr uint64_t kMagic = 0x5342524556454b46ull;  // "FKEVERBS"

// ---- the registry a process publishes in /dev/shm (read by its peers) -----------------------

struct RegMr {
  std::atomic<uint32_t> rkey;  // 0: free
  uint32_t access;
  uint64_t addr, len;
};
struct RegQp {
  std::atomic<uint32_t> qpn;  // 0: free
  std::atomic<uint32_t> state;
  std::atomic<uint32_t> remote_qpn, remote_pid;
};
struct RegFile {
  uint64_t magic;
  uint32_t pid, pad;
  std::atomic<uint32_t> mr_high, qp_high;  // slots in use are below these
  RegMr mrs[kMaxMrs];
  RegQp qps[kMaxQps];
};
static_assert(std::atomic<uint32_t>::is_always_lock_free, "registry atomics must work across processes");

std::string registry_file(pid_t pid) { return "/dev/shm/mch-fake-verbs-" + std::to_string(pid); }

RegFile* map_registry(pid_t pid, bool create) {
  std::string path = registry_file(pid);
  int fd = create ? ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)
                  : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  if (create && ftruncate(fd, sizeof(RegFile)) != 0) {
    ::close(fd);
    return nullptr;
  }
  void* p = mmap(nullptr, sizeof(RegFile), create ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return nullptr;
  auto* r = static_cast<RegFile*>(p);
  if (create) {
    r->pid = static_cast<uint32_t>(pid);
    r->magic = kMagic;
  } else if (r->magic != kMagic || r->pid != static_cast<uint32_t>(pid)) {
    munmap(p, sizeof(RegFile));
    return nullptr;
  }
  return r;
}

// Files of processes that died without removing theirs.
void remove_stale_registries() {
  DIR* d = opendir("/dev/shm");
  if (!d) return;
  const std::string prefix = "mch-fake-verbs-";
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.compare(0, prefix.size(), prefix) != 0) continue;
    pid_t pid = static_cast<pid_t>(atol(n.c_str() + prefix.size()));
    if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) unlink(("/dev/shm/" + n).c_str());
  }
  closedir(d);
}

// ---- objects ----------------------------------------------------------------------------------

struct FakeCtx;
struct FakeChannel {
  int efd = -1;
  std::deque<struct FakeCq*> events;
};
struct FakeCq {
  FakeCtx* ctx = nullptr;
  FakeChannel* ch = nullptr;
  int cap = 0;
  bool armed = false;
  struct Entry {
    WorkCompletion wc;
    uint64_t seq;  // frees the QP's send-queue slots up to this WR when polled
  };
  std::deque<Entry> q;
};
struct FakePd {
  FakeCtx* ctx = nullptr;
};
struct FakeMr {
  FakePd* pd = nullptr;
  uint32_t slot = 0, key = 0;
  uint64_t addr = 0, len = 0;
  int access = 0;
};
struct PendingWr {
  SendWr wr;
  std::vector<Sge> sg;
  uint64_t seq = 0;
};
struct FakeQp {
  FakeCtx* ctx = nullptr;
  FakePd* pd = nullptr;
  FakeCq* cq = nullptr;
  QpCaps caps;
  uint32_t qpn = 0, slot = 0;
  QpState state = QpState::kReset;
  int access = 0;
  uint32_t remote_qpn = 0;
  pid_t remote_pid = 0;
  std::deque<PendingWr> sq;      // posted, not executed
  uint64_t posted = 0, freed = 0;  // send-queue slots in use: posted - freed
  bool stalled = false;            // a WR hangs at the head (FaultKind::kStall)
};
struct FakeCtx {
  int index = 0;
  uint64_t max_mr = kDefaultMaxMr;
};

struct Fault {
  FaultKind kind;
  uint64_t at;  // the WR number (executed count) it hits
  uint32_t qpn;
};

// ---- the world: all fake state of this process ----------------------------------------------

class World {
 public:
  static World& get() {
    static World* w = new World();  // never destroyed: the HCA thread may run until exit
    return *w;
  }

  std::mutex mu;  // guards everything below and the objects
  std::condition_variable work_cv;
  std::unordered_map<uint32_t, FakeQp*> qps;
  std::unordered_map<uint32_t, FakeMr*> mrs;  // by key
  std::vector<FakeMr*> mr_slots = std::vector<FakeMr*>(kMaxMrs, nullptr);
  std::vector<FakeQp*> qp_slots = std::vector<FakeQp*>(kMaxQps, nullptr);
  std::map<pid_t, RegFile*> peers;  // registries of other processes, mapped read-only
  std::vector<Fault> faults;
  fake::Counters ctr;
  uint64_t max_mr_override = 0;
  uint32_t wr_delay_us = 0;
  uint32_t next_qpn = 0x100, next_key = 0;
  RegFile* reg = nullptr;
  pid_t pid = 0;

  void start_locked();
  RegFile* peer_registry(pid_t pid);

 private:
  World() = default;
  void hca_loop();
  std::thread hca_;
  bool started_ = false;
};

void parse_env_faults(World& w);

void unlink_own_registry() { unlink(registry_file(getpid()).c_str()); }

void World::start_locked() {
  if (started_ && pid == getpid()) return;
  pid = getpid();  // a forked child publishes its own registry
  remove_stale_registries();
  reg = map_registry(pid, true);
  if (!started_) atexit(unlink_own_registry);
  started_ = true;
  uint32_t seed = static_cast<uint32_t>(pid) * 2654435761u ^ static_cast<uint32_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  next_key = seed | 1;
  parse_env_faults(*this);
  if (const char* m = getenv("MOONCAKE_HICACHE_FAKE_VERBS_MAX_MR")) max_mr_override = strtoull(m, nullptr, 0);
  hca_ = std::thread([this] { hca_loop(); });
  hca_.detach();
}

RegFile* World::peer_registry(pid_t p) {
  if (p == pid) return reg;
  auto it = peers.find(p);
  if (it != peers.end()) {
    if (kill(p, 0) == 0 || errno != ESRCH) return it->second;
    munmap(it->second, sizeof(RegFile));  // the peer died: forget its registry
    peers.erase(it);
    return nullptr;
  }
  RegFile* r = map_registry(p, false);
  if (r) peers[p] = r;
  return r;
}

void parse_env_faults(World& w) {
  const char* v = getenv("MOONCAKE_HICACHE_FAKE_VERBS_FAIL");
  if (!v) return;
  std::string s = v;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    std::string item = s.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? s.size() : end + 1;
    size_t at = item.find('@');
    if (at == std::string::npos) continue;
    std::string kind = item.substr(0, at);
    uint64_t n = strtoull(item.c_str() + at + 1, nullptr, 10);
    FaultKind k = kind == "retry" ? FaultKind::kRetryExceeded
                  : kind == "local_protection" ? FaultKind::kLocalProtection
                  : kind == "remote_op" ? FaultKind::kRemoteOperation
                  : kind == "stall" ? FaultKind::kStall
                                    : FaultKind::kRemoteAccess;
    if (n) w.faults.push_back(Fault{k, n, 0});
  }
}

// ---- registry updates (World::mu held) ---------------------------------------------------------

void publish_qp(World& w, const FakeQp& q) {
  if (!w.reg) return;
  if (q.slot + 1 > w.reg->qp_high.load()) w.reg->qp_high.store(q.slot + 1);
  RegQp& r = w.reg->qps[q.slot];
  r.state.store(static_cast<uint32_t>(q.state), std::memory_order_relaxed);
  r.remote_qpn.store(q.remote_qpn, std::memory_order_relaxed);
  r.remote_pid.store(static_cast<uint32_t>(q.remote_pid), std::memory_order_relaxed);
  r.qpn.store(q.qpn, std::memory_order_release);
}

void unpublish_qp(World& w, const FakeQp& q) {
  if (w.reg) w.reg->qps[q.slot].qpn.store(0, std::memory_order_release);
}

// A remote QP's published state: true when it exists, is RTR/RTS and is connected to (me, my_qpn).
bool remote_qp_ready(const RegFile* r, uint32_t qpn, pid_t me, uint32_t my_qpn) {
  uint32_t high = std::min(r->qp_high.load(), kMaxQps);
  for (uint32_t i = 0; i < high; i++) {
    const RegQp& q = r->qps[i];
    if (q.qpn.load(std::memory_order_acquire) != qpn) continue;
    auto st = static_cast<QpState>(q.state.load(std::memory_order_relaxed));
    return (st == QpState::kRtr || st == QpState::kRts) && q.remote_qpn.load() == my_qpn &&
           q.remote_pid.load() == static_cast<uint32_t>(me);
  }
  return false;
}

// A remote MR covering [addr, addr+len) with `need` access under `rkey`.
bool remote_mr_allows(const RegFile* r, uint32_t rkey, uint64_t addr, uint64_t len, int need) {
  if (rkey == 0) return false;
  uint32_t high = std::min(r->mr_high.load(), kMaxMrs);
  for (uint32_t i = 0; i < high; i++) {
    const RegMr& m = r->mrs[i];
    if (m.rkey.load(std::memory_order_acquire) != rkey) continue;
    bool ok = (static_cast<int>(m.access) & need) == need && addr >= m.addr && addr + len <= m.addr + m.len &&
              addr + len >= addr;
    return ok && m.rkey.load(std::memory_order_acquire) == rkey;
  }
  return false;
}

// ---- the HCA: executes WRs ----------------------------------------------------------------------

void push_cqe(World& w, FakeQp& q, uint64_t wr_id, WcStatus st, uint64_t seq) {
  FakeCq& cq = *q.cq;
  w.ctr.cqes++;
  if (st == WcStatus::kFlush) w.ctr.flushed++;
  if (static_cast<int>(cq.q.size()) >= cq.cap) {
    w.ctr.cq_overflows++;
    return;
  }
  WorkCompletion wc;
  wc.wr_id = wr_id;
  wc.status = st;
  wc.qp_num = q.qpn;
  cq.q.push_back(FakeCq::Entry{wc, seq});
  if (cq.armed && cq.ch) {
    cq.armed = false;
    cq.ch->events.push_back(&cq);
    uint64_t one = 1;
    ssize_t r = write(cq.ch->efd, &one, sizeof one);
    (void)r;
  }
}

// Every WR still queued on q completes as flushed (not behind a stalled WR: a hung NIC answers
// nothing until its QP is reset or destroyed).
void flush_queue(World& w, FakeQp& q) {
  while (!q.sq.empty() && !q.stalled) {
    PendingWr p = std::move(q.sq.front());
    q.sq.pop_front();
    push_cqe(w, q, p.wr.wr_id, WcStatus::kFlush, p.seq);
  }
}

void set_state(World& w, FakeQp& q, QpState s) {
  q.state = s;
  publish_qp(w, q);
}

WcStatus check_local(World& w, const FakeQp& q, const PendingWr& p) {
  for (const Sge& s : p.sg) {
    auto it = w.mrs.find(s.lkey);
    FakeMr* mr = it == w.mrs.end() ? nullptr : it->second;
    if (!mr || mr->pd != q.pd || s.addr < mr->addr || s.addr + s.length > mr->addr + mr->len)
      return WcStatus::kLocalProtection;
    if (p.wr.opcode == WrOpcode::kRdmaRead && !(mr->access & kLocalWrite)) return WcStatus::kLocalProtection;
  }
  return WcStatus::kSuccess;
}

uint64_t wr_bytes(const PendingWr& p) {
  uint64_t n = 0;
  for (const Sge& s : p.sg) n += s.length;
  return n;
}

WcStatus check_remote(World& w, const FakeQp& q, const PendingWr& p) {
  RegFile* r = w.peer_registry(q.remote_pid);
  if (!r || !remote_qp_ready(r, q.remote_qpn, w.pid, q.qpn)) return WcStatus::kRetryExceeded;
  int need = p.wr.opcode == WrOpcode::kRdmaRead ? kRemoteRead : kRemoteWrite;
  if (!remote_mr_allows(r, p.wr.rkey, p.wr.remote_addr, wr_bytes(p), need)) return WcStatus::kRemoteAccess;
  return WcStatus::kSuccess;
}

WcStatus move_bytes(World& w, const FakeQp& q, const PendingWr& p) {
  uint64_t len = wr_bytes(p);
  bool read = p.wr.opcode == WrOpcode::kRdmaRead;
  if (q.remote_pid == w.pid) {
    auto* remote = reinterpret_cast<uint8_t*>(p.wr.remote_addr);
    for (const Sge& s : p.sg) {
      auto* local = reinterpret_cast<uint8_t*>(s.addr);
      if (read)
        memmove(local, remote, s.length);
      else
        memmove(remote, local, s.length);
      remote += s.length;
    }
    return WcStatus::kSuccess;
  }
  std::vector<iovec> local;
  for (const Sge& s : p.sg) local.push_back(iovec{reinterpret_cast<void*>(s.addr), s.length});
  iovec remote{reinterpret_cast<void*>(p.wr.remote_addr), static_cast<size_t>(len)};
  ssize_t r = read ? process_vm_readv(q.remote_pid, local.data(), local.size(), &remote, 1, 0)
                   : process_vm_writev(q.remote_pid, local.data(), local.size(), &remote, 1, 0);
  if (r == static_cast<ssize_t>(len)) return WcStatus::kSuccess;
  if (r < 0 && errno == ESRCH) return WcStatus::kRetryExceeded;
  return r < 0 && errno == EPERM ? WcStatus::kOther : WcStatus::kRemoteAccess;
}

WcStatus fault_status(FaultKind k) {
  switch (k) {
    case FaultKind::kRetryExceeded: return WcStatus::kRetryExceeded;
    case FaultKind::kLocalProtection: return WcStatus::kLocalProtection;
    case FaultKind::kRemoteOperation: return WcStatus::kRemoteOperation;
    default: return WcStatus::kRemoteAccess;
  }
}

// The injected fault for the WR about to execute on q, if any (consumed).
bool take_fault(World& w, const FakeQp& q, Fault* out) {
  uint64_t n = w.ctr.wrs_executed + 1;
  for (size_t i = 0; i < w.faults.size(); i++) {
    const Fault& f = w.faults[i];
    if (f.at > n || (f.qpn && f.qpn != q.qpn)) continue;
    *out = f;
    w.faults.erase(w.faults.begin() + static_cast<long>(i));
    return true;
  }
  return false;
}

WcStatus execute(World& w, FakeQp& q, const PendingWr& p, const Fault* f) {
  if (f) return fault_status(f->kind);
  WcStatus st = check_local(w, q, p);
  if (st == WcStatus::kSuccess) st = check_remote(w, q, p);
  if (st == WcStatus::kSuccess) st = move_bytes(w, q, p);
  if (st == WcStatus::kSuccess) w.ctr.bytes_moved += wr_bytes(p);
  return st;
}

FakeQp* next_ready_qp(World& w) {
  FakeQp* best = nullptr;
  for (auto& [n, q] : w.qps)
    if (!q->sq.empty() && !q->stalled && (!best || q->sq.front().seq < best->sq.front().seq)) best = q;
  return best;
}

void execute_one(World& w, std::unique_lock<std::mutex>& lk) {
  FakeQp* q = next_ready_qp(w);
  if (!q) return;
  if (q->state == QpState::kError) return flush_queue(w, *q);
  Fault f{};
  bool faulted = take_fault(w, *q, &f);
  if (faulted && f.kind == FaultKind::kStall) {
    q->stalled = true;  // stays at the head: nothing behind it moves either
    w.ctr.stalled++;
    return;
  }
  PendingWr p = std::move(q->sq.front());
  q->sq.pop_front();
  WcStatus st = execute(w, *q, p, faulted ? &f : nullptr);
  w.ctr.wrs_executed++;
  if (st != WcStatus::kSuccess) {
    w.ctr.errors++;
    push_cqe(w, *q, p.wr.wr_id, st, p.seq);
    set_state(w, *q, QpState::kError);
    flush_queue(w, *q);
  } else if (p.wr.signaled) {
    push_cqe(w, *q, p.wr.wr_id, st, p.seq);
  }
  if (w.wr_delay_us) {
    uint32_t us = w.wr_delay_us;
    lk.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(us));
    lk.lock();
  }
}

bool has_work(World& w) { return next_ready_qp(w) != nullptr; }

void World::hca_loop() {
  std::unique_lock<std::mutex> lk(mu);
  for (;;) {
    work_cv.wait(lk, [this] { return has_work(*this); });
    execute_one(*this, lk);
  }
}

// ---- the VerbsApi functions -------------------------------------------------------------------

template <class T, class H>
T* as(H* h) { return reinterpret_cast<T*>(h); }

const char* kNames[kDevices] = {"mch_fake0", "mch_fake1"};

bool list_devices(std::vector<std::string>* names, std::string*) {
  for (const char* n : kNames) names->push_back(n);
  return true;
}

Context* open_device(const std::string& name, std::string* err) {
  for (int i = 0; i < kDevices; i++) {
    if (name != kNames[i]) continue;
    World& w = World::get();
    std::lock_guard<std::mutex> lk(w.mu);
    w.start_locked();
    if (!w.reg) {
      *err = "the fake verbs provider cannot create " + registry_file(getpid()) + ": " + strerror(errno);
      return nullptr;
    }
    auto* c = new FakeCtx{i, w.max_mr_override ? w.max_mr_override : kDefaultMaxMr};
    w.ctr.open_contexts++;
    return as<Context>(c);
  }
  *err = "no RDMA device named " + name + " (the fake verbs provider has mch_fake0 and mch_fake1)";
  return nullptr;
}

void close_device(Context* c) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  w.ctr.open_contexts--;
  delete as<FakeCtx>(c);
}

int query_device(Context* c, DeviceAttr* out) {
  out->max_mr_size = as<FakeCtx>(c)->max_mr;
  out->max_qp_wr = 4096;
  out->max_sge = 8;
  out->max_cqe = 1 << 20;
  out->ports = 1;
  return 0;
}

int query_port(Context*, uint8_t port, PortAttr* out) {
  if (port != 1) return EINVAL;
  out->state = PortState::kActive;
  out->link_layer = LinkLayer::kEthernet;
  out->active_mtu = 5;
  out->lid = 0;
  out->gid_table_len = kGids;
  out->max_msg_size = 1u << 31;
  return 0;
}

// GID: "MCHF", pid, device index, GID index: the pid tells a peer whose memory a QP reaches.
int query_gid(Context* c, uint8_t port, int index, Gid* out) {
  if (port != 1 || index < 0 || index >= kGids) return EINVAL;
  uint32_t pid = static_cast<uint32_t>(getpid());
  uint32_t dev = static_cast<uint32_t>(as<FakeCtx>(c)->index);
  memset(out->raw, 0, 16);
  memcpy(out->raw, "MCHF", 4);
  memcpy(out->raw + 4, &pid, 4);
  memcpy(out->raw + 8, &dev, 4);
  out->raw[15] = static_cast<uint8_t>(index);
  return 0;
}

pid_t pid_of_gid(const Gid& g) {
  if (memcmp(g.raw, "MCHF", 4) != 0) return 0;
  uint32_t pid;
  memcpy(&pid, g.raw + 4, 4);
  return static_cast<pid_t>(pid);
}

ProtectionDomain* alloc_pd(Context* c) { return as<ProtectionDomain>(new FakePd{as<FakeCtx>(c)}); }
int dealloc_pd(ProtectionDomain* pd) {
  delete as<FakePd>(pd);
  return 0;
}

MemoryRegion* reg_mr(ProtectionDomain* pd, void* addr, size_t len, int access, uint32_t* lkey, uint32_t* rkey) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakePd* p = as<FakePd>(pd);
  if (len == 0 || len > p->ctx->max_mr) {
    errno = EINVAL;
    return nullptr;
  }
  auto it = std::find(w.mr_slots.begin(), w.mr_slots.end(), nullptr);
  if (it == w.mr_slots.end()) {
    errno = ENOMEM;
    return nullptr;
  }
  uint32_t key = w.next_key;
  w.next_key = w.next_key * 1664525u + 1013904223u;
  if (key == 0) key = 1;
  auto* mr = new FakeMr{p, static_cast<uint32_t>(it - w.mr_slots.begin()), key, reinterpret_cast<uint64_t>(addr),
                        len, access};
  *it = mr;
  w.mrs[key] = mr;
  if (mr->slot + 1 > w.reg->mr_high.load()) w.reg->mr_high.store(mr->slot + 1);
  RegMr& r = w.reg->mrs[mr->slot];
  r.access = static_cast<uint32_t>(access);
  r.addr = mr->addr;
  r.len = mr->len;
  r.rkey.store(key, std::memory_order_release);
  w.ctr.live_mrs++;
  *lkey = *rkey = key;
  return as<MemoryRegion>(mr);
}

int dereg_mr(MemoryRegion* m) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakeMr* mr = as<FakeMr>(m);
  w.reg->mrs[mr->slot].rkey.store(0, std::memory_order_release);
  w.mr_slots[mr->slot] = nullptr;
  w.mrs.erase(mr->key);
  w.ctr.live_mrs--;
  delete mr;
  return 0;
}

CompletionChannel* create_channel(Context*) {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
  if (fd < 0) return nullptr;
  return as<CompletionChannel>(new FakeChannel{fd, {}});
}
int destroy_channel(CompletionChannel* c) {
  FakeChannel* ch = as<FakeChannel>(c);
  ::close(ch->efd);
  delete ch;
  return 0;
}
int channel_fd(CompletionChannel* c) { return as<FakeChannel>(c)->efd; }

CompletionQueue* create_cq(Context* c, int cqe, CompletionChannel* ch) {
  auto* cq = new FakeCq;
  cq->ctx = as<FakeCtx>(c);
  cq->ch = as<FakeChannel>(ch);
  cq->cap = cqe;
  return as<CompletionQueue>(cq);
}
int destroy_cq(CompletionQueue* c) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  delete as<FakeCq>(c);
  return 0;
}

int req_notify_cq(CompletionQueue* c) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  as<FakeCq>(c)->armed = true;
  return 0;
}

int get_cq_event(CompletionChannel* c, CompletionQueue** out) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakeChannel* ch = as<FakeChannel>(c);
  uint64_t v = 0;
  if (read(ch->efd, &v, sizeof v) != sizeof v || ch->events.empty()) return -1;
  *out = as<CompletionQueue>(ch->events.front());
  ch->events.pop_front();
  return 0;
}
void ack_cq_events(CompletionQueue*, unsigned) {}

int poll_cq(CompletionQueue* c, int n, WorkCompletion* out) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakeCq* cq = as<FakeCq>(c);
  int k = 0;
  for (; k < n && !cq->q.empty(); k++) {
    FakeCq::Entry e = cq->q.front();
    cq->q.pop_front();
    out[k] = e.wc;
    auto it = w.qps.find(e.wc.qp_num);
    if (it != w.qps.end()) it->second->freed = std::max(it->second->freed, e.seq);  // frees its slots
  }
  return k;
}

QueuePairHandle* create_qp(ProtectionDomain* pd, CompletionQueue* cq, const QpCaps& caps, uint32_t* qpn) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  auto it = std::find(w.qp_slots.begin(), w.qp_slots.end(), nullptr);
  if (it == w.qp_slots.end() || caps.max_send_wr == 0 || caps.max_send_sge > 8) {
    errno = it == w.qp_slots.end() ? ENOMEM : EINVAL;
    return nullptr;
  }
  auto* q = new FakeQp;
  q->pd = as<FakePd>(pd);
  q->ctx = q->pd->ctx;
  q->cq = as<FakeCq>(cq);
  q->caps = caps;
  q->qpn = w.next_qpn++;
  q->slot = static_cast<uint32_t>(it - w.qp_slots.begin());
  *it = q;
  w.qps[q->qpn] = q;
  publish_qp(w, *q);
  w.ctr.live_qps++;
  *qpn = q->qpn;
  return as<QueuePairHandle>(q);
}

int destroy_qp(QueuePairHandle* h) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakeQp* q = as<FakeQp>(h);
  unpublish_qp(w, *q);
  auto& cq = q->cq->q;  // as mlx5 does, the CQ forgets the destroyed QP's completions
  cq.erase(std::remove_if(cq.begin(), cq.end(), [q](const FakeCq::Entry& e) { return e.wc.qp_num == q->qpn; }),
           cq.end());
  w.qps.erase(q->qpn);
  w.qp_slots[q->slot] = nullptr;
  w.ctr.live_qps--;
  delete q;  // its queued (and stalled) WRs go with it, without completions
  return 0;
}

bool legal(QpState from, QpState to) {
  switch (to) {
    case QpState::kReset: case QpState::kError: return true;
    case QpState::kInit: return from == QpState::kReset || from == QpState::kInit;
    case QpState::kRtr: return from == QpState::kInit;
    case QpState::kRts: return from == QpState::kRtr || from == QpState::kRts;
  }
  return false;
}

int modify_qp(QueuePairHandle* h, const QpTransition& t) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakeQp* q = as<FakeQp>(h);
  if (!legal(q->state, t.to)) return EINVAL;
  if (t.to == QpState::kInit && t.port != 1) return EINVAL;
  if (t.to == QpState::kRtr) {
    pid_t pid = pid_of_gid(t.remote_gid);
    if (!pid || t.gid_index < 0 || t.gid_index >= kGids || mtu_bytes(t.mtu) == 0) return EINVAL;
    q->remote_pid = pid;
    q->remote_qpn = t.remote_qpn;
  }
  if (t.to == QpState::kInit) q->access = t.access;
  if (t.to == QpState::kReset) {
    q->sq.clear();  // no completions for what was queued, as with a real reset
    q->stalled = false;
    q->posted = q->freed = 0;
    q->remote_qpn = 0;
    q->remote_pid = 0;
  }
  set_state(w, *q, t.to);
  if (t.to == QpState::kError) {
    flush_queue(w, *q);
    w.work_cv.notify_all();
  }
  return 0;
}

int post_send(QueuePairHandle* h, const SendWr* wrs, int n, int* bad) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  FakeQp* q = as<FakeQp>(h);
  if (q->state != QpState::kRts && q->state != QpState::kError) {
    *bad = 0;
    return EINVAL;
  }
  for (int i = 0; i < n; i++) {
    if (wrs[i].num_sge < 0 || static_cast<uint32_t>(wrs[i].num_sge) > q->caps.max_send_sge) {
      *bad = i;
      return EINVAL;
    }
    if (q->posted - q->freed >= q->caps.max_send_wr) {
      w.ctr.post_refused++;
      *bad = i;
      return ENOMEM;
    }
    PendingWr p;
    p.wr = wrs[i];
    p.sg.assign(wrs[i].sg, wrs[i].sg + wrs[i].num_sge);
    p.wr.sg = nullptr;
    p.seq = ++q->posted;
    q->sq.push_back(std::move(p));
    w.ctr.max_sq_occupancy = std::max<uint32_t>(w.ctr.max_sq_occupancy, static_cast<uint32_t>(q->posted - q->freed));
  }
  w.work_cv.notify_all();
  return 0;
}

const VerbsApi kFake = {
    "fake verbs provider (no RDMA NIC: tests only)", true, list_devices, open_device, close_device, query_device,
    query_port, query_gid, alloc_pd, dealloc_pd, reg_mr, dereg_mr, create_channel, destroy_channel, channel_fd,
    create_cq, destroy_cq, req_notify_cq, get_cq_event, ack_cq_events, poll_cq, create_qp, destroy_qp, modify_qp,
    post_send,
};

}  // namespace

const VerbsApi* fake_verbs_api() { return &kFake; }

// ---- test hooks ----------------------------------------------------------------------------------

namespace fake {

void inject(FaultKind kind, uint64_t nth, uint32_t qpn) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  w.faults.push_back(Fault{kind, w.ctr.wrs_executed + std::max<uint64_t>(nth, 1), qpn});
}

void clear_faults() {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  w.faults.clear();
}

void set_max_mr_size(uint64_t bytes) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  w.max_mr_override = bytes;
}

void set_wr_delay_us(uint32_t us) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  w.wr_delay_us = us;
}

Counters counters() {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  return w.ctr;
}

void reset_counters() {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  Counters fresh;
  fresh.open_contexts = w.ctr.open_contexts;
  fresh.live_qps = w.ctr.live_qps;
  fresh.live_mrs = w.ctr.live_mrs;
  w.ctr = fresh;
}

QpState qp_state(uint32_t qpn) {
  World& w = World::get();
  std::lock_guard<std::mutex> lk(w.mu);
  auto it = w.qps.find(qpn);
  return it == w.qps.end() ? QpState::kReset : it->second->state;
}

const char* registry_path() {
  static std::string p;
  p = registry_file(getpid());
  return p.c_str();
}

}  // namespace fake
}  // namespace mch::rdma
