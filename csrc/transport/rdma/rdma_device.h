// RdmaDevice: one opened RDMA device (HCA) and what every queue pair on it shares: the port and
// GID in use, a protection domain, the memory registered on it (MemoryMap), one completion queue
// with its completion channel, and (when the device posts work: a node) one completion thread.
//
// The completion thread polls the CQ while completions come, spins briefly when it runs dry,
// then arms the CQ and sleeps on the completion channel (no core burnt while nothing moves). It
// hands each completion to the QueuePair it belongs to (found by QP number under dispatch_mu_,
// which QueuePair's destructor also takes, so a completion never reaches a destroyed QP).
//
// Also: describe_devices() lists the devices a provider sees with their ports (for the
// `auto` transport choice, config checks and stats).
//
// Threading: construction and destruction from one thread; everything else from any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/rdma/memory_map.h"
#include "transport/rdma/verbs_api.h"

namespace mch::rdma {

class QueuePair;

struct PortSummary {
  uint8_t port = 0;
  PortState state = PortState::kDown;
  LinkLayer link_layer = LinkLayer::kUnknown;
  uint32_t mtu = 0;  // bytes
  uint16_t lid = 0;
  std::vector<std::string> gids;  // non-zero GIDs, "fe80:0000:..." form, by index ("" for zero)
};
struct DeviceSummary {
  std::string name;
  uint64_t max_mr_size = 0;
  std::vector<PortSummary> ports;
  std::string error;  // could not be opened or queried
  bool usable() const;  // has an active port
};
// The devices `api` sees. false with *err when the device list cannot be had (no RDMA core).
bool describe_devices(const VerbsApi& api, std::vector<DeviceSummary>* out, std::string* err);
std::string gid_text(const Gid& g);
const char* link_layer_name(LinkLayer l);
const char* port_state_name(PortState s);

struct DeviceOptions {
  std::string name;
  int gid_index = -1;        // -1: the first non-zero GID (RoCE), or none (InfiniBand)
  bool completion_thread = true;
  int cq_size = 65536;
};

class RdmaDevice {
 public:
  RdmaDevice(const VerbsApi& api, const DeviceOptions& opt);  // throws EngineError naming the device
  ~RdmaDevice();
  RdmaDevice(const RdmaDevice&) = delete;
  RdmaDevice& operator=(const RdmaDevice&) = delete;

  const VerbsApi& api() const { return api_; }
  const std::string& name() const { return name_; }
  uint8_t port() const { return port_; }
  int gid_index() const { return gid_index_; }
  const Gid& gid() const { return gid_; }
  uint16_t lid() const { return port_attr_.lid; }
  uint8_t mtu() const { return port_attr_.active_mtu; }
  LinkLayer link_layer() const { return port_attr_.link_layer; }
  const DeviceAttr& attr() const { return attr_; }
  ProtectionDomain* pd() const { return pd_; }
  CompletionQueue* cq() const { return cq_; }
  MemoryMap& memory() { return *memory_; }

  // QueuePairs register themselves to receive their completions.
  void attach(uint32_t qpn, QueuePair* qp);
  void detach(uint32_t qpn);
  uint64_t completions() const { return completions_.load(); }
  uint64_t sleeps() const { return sleeps_.load(); }

 private:
  void open_port(const DeviceOptions& opt);
  void poll_loop();
  int drain();
  void sleep_on_channel();
  void close_all();

  const VerbsApi& api_;
  std::string name_;
  Context* ctx_ = nullptr;
  DeviceAttr attr_;
  PortAttr port_attr_;
  uint8_t port_ = 1;
  int gid_index_ = 0;
  Gid gid_;
  ProtectionDomain* pd_ = nullptr;
  CompletionChannel* channel_ = nullptr;
  CompletionQueue* cq_ = nullptr;
  std::unique_ptr<MemoryMap> memory_;
  std::thread poller_;
  std::atomic<bool> stop_{false};
  int wake_fd_ = -1;
  std::mutex dispatch_mu_;  // guards qps_; held while a completion is handed to its QP
  std::unordered_map<uint32_t, QueuePair*> qps_;
  std::atomic<uint64_t> completions_{0}, sleeps_{0};
};

}  // namespace mch::rdma
