// Python bindings of the node layer: _native.NodeServer (serves a TieredStore on a Unix socket)
// and _native.NodeClient (same batch methods as _native.TieredStore / NvmeEngine, through the
// node). Lists are converted with the GIL held; the GIL is released around every call that may
// block (socket I/O, memcpy of a batch, joining threads).
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "node/node_client.h"
#include "node/node_server.h"
#include "node/protocol.h"
#include "python/binding_utils.h"
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

// The value as bytes (allocated by Python while the copy runs without the GIL), or the code.
py::object client_get_bytes(NodeClient& c, const std::string& key) {
  py::object out;
  int64_t r;
  {
    py::gil_scoped_release nogil;
    r = c.get_value(key, [&out](size_t n) -> uint8_t* {
      py::gil_scoped_acquire gil;
      PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
      if (!b) {
        PyErr_Clear();
        return nullptr;
      }
      out = py::reinterpret_steal<py::object>(b);
      return reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(b));
    });
  }
  if (r >= 0) return out;
  return py::int_(r);
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

std::unique_ptr<NodeClient> make_client(const std::string& socket_path, int timeout_ms, uint16_t protocol_version) {
  py::gil_scoped_release nogil;
  return std::make_unique<NodeClient>(socket_path, timeout_ms, protocol_version);
}

}  // namespace

void bind_node_server(py::module_& m) {
  m.attr("PROTOCOL_VERSION") = proto::kVersion;
  m.attr("PROTOCOL_MIN_VERSION") = proto::kMinVersion;
  m.attr("PROTOCOL_MAGIC") = proto::kMagic;
  py::class_<NodeServer>(m, "NodeServer",
                         "Serves a TieredStore to other processes on a Unix socket (shared-memory arena).")
      .def(py::init([](TieredStore& store, const std::string& socket_path, int timeout_ms) {
             return std::make_unique<NodeServer>(store, socket_path, timeout_ms);
           }),
           py::arg("store"), py::arg("socket_path"), py::arg("timeout_ms") = 5000,
           py::keep_alive<1, 2>())  // the store lives at least as long as the server
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
      .def_property_readonly("instance", &NodeServer::instance);
}

void bind_node_client(py::module_& m) {
  py::class_<NodeClient> cls(m, "NodeClient",
                             "A process's handle on the host's node: batch calls over a Unix socket, bytes through "
                             "the shared arena. Never raises for node failures: reads miss, writes return "
                             "NODE_UNAVAILABLE.");
  cls.def(py::init(&make_client), py::arg("socket_path"), py::arg("timeout_ms") = 5000,
          py::arg("protocol_version") = proto::kVersion);
  def_batch_api<NodeClient, WithDepths>(cls, "all_ptrs", "all_sizes");
  def_take_notes(cls);
  cls.def("prefetch", &NodeClient::prefetch, release_gil(), py::arg("keys"), py::arg("step") = 0)
      .def("remove", &NodeClient::remove, release_gil())
      .def("remove_all", &NodeClient::remove_all, release_gil())
      .def("stats_json", &client_stats_json,
           "The node's figures as a JSON string; raises EngineError('io', ...) when the node is unavailable.")
      .def("get_bytes", &client_get_bytes,
           "The value as bytes, or a negative error code (NOT_FOUND for a miss or an unavailable node).")
      .def("value_size", &NodeClient::value_size, release_gil())
      .def("ping", &NodeClient::ping, release_gil())
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
