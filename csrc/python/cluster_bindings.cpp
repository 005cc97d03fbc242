// Python bindings of the cluster layer: _native.Placement (cluster/placement.h), speaking member
// ids where the C++ API speaks member indices, two timing helpers for bench/placement_bench.py
// that loop in C++ so the figures hold no Python overhead, and _native.PoolClient
// (cluster/pool_client.h: the Store's backend in cluster mode). Invalid arguments raise
// ValueError. Batch calls release the GIL once their arguments are converted, for the whole batch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>

#include "cluster/placement.h"
#include "cluster/pool_client.h"
#include "common/checksum.h"
#include "python/binding_utils.h"
#include "python/view_convert.h"

namespace py = pybind11;
using mch::cluster::Fanout;
using mch::cluster::Placement;
using mch::cluster::PlacementMember;

namespace {

Fanout fanout_of(const std::string& name) {
  if (name == "all") return Fanout::kAll;
  if (name == "one") return Fanout::kOne;
  throw py::value_error("fanout must be 'all' (every holder: writes) or 'one' (one holder: reads), got '" + name + "'");
}

std::vector<double> cost_vector(const Placement& p, const std::optional<std::map<std::string, double>>& cost) {
  if (!cost) return {};
  std::vector<double> out(p.size(), 0.0);
  for (const auto& [id, c] : *cost) {
    int32_t m = p.index_of(id);
    if (m < 0) throw py::value_error("cost names '" + id + "', which is not a member of this placement");
    out[m] = c;
  }
  return out;
}

py::list ids_of(const Placement& p, const uint32_t* idx, uint32_t n) {
  py::list out(n);
  for (uint32_t i = 0; i < n; i++) out[i] = py::str(p.id(idx[i]));
  return out;
}

// Mean ns of call(), which returns a number the loop sums into a volatile so no call is elided.
double ns_per_call(int iterations, const std::function<size_t()>& call) {
  if (iterations < 1) throw py::value_error("iterations must be at least 1");
  py::gil_scoped_release nogil;
  volatile size_t sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; i++) sink = sink + call();
  std::chrono::duration<double, std::nano> dt = std::chrono::steady_clock::now() - t0;
  return dt.count() / iterations;
}

// The floor of any hash-based router: one hash per key and a modulo, grouped per member.
std::vector<std::vector<uint32_t>> hash_mod_route(const std::vector<std::string>& keys, uint32_t members) {
  std::vector<std::vector<uint32_t>> groups(members);
  for (uint32_t k = 0; k < keys.size(); k++) groups[XXH3_64bits(keys[k].data(), keys[k].size()) % members].push_back(k);
  return groups;
}

void bind_placement(py::module_& m) {
  py::class_<Placement>(m, "Placement",
                        "Weighted rendezvous placement over a list of (member id, weight); see docs/cluster.md.")
      .def(py::init([](const std::vector<std::pair<std::string, double>>& members) {
             std::vector<PlacementMember> list;
             for (const auto& [id, w] : members) list.push_back(PlacementMember{id, w});
             return std::make_unique<Placement>(std::move(list));
           }),
           py::arg("members"))
      .def("__len__", &Placement::size)
      .def_property_readonly("ids", [](const Placement& p) {
        std::vector<std::string> out;
        for (uint32_t i = 0; i < p.size(); i++) out.push_back(p.id(i));
        return out;
      })
      .def_property_readonly("weights", [](const Placement& p) {
        std::vector<double> out;
        for (uint32_t i = 0; i < p.size(); i++) out.push_back(p.weight(i));
        return out;
      })
      .def("index_of", &Placement::index_of, py::arg("id"), "Position of a member id in ids, -1 when absent.")
      .def("holders",
           [](const Placement& p, const std::string& key, uint32_t replicas) {
             std::vector<uint32_t> idx(p.holder_count(replicas));
             p.holders(key, replicas, idx.data());
             return ids_of(p, idx.data(), static_cast<uint32_t>(idx.size()));
           },
           py::arg("key"), py::arg("replicas") = 1, "The ids of the min(replicas, len) holders of key, best first.")
      .def("batch_holders",
           [](const Placement& p, const std::vector<std::string>& keys, uint32_t replicas) {
             uint32_t n = p.holder_count(replicas);
             std::vector<uint32_t> idx;
             {
               py::gil_scoped_release nogil;
               idx = p.batch_holders(keys, replicas);
             }
             py::list out(keys.size());
             for (size_t k = 0; k < keys.size(); k++) out[k] = ids_of(p, idx.data() + k * n, n);
             return out;
           },
           py::arg("keys"), py::arg("replicas") = 1, "holders() of every key, as a list of id lists.")
      .def("route",
           [](const Placement& p, const std::vector<std::string>& keys, uint32_t replicas, const std::string& fanout,
              const std::optional<std::map<std::string, double>>& cost) {
             Fanout f = fanout_of(fanout);
             std::vector<double> c = cost_vector(p, cost);
             std::vector<std::vector<uint32_t>> groups;
             {
               py::gil_scoped_release nogil;
               groups = p.route(keys, replicas, f, c);
             }
             py::dict out;
             for (uint32_t i = 0; i < groups.size(); i++)
               if (!groups[i].empty()) out[py::str(p.id(i))] = groups[i];
             return out;
           },
           py::arg("keys"), py::arg("replicas") = 1, py::arg("fanout") = "all", py::arg("cost") = py::none(),
           "Group a batch by member: {member id: ascending batch indices}. fanout 'all' sends a key to every "
           "holder (writes); 'one' to the holder of lowest cost (missing ids cost 0; inf = down, never chosen).");
}

void bind_timers(py::module_& m) {
  m.def("_placement_route_ns",
        [](const Placement& p, const std::vector<std::string>& keys, uint32_t replicas, const std::string& fanout,
           int iterations) {
          Fanout f = fanout_of(fanout);
          p.holder_count(replicas);  // validates replicas with the GIL held
          return ns_per_call(iterations, [&] { return p.route(keys, replicas, f).size(); });
        },
        py::arg("placement"), py::arg("keys"), py::arg("replicas"), py::arg("fanout"), py::arg("iterations"),
        "Bench helper: mean ns of Placement.route(keys) in C++ (no conversions).");
  m.def("_hash_mod_route_ns",
        [](const std::vector<std::string>& keys, uint32_t members, int iterations) {
          if (members == 0) throw py::value_error("members must be at least 1");
          return ns_per_call(iterations, [&] { return hash_mod_route(keys, members).size(); });
        },
        py::arg("keys"), py::arg("members"), py::arg("iterations"),
        "Bench helper: mean ns of grouping keys by hash(key) % members in C++, the floor of any hash router.");
}

using mch::NodeClient;
using mch::cluster::MemberProbe;
using mch::cluster::PoolClient;
using mch::cluster::PoolOptions;
namespace binding = mch::binding;

std::unique_ptr<PoolClient> make_pool(std::shared_ptr<NodeClient> local, uint32_t replicas, uint32_t write_quorum,
                                      uint32_t spill_depth, int connect_timeout_ms, int request_timeout_ms,
                                      int cooldown_ms, int view_refresh_ms, const py::bytes& secret, bool rdma,
                                      const std::vector<std::string>& rdma_devices, int gid_index) {
  if (replicas < 1 || replicas > 64) throw py::value_error("replicas must be 1 to 64");
  if (spill_depth > 16) throw py::value_error("spill_depth must be 0 to 16");
  PoolOptions o;
  o.replicas = replicas;
  o.write_quorum = write_quorum;
  o.spill_depth = spill_depth;
  o.connect_timeout_ms = connect_timeout_ms > 0 ? connect_timeout_ms : 1000;
  o.request_timeout_ms = request_timeout_ms > 0 ? request_timeout_ms : 5000;
  o.cooldown_ms = cooldown_ms;
  o.view_refresh_ms = view_refresh_ms;
  o.secret = secret;
  o.rdma = rdma;
  o.rdma_options.devices = rdma_devices;
  o.rdma_options.gid_index = gid_index;
  py::gil_scoped_release nogil;
  return std::make_unique<PoolClient>(std::move(local), std::move(o));
}

py::list probe_list(PoolClient& p, int timeout_ms, bool include_local) {
  std::vector<MemberProbe> out;
  {
    py::gil_scoped_release nogil;
    out = p.probe(timeout_ms, include_local);
  }
  py::list l;
  for (const MemberProbe& m : out) {
    py::dict d;
    d["id"] = m.id;
    d["address"] = m.address;
    d["local"] = m.local;
    d["ok"] = m.ok;
    d["error"] = m.error;
    d["stats"] = m.ok && !m.stats_json.empty() ? binding::json_dict(m.stats_json) : py::object(py::none());
    d["rtt_ms"] = m.rtt_ms;
    l.append(d);
  }
  return l;
}

void bind_pool(py::module_& m) {
  py::class_<PoolClient> cls(m, "PoolClient",
                             "A rank's handle on the whole pool: the same batch calls as NodeClient, routed to the "
                             "members that hold each key (docs/cluster.md). Never raises for member failures: reads "
                             "miss, writes return NODE_UNAVAILABLE or NO_SPACE when the quorum is not met.");
  cls.def(py::init(&make_pool), py::arg("local"), py::arg("replicas") = 1, py::arg("write_quorum") = 0,
          py::arg("spill_depth") = 1, py::arg("connect_timeout_ms") = 1000, py::arg("request_timeout_ms") = 5000,
          py::arg("cooldown_ms") = 0, py::arg("view_refresh_ms") = 500, py::arg("secret") = py::bytes(""),
          py::arg("rdma") = false, py::arg("rdma_devices") = std::vector<std::string>{}, py::arg("gid_index") = -1,
          "rdma: move value bytes with one-sided RDMA where the buffers are registered (register_buffer) and the "
          "member serves RDMA, TCP otherwise; raises EngineError 'invalid' when RDMA cannot be used here.");
  binding::def_batch_api<PoolClient, binding::WithDepths>(cls, "all_ptrs", "all_sizes");
  binding::def_take_notes(cls);
  using binding::release_gil;
  cls.def("prefetch", &PoolClient::prefetch, release_gil(), py::arg("keys"), py::arg("step") = 0)
      .def("remove", &PoolClient::remove, release_gil())
      .def("remove_all", &PoolClient::remove_all, release_gil())
      .def("get_bytes", &binding::get_value_bytes<PoolClient>,
           "The value as bytes, or a negative error code (NOT_FOUND for a miss).")
      .def("value_size", &PoolClient::value_size, release_gil())
      .def("set_local", &PoolClient::set_local, py::arg("local"), release_gil(),
           "Use this client for the host's node from now on (after a restart).")
      .def("set_view", [](PoolClient& p, const py::dict& v) { p.set_view(binding::view_from(v)); }, py::arg("view"))
      .def("refresh_view", &PoolClient::refresh_view, release_gil(), "Ask the local node for its view now.")
      .def_property_readonly("view", [](PoolClient& p) {
        std::shared_ptr<const mch::cluster::ClusterView> v;
        {
          py::gil_scoped_release nogil;
          v = p.view();
        }
        return binding::view_to(v->info());
      })
      .def("probe", &probe_list, py::arg("timeout_ms") = 1000, py::arg("include_local") = true,
           "STATS of every member of the view at once: [{id, address, local, ok, error, stats, rtt_ms}].")
      .def("pool_stats_json", [](const PoolClient& p) { return mch::to_json(p.stats()); },
           "The pool client's figures (the 'pool' section of Store.stats()) as a JSON string.")
      .def("register_buffer",
           [](PoolClient& p, uintptr_t ptr, uint64_t size) {
             std::string err;
             int rc;
             {
               py::gil_scoped_release nogil;
               rc = p.register_buffer(reinterpret_cast<void*>(ptr), size, &err);
             }
             if (rc) throw mch::EngineError(mch::EngineError::kIo, err);
           },
           py::arg("ptr"), py::arg("size"),
           "With RDMA: registers [ptr, ptr+size) on every device so the members read and write it directly "
           "(split at max_mr_size). A no-op without RDMA. Raises EngineError when the NIC refuses it.")
      .def(
          "unregister_buffer", [](PoolClient& p, uintptr_t ptr) { return p.unregister_buffer(reinterpret_cast<void*>(ptr)); },
          py::arg("ptr"), release_gil())
      .def_property_readonly("rdma", &PoolClient::rdma, "Whether this client moves value bytes with RDMA.")
      .def("close", &PoolClient::close, release_gil());
}

}  // namespace

void bind_cluster(py::module_& m) {
  bind_placement(m);
  bind_timers(m);
  bind_pool(m);
}
