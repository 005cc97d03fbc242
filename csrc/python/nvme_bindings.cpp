// Python bindings of the NVMe layer: _native.NvmeEngine (the NVMe tier alone, for `mode:
// in_process` without a DRAM tier). The GIL is released around every call that may block.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "nvme/nvme_engine.h"
#include "python/binding_utils.h"

namespace py = pybind11;
using namespace mch;
using namespace mch::binding;

namespace {

std::unique_ptr<NvmeEngine> make_engine(const std::string& path, uint64_t capacity, uint64_t region_size,
                                        int queue_depth, bool direct_io, const std::string& io_backend,
                                        bool sync_on_seal, bool reinsertion, int max_parallel_calls) {
  NvmeOptions o = nvme_options(path, capacity, region_size, queue_depth, direct_io, io_backend, sync_on_seal, reinsertion);
  o.max_parallel_calls = max_parallel_calls;
  py::gil_scoped_release nogil;
  return std::make_unique<NvmeEngine>(o);
}

py::object stats(NvmeEngine& e) {
  NvmeStats s;
  {
    py::gil_scoped_release nogil;
    s = e.stats();
  }
  return json_dict(to_json(s));
}

}  // namespace

void bind_nvme(py::module_& m) {
  m.attr("MAX_SEGMENTS") = NvmeEngine::kMaxSegments;
  m.attr("HAVE_URING") = uring_compiled_in();
  py::class_<NvmeEngine> cls(m, "NvmeEngine");
  cls.def(py::init(&make_engine), py::arg("path"), py::arg("capacity"), py::arg("region_size") = 64ull << 20,
          py::arg("queue_depth") = 64, py::arg("direct_io") = true, py::arg("io_backend") = "auto",
          py::arg("sync_on_seal") = true, py::arg("reinsertion") = true, py::arg("max_parallel_calls") = 8);
  def_batch_api<NvmeEngine, NoDepths>(cls, "all_ptrs", "all_sizes");
  def_take_notes(cls);
  cls.def("get_bytes", &read_whole_value<NvmeEngine>)
      .def("value_size", &NvmeEngine::value_size, release_gil())
      .def("remove", &NvmeEngine::remove, release_gil())
      .def("remove_all", &NvmeEngine::remove_all, release_gil())
      .def("remove_prefix",
           [](NvmeEngine& e, const std::string& prefix) -> int64_t {
             if (prefix.empty() || prefix.size() > kMaxKeyLen) return status_code(Status::kInvalidParams);
             std::vector<KeyDigest> removed;
             return e.remove_prefix(prefix, &removed);
           },
           release_gil())
      .def("close", &NvmeEngine::close, release_gil())
      .def("stats", &stats)
      .def_property_readonly("max_value_size", &NvmeEngine::max_value_size)
      .def("_inject_write_errors", &NvmeEngine::inject_write_errors,
           "Test hook: the next n write completions count as device errors (-EIO).")
      .def("_inject_faults",
           [](NvmeEngine& e, const std::string& kind, int times, int err, int ms) {
             e.inject_faults(fault_kind(kind), times, err, ms);
           },
           py::arg("kind"), py::arg("times"), py::arg("err") = EIO, py::arg("ms") = 0,
           "Test hook: the next `times` operations of `kind` (write, submit, sync, acquire, stall) fail with "
           "errno `err` (stall: are delayed by `ms`).");
}
