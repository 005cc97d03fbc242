// pybind11 module mooncake_hicache._native: the shared vocabulary (constants, result codes,
// EngineError, metric kinds) here, and one binding function per layer (nvme_bindings.cpp,
// tiering_bindings.cpp, node_bindings.cpp). Lists are converted with the GIL held; the GIL is
// released for every call that may block (I/O, locks, sockets).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "common/keys.h"
#include "common/status.h"
#include "dram/dram_tier.h"
#include "node/node_stats.h"
#include "nvme/record_format.h"
#include "python/binding_utils.h"

namespace py = pybind11;
using namespace mch;

void bind_nvme(py::module_& m);         // python/nvme_bindings.cpp
void bind_tiering(py::module_& m);      // python/tiering_bindings.cpp
void bind_node_server(py::module_& m);  // python/node_bindings.cpp
void bind_node_client(py::module_& m);  // python/node_bindings.cpp
void bind_peer_server(py::module_& m);  // python/node_bindings.cpp
void bind_cluster(py::module_& m);      // python/cluster_bindings.cpp
void bind_rdma(py::module_& m);         // python/rdma_bindings.cpp

namespace {

const char* kind_name(EngineError::Kind k) {
  switch (k) {
    case EngineError::kInvalid: return "invalid";
    case EngineError::kInUse: return "in_use";
    case EngineError::kFormat: return "format";
    default: return "io";
  }
}

// The kind of every stats field, by section, from the same visit() that writes the figures.
py::object metric_kinds() {
  NodeReport all;
  all.store.has_nvme = true;
  all.has_peer = true;
  return binding::json_dict(kinds_json(all));
}

void bind_common(py::module_& m) {
  m.attr("MAX_KEY_LEN") = kMaxKeyLen;
  m.attr("FORMAT_VERSION") = disk::kFormatVersion;
  m.attr("BLOCK_SIZE") = kBlock;
  // Size limits (config.py validates against them): an NVMe region holds a value of at most
  // region_size - NVME_REGION_OVERHEAD bytes; value lengths are 32-bit.
  m.attr("NVME_REGION_OVERHEAD") = disk::kRegionOverhead;
  m.attr("MAX_REGION_SIZE") = disk::kMaxRegionSize;
  m.attr("MAX_SLAB_SIZE") = DramTier::kMaxSlabSize;
  // The per-key result codes: [(name, value, doc)], the source of mooncake_hicache.ErrorCode.
  py::list codes;
  py::dict mooncake;  // {name: Mooncake ErrorCode name of the same meaning and number, or None}
  for (const StatusInfo& s : kStatusTable) {
    codes.append(py::make_tuple(s.name, s.value, s.doc));
    mooncake[s.name] = *s.mooncake ? py::object(py::str(s.mooncake)) : py::object(py::none());
  }
  m.attr("STATUS_CODES") = codes;
  m.attr("STATUS_MOONCAKE_NAMES") = mooncake;
  m.def("metric_kinds", &metric_kinds,
        "{section: {field: 'counter' | 'gauge' | 'flag' | 'info' | 'counter:<label>' | 'list'}} for every "
        "stats section; mooncake_hicache.metrics types the Prometheus series with it.");
  // EngineError(kind, message): kind is "invalid", "in_use", "format" or "io".
  static py::exception<EngineError> engine_error(m, "EngineError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const EngineError& e) {
      py::object args = py::make_tuple(kind_name(e.kind), e.what());
      PyErr_SetObject(engine_error.ptr(), args.ptr());
    }
  });
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "mooncake-hicache native data plane (NVMe engine, DRAM tier, node transport)";
  bind_common(m);
  bind_nvme(m);
  bind_tiering(m);
  bind_node_server(m);
  bind_node_client(m);
  bind_peer_server(m);
  bind_cluster(m);
  bind_rdma(m);
}
