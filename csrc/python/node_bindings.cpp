// Python bindings of the node layer: _native.NodeServer (serves a TieredStore on a Unix socket)
// and _native.NodeClient (same batch methods as _native.TieredStore / NvmeEngine, through the
// node). Lists are converted with the GIL held; the GIL is released around every call that may
// block (socket I/O, memcpy of a batch, joining threads).
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/checksum.h"

#include "node/node_client.h"
#include "node/node_server.h"
#include "node/peer_server.h"
#include "node/protocol.h"
#include "python/binding_utils.h"
#include "python/view_convert.h"
#include "transport/uds.h"
#include "tiering/tiered_store.h"

namespace py = pybind11;
using namespace mch;
using namespace mch::binding;

namespace {

// A call that returns a JSON string, run without the GIL, as a dict.
template <class T, class F>
py::object json_call(T& target, F fn) {
  std::string s;
  {
    py::gil_scoped_release nogil;
    s = (target.*fn)();
  }
  return json_dict(s);
}

std::string client_stats_json(NodeClient& c) {
  std::string s;
  bool ok;
  {
    py::gil_scoped_release nogil;
    ok = c.stats_json(&s);
  }
  if (!ok) throw EngineError(EngineError::kIo, c.last_error());
  return s;
}

py::dict node_info(NodeClient& c) {
  NodeInfo i = c.info();
  py::dict d;
  d["protocol_version"] = i.version;
  d["pid"] = i.node_pid;
  d["instance"] = i.instance;
  d["arena_size"] = i.arena_size;
  d["info"] = i.info;
  return d;
}

std::shared_ptr<NodeClient> make_client(const std::string& socket_path, int timeout_ms, uint16_t protocol_version,
                                        std::vector<uint32_t> allowed_uids, std::string settings) {
  NodeClientOptions o;
  o.timeout_ms = timeout_ms;
  o.protocol_version = protocol_version;
  o.allowed_uids = std::move(allowed_uids);
  o.settings = std::move(settings);
  py::gil_scoped_release nogil;
  return std::make_shared<NodeClient>(std::make_unique<UnixEndpoint>(socket_path), std::move(o));
}

// Bench helper behind bench/dram_checksum_bench.py: mean ns to copy `pages` pages of `page`
// bytes from src to dst as a client copies into or out of the arena, optionally computing the
// XXH3-64 of each page over the destination while copying (64 KiB at a time, so the hash reads
// what the copy just wrote while it is in cache): what a per-page DRAM checksum would add.
double copy_pages_ns(uintptr_t dst, uintptr_t src, size_t page, size_t pages, bool checksum, int iterations) {
  if (iterations < 1 || page == 0) throw py::value_error("iterations and page must be positive");
  constexpr size_t kChunk = 64 * 1024;
  py::gil_scoped_release nogil;
  auto* d = reinterpret_cast<uint8_t*>(dst);
  auto* s = reinterpret_cast<const uint8_t*>(src);
  volatile uint64_t sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int it = 0; it < iterations; it++) {
    for (size_t p = 0; p < pages; p++) {
      uint8_t* to = d + p * page;
      const uint8_t* from = s + p * page;
      if (!checksum) {
        memcpy(to, from, page);
        continue;
      }
      StreamChecksum h;
      for (size_t off = 0; off < page; off += kChunk) {
        size_t n = std::min(kChunk, page - off);
        memcpy(to + off, from + off, n);
        h.update(to + off, n);
      }
      sink = sink + h.digest();
    }
  }
  std::chrono::duration<double, std::nano> dt = std::chrono::steady_clock::now() - t0;
  return dt.count() / iterations;
}

std::unique_ptr<NodeServer> make_server(TieredStore& store, const std::string& socket_path, int timeout_ms,
                                        uint32_t max_connections, int hello_timeout_ms, uint32_t socket_mode,
                                        std::vector<uint32_t> allowed_uids, std::string settings) {
  NodeServerOptions o;
  o.limits.timeout_ms = timeout_ms;
  o.limits.max_connections = max_connections;
  o.limits.hello_timeout_ms = hello_timeout_ms;
  o.socket_mode = socket_mode;
  o.allowed_uids = std::move(allowed_uids);
  o.settings = std::move(settings);
  return std::make_unique<NodeServer>(store, socket_path, std::move(o));
}

std::unique_ptr<PeerServer> make_peer_server(NodeServer& node, const std::string& node_id, const py::bytes& secret,
                                             const std::string& host, uint16_t port, int handshake_timeout_ms,
                                             int request_timeout_ms, int idle_timeout_ms, unsigned workers,
                                             unsigned max_connections, unsigned max_handshakes, bool rdma,
                                             const std::vector<std::string>& rdma_devices, int gid_index) {
  PeerServerOptions o;
  o.rdma = rdma;
  o.rdma_options.devices = rdma_devices;
  o.rdma_options.gid_index = gid_index;
  o.node_id = node_id;
  o.secret = secret;
  o.host = host;
  o.port = port;
  o.handshake_timeout_ms = handshake_timeout_ms;
  o.request_timeout_ms = request_timeout_ms;
  o.idle_timeout_ms = idle_timeout_ms;
  o.workers = workers;
  o.max_connections = max_connections;
  o.max_handshakes = max_handshakes;
  return std::make_unique<PeerServer>(node, std::move(o));
}

}  // namespace

void bind_node_server(py::module_& m) {
  m.attr("PROTOCOL_VERSION") = proto::kVersion;
  m.attr("PROTOCOL_MIN_VERSION") = proto::kMinVersion;
  m.attr("PROTOCOL_MAGIC") = proto::kMagic;
  py::class_<NodeServer>(m, "NodeServer",
                         "Serves a TieredStore to other processes on a Unix socket (shared-memory arena).")
      .def(py::init(&make_server), py::arg("store"), py::arg("socket_path"), py::arg("timeout_ms") = 5000,
           py::kw_only(), py::arg("max_connections") = NodeServer::kMaxConnections,
           py::arg("hello_timeout_ms") = 0, py::arg("socket_mode") = 0600,
           py::arg("allowed_uids") = std::vector<uint32_t>{}, py::arg("settings") = std::string(),
           py::keep_alive<1, 2>(),  // the store lives at least as long as the server
           "Limits and who may connect: docs/architecture.md, 'Trust and limits'. hello_timeout_ms 0 means "
           "timeout_ms; allowed_uids: client uids served besides the node's own; settings: this node's "
           "settings fingerprint (Config.node_settings()), checked against each client's.")
      .def("start", &NodeServer::start, release_gil(),
           "Bind and listen. Raises EngineError ('in_use' when a live node already serves the path).")
      .def("stop", &NodeServer::stop, release_gil(),
           "Close the listener and all connections (their pins and reservations are released).")
      .def("stats", [](NodeServer& s) { return json_call(s, &NodeServer::stats_json); },
           "The node section of the figures (connections, requests by op, tokens held, ...).")
      .def("stats_json", &NodeServer::full_stats_json, release_gil(),
           "Everything a STATS request returns: the store's sections plus 'node', as a JSON string.")
      .def_property_readonly("running", &NodeServer::running)
      .def_readonly_static("MAX_CONNECTIONS", &NodeServer::kMaxConnections)
      .def_property_readonly("socket_path", &NodeServer::socket_path)
      .def_property_readonly("instance", &NodeServer::instance)
      .def("set_view", [](NodeServer& s, const py::dict& v) { s.views().set(view_from(v)); }, py::arg("view"),
           "The membership view this node serves (VIEW): {epoch, self_id, grace_ms, members: [{id, host, port, "
           "weight, healthy}], previous_epoch, previous_members}.")
      .def("view", [](NodeServer& s) { return view_to(s.views().get()); });
  m.def("_copy_pages_ns", &copy_pages_ns, py::arg("dst"), py::arg("src"), py::arg("page"), py::arg("pages"),
        py::arg("checksum"), py::arg("iterations"),
        "Bench helper: mean ns to copy pages between two addresses, with or without a per-page XXH3-64 "
        "computed while copying (bench/dram_checksum_bench.py).");
}

void bind_peer_server(py::module_& m) {
  py::class_<PeerServer> cls(m, "PeerServer",
                             "A cluster member's TCP side: serves the node's store to the ranks and nodes of other "
                             "hosts (authenticated with the cluster secret; see docs/protocol.md).");
  def_take_notes(cls);
  cls.def(py::init(&make_peer_server), py::arg("node"), py::arg("node_id"), py::arg("secret"),
           py::arg("host") = "127.0.0.1", py::arg("port") = 0, py::arg("handshake_timeout_ms") = 1000,
           py::arg("request_timeout_ms") = 5000, py::arg("idle_timeout_ms") = 600000, py::arg("workers") = 8,
           py::arg("max_connections") = 4096, py::arg("max_handshakes") = 256, py::arg("rdma") = false,
           py::arg("rdma_devices") = std::vector<std::string>{}, py::arg("gid_index") = -1,
           py::keep_alive<1, 2>(),  // the node server lives at least as long as the peer server
           "rdma: also serve the RDMA data path (cluster.transport rdma; start() registers the arena on "
           "rdma_devices, default every device with an active port, and raises EngineError 'invalid' naming "
           "the devices there are when one cannot be used).")
      .def("start", &PeerServer::start, release_gil(),
           "Bind host:port and serve. Raises EngineError ('in_use' for a taken port, 'invalid' for an address that "
           "is not this machine's).")
      .def("stop", &PeerServer::stop, release_gil())
      .def("stats", [](PeerServer& s) { return json_dict(to_json(s.stats())); })
      .def_property_readonly("port", &PeerServer::port)
      .def_property_readonly("running", &PeerServer::running);
  m.attr("PEER_MAX_KEYS") = proto::kPeerMaxKeys;
  m.attr("PEER_MAX_CONNECTIONS") = PeerServerOptions{}.max_connections;
}

void bind_node_client(py::module_& m) {
  py::class_<NodeClient, std::shared_ptr<NodeClient>> cls(m, "NodeClient",
                             "A process's handle on the host's node: batch calls over a Unix socket, bytes through "
                             "the shared arena. Never raises for node failures: reads miss, writes return "
                             "NODE_UNAVAILABLE.");
  cls.def(py::init(&make_client), py::arg("socket_path"), py::arg("timeout_ms") = 5000,
          py::arg("protocol_version") = proto::kVersion, py::kw_only(),
          py::arg("allowed_uids") = std::vector<uint32_t>{}, py::arg("settings") = std::string(),
          "allowed_uids: node uids trusted besides this process's own; settings: this client's settings "
          "fingerprint (Config.node_settings()), refused by a node started with others.");
  def_batch_api<NodeClient, WithDepths>(cls, "all_ptrs", "all_sizes");
  def_take_notes(cls);
  cls.def("prefetch", &NodeClient::prefetch, release_gil(), py::arg("keys"), py::arg("step") = 0)
      .def("remove", &NodeClient::remove, release_gil())
      .def("remove_all", &NodeClient::remove_all, release_gil())
      .def("remove_prefix", &NodeClient::remove_prefix, release_gil())
      .def("stats_json", &client_stats_json,
           "The node's figures as a JSON string; raises EngineError('io', ...) when the node is unavailable.")
      .def("get_bytes", &get_value_bytes<NodeClient>,
           "The value as bytes, or a negative error code (NOT_FOUND for a miss or an unavailable node).")
      .def("value_size", &NodeClient::value_size, release_gil())
      .def("ping", &NodeClient::ping, release_gil())
      .def("_locate_and_hold", &NodeClient::locate_and_hold, release_gil(),
           "Test hook: locate one key on the node's NVMe and keep its region pinned until this client goes away.")
      .def("_locations", &NodeClient::locations, release_gil(), py::arg("keys"),
           "Bench hook: [(length or error code, file offset)] of each key's value in the node's NVMe data file; "
           "nothing stays pinned.")
      .def("close", &NodeClient::close, release_gil())
      .def_property_readonly("healthy", &NodeClient::healthy, "Whether the last call reached the node.")
      .def_property_readonly("last_error", &NodeClient::last_error)
      .def_property_readonly("last_error_code", &NodeClient::last_error_code,
                             "errno value of the last failure to reach the node (0 when healthy): ETIMEDOUT "
                             "for a node that does not answer, ECONNREFUSED/ENOENT when none runs.")
      .def_property_readonly("socket_path", &NodeClient::socket_path)
      .def_property_readonly("timeout_ms", &NodeClient::timeout_ms)
      .def_property_readonly("node_info", &node_info);
}
