// pybind11 bindings: mooncake_hicache._native. Converts Python lists to C++ vectors with the
// GIL held, then releases the GIL for every call that may block (I/O, locks).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "binding_utils.h"
#include "nvme/io_queue.h"
#include "nvme/nvme_engine.h"
#include "nvme/record_format.h"

namespace py = pybind11;
using namespace mch;
using namespace mch::binding;

// Other layers bind themselves (one function per folder).
void bind_tiering(py::module_& m);  // tiering/tiering_bindings.cpp
void bind_node(py::module_& m);     // node/node_bindings.cpp
void bind_cluster(py::module_& m);  // cluster/cluster_bindings.cpp

namespace {

const char* kind_name(EngineError::Kind k) {
  switch (k) {
    case EngineError::kInvalid: return "invalid";
    case EngineError::kInUse: return "in_use";
    case EngineError::kFormat: return "format";
    default: return "io";
  }
}

py::dict stats_dict(const NvmeStats& s) {
  return py::module_::import("json").attr("loads")(s.to_json());
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "mooncake-hicache native data plane (NVMe engine)";
  m.attr("MAX_KEY_LEN") = fmt::kMaxKeyLen;
  m.attr("FORMAT_VERSION") = fmt::kFormatVersion;
  m.attr("BLOCK_SIZE") = fmt::kBlock;
  m.attr("MAX_SEGMENTS") = NvmeEngine::kMaxSegments;
  m.attr("HAVE_URING") = uring_compiled_in();

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

  py::class_<NvmeEngine>(m, "NvmeEngine")
      .def(py::init([](const std::string& path, uint64_t capacity, uint64_t region_size, int queue_depth,
                       bool direct_io, const std::string& io_backend, bool sync_on_seal, bool reinsertion,
                       int max_parallel_calls) {
             NvmeOptions o;
             o.path = path;
             o.capacity = capacity;
             o.region_size = region_size;
             o.queue_depth = queue_depth;
             o.direct_io = direct_io;
             o.io_backend = io_backend;
             o.sync_on_seal = sync_on_seal;
             o.reinsertion = reinsertion;
             o.max_parallel_calls = max_parallel_calls;
             py::gil_scoped_release nogil;
             return std::make_unique<NvmeEngine>(o);
           }),
           py::arg("path"), py::arg("capacity"), py::arg("region_size") = 64ull << 20,
           py::arg("queue_depth") = 64, py::arg("direct_io") = true, py::arg("io_backend") = "auto",
           py::arg("sync_on_seal") = true, py::arg("reinsertion") = true, py::arg("max_parallel_calls") = 8)
      .def("batch_put",
           [](NvmeEngine& e, const std::vector<std::string>& keys, const std::vector<uintptr_t>& ptrs,
              const std::vector<uint64_t>& sizes) {
             if (keys.size() != ptrs.size()) throw py::value_error("keys and pointers differ in length");
             return batch_put(e, keys, flat_sg(ptrs, sizes));
           })
      .def("batch_put_sg",
           [](NvmeEngine& e, const std::vector<std::string>& keys, const std::vector<std::vector<uintptr_t>>& ptrs,
              const std::vector<std::vector<uint64_t>>& sizes) {
             if (keys.size() != ptrs.size()) throw py::value_error("keys and pointer lists differ in length");
             return batch_put(e, keys, multi_sg(ptrs, sizes));
           })
      .def("batch_get",
           [](NvmeEngine& e, const std::vector<std::string>& keys, const std::vector<uintptr_t>& ptrs,
              const std::vector<uint64_t>& sizes) {
             if (keys.size() != ptrs.size()) throw py::value_error("keys and pointers differ in length");
             return batch_get(e, keys, flat_sg(ptrs, sizes));
           })
      .def("batch_get_sg",
           [](NvmeEngine& e, const std::vector<std::string>& keys, const std::vector<std::vector<uintptr_t>>& ptrs,
              const std::vector<std::vector<uint64_t>>& sizes) {
             if (keys.size() != ptrs.size()) throw py::value_error("keys and pointer lists differ in length");
             return batch_get(e, keys, multi_sg(ptrs, sizes));
           })
      .def("batch_exists", &batch_exists<NvmeEngine>)
      .def("get_bytes",
           [](NvmeEngine& e, const std::string& key) -> py::object {
             // Reads one value into fresh aligned memory; None on a miss or an error code.
             for (int attempt = 0; attempt < 4; attempt++) {
               int64_t n, got;
               AlignedBuffer buf;
               {
                 py::gil_scoped_release nogil;
                 n = e.value_size(key);
                 if (n < 0) return py::int_(n);
                 buf = AlignedBuffer(std::max<uint64_t>(fmt::align_up(static_cast<uint64_t>(n)), fmt::kBlock));
                 std::vector<std::string> keys{key};
                 std::vector<SgList> sg{one_segment(reinterpret_cast<uintptr_t>(buf.data()), buf.size())};
                 e.batch_get(keys, sg, &got);
               }
               if (got >= 0) return py::bytes(reinterpret_cast<const char*>(buf.data()), static_cast<size_t>(got));
               if (got != kBufferTooSmall) return py::int_(got);  // value replaced meanwhile: retry
             }
             return py::int_(static_cast<int>(kBufferTooSmall));
           })
      .def("value_size", &NvmeEngine::value_size, release_gil())
      .def("remove", &NvmeEngine::remove, release_gil())
      .def("remove_all", &NvmeEngine::remove_all, release_gil())
      .def("close", &NvmeEngine::close, release_gil())
      .def("stats", [](NvmeEngine& e) {
             NvmeStats s;
             {
               py::gil_scoped_release nogil;
               s = e.stats();
             }
             return stats_dict(s);
           })
      .def_property_readonly("max_value_size", &NvmeEngine::max_value_size)
      .def("take_notes", &NvmeEngine::take_notes)
      .def("_inject_write_errors", &NvmeEngine::inject_write_errors,
           "Test hook: the next n write completions count as device errors (-EIO).");

  bind_tiering(m);
  bind_node(m);
  bind_cluster(m);
}
