// The RDMA side as Python sees it: which verbs provider this process has (the real libibverbs,
// the FAKE one of the tests, or none and why) and the devices it sees, for the transport choice
// of cluster.transport (tcp | rdma | auto) and the configuration checks
// (mooncake_hicache/cluster/transport.py). Listing devices opens and queries them: the GIL is
// released meanwhile.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "transport/rdma/rdma_device.h"
#include "transport/rdma/verbs_api.h"

namespace py = pybind11;
using namespace mch::rdma;

namespace {

py::dict port_dict(const PortSummary& p) {
  py::dict d;
  d["port"] = p.port;
  d["state"] = port_state_name(p.state);
  d["link_layer"] = link_layer_name(p.link_layer);
  d["mtu"] = p.mtu;
  d["lid"] = p.lid;
  d["gids"] = p.gids;
  return d;
}

// {"provider", "fake", "error", "devices": [{name, max_mr_size, usable, error, ports: [...]}]}
py::dict rdma_devices() {
  const VerbsApi* api = verbs_provider();
  std::vector<DeviceSummary> ds;
  std::string err;
  {
    py::gil_scoped_release nogil;
    if (!api)
      err = verbs_unavailable_reason();
    else if (!describe_devices(*api, &ds, &err))
      ds.clear();
  }
  py::dict out;
  out["provider"] = api ? api->name : "";
  out["fake"] = api ? api->fake : false;
  out["error"] = err;
  py::list devs;
  for (const DeviceSummary& d : ds) {
    py::dict e;
    e["name"] = d.name;
    e["max_mr_size"] = d.max_mr_size;
    e["usable"] = d.usable();
    e["error"] = d.error;
    py::list ports;
    for (const PortSummary& p : d.ports) ports.append(port_dict(p));
    e["ports"] = ports;
    devs.append(e);
  }
  out["devices"] = devs;
  return out;
}

}  // namespace

void bind_rdma(py::module_& m) {
  m.attr("RDMA_COMPILED_IN") = verbs_compiled_in();
  m.def("rdma_devices", &rdma_devices,
        "The verbs provider of this process and the RDMA devices it sees: {provider, fake, error, devices: "
        "[{name, max_mr_size, usable, error, ports: [{port, state, link_layer, mtu, lid, gids}]}]}. error says "
        "why there is no list (no provider: names libibverbs-dev; no RDMA core in the kernel).");
}
