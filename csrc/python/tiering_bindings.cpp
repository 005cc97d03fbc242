// Python bindings of the tiering layer: _native.TieredStore, with the same batch methods as
// _native.NvmeEngine so mooncake_hicache.Store can drive either. The GIL is released around
// every call that may block.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "python/binding_utils.h"
#include "tiering/tiered_store.h"

namespace py = pybind11;
using namespace mch;
using namespace mch::binding;

namespace {

std::unique_ptr<TieredStore> make_store(uint64_t dram_capacity, uint64_t slab_size, const std::string& eviction,
                                        bool hugepages, const std::string& admission, bool write_through,
                                        const std::string& nvme_path, uint64_t nvme_capacity,
                                        uint64_t nvme_region_size, int nvme_queue_depth, bool nvme_direct_io,
                                        const std::string& nvme_io_backend, bool nvme_sync_on_seal,
                                        bool nvme_reinsertion, bool keep_keys, double clean_reserve,
                                        uint64_t demote_batch, int prefetch_workers) {
  TieredOptions o;
  o.clean_reserve = clean_reserve;
  o.demote_batch = demote_batch;
  o.keep_keys = keep_keys;
  o.prefetch_workers = prefetch_workers;
  o.dram_capacity = dram_capacity;
  o.slab_size = slab_size;
  o.eviction = eviction;
  o.hugepages = hugepages;
  o.admission = admission;
  o.write_through = write_through;
  o.has_nvme = !nvme_path.empty();
  o.nvme = nvme_options(nvme_path, nvme_capacity, nvme_region_size, nvme_queue_depth, nvme_direct_io, nvme_io_backend,
                        nvme_sync_on_seal, nvme_reinsertion);
  py::gil_scoped_release nogil;
  return std::make_unique<TieredStore>(o);
}

py::object get_bytes(TieredStore& s, const std::string& key) {
  std::vector<GetTicket> t;
  {
    py::gil_scoped_release nogil;
    s.get_pin({key}, &t);
  }
  // On NVMe but not stageable in DRAM: read it straight from NVMe, as batch_get does.
  if (t[0].status == status_code(Status::kNoSpace)) return read_whole_value(s, key);
  if (t[0].status < 0) return py::int_(t[0].status);
  py::bytes out(reinterpret_cast<const char*>(s.arena_base() + t[0].offset), static_cast<size_t>(t[0].status));
  s.get_unpin({t[0].token});
  return out;
}

}  // namespace

void bind_tiering(py::module_& m) {
  py::class_<TieredStore> cls(m, "TieredStore");
  cls.def(py::init(&make_store), py::arg("dram_capacity") = 1ull << 30, py::arg("slab_size") = 32ull << 20,
          py::arg("eviction") = "lru", py::arg("hugepages") = true, py::arg("admission") = "always",
          py::arg("write_through") = false, py::arg("nvme_path") = "", py::arg("nvme_capacity") = 4ull << 30,
          py::arg("nvme_region_size") = 64ull << 20, py::arg("nvme_queue_depth") = 64,
          py::arg("nvme_direct_io") = true, py::arg("nvme_io_backend") = "auto", py::arg("nvme_sync_on_seal") = true,
          py::arg("nvme_reinsertion") = true, py::arg("keep_keys") = false, py::arg("clean_reserve") = 0.0,
          py::arg("demote_batch") = 64ull << 20, py::arg("prefetch_workers") = 1);
  def_batch_api<TieredStore, WithDepths>(cls, "ptrs", "sizes");
  def_take_notes(cls);
  cls.def("prefetch", &TieredStore::prefetch, release_gil(), py::arg("keys"), py::arg("step") = 0)
      .def("get_bytes", &get_bytes)
      .def("value_size", &TieredStore::value_size, release_gil())
      .def("remove", &TieredStore::remove, release_gil())
      .def("remove_all", &TieredStore::remove_all, release_gil())
      .def("remove_prefix", &TieredStore::remove_prefix, release_gil())
      .def("close", &TieredStore::close, release_gil())
      .def("stats_json", &TieredStore::stats_json, release_gil())
      .def("_inject_nvme_faults",
           [](TieredStore& t, const std::string& kind, int times, int err, int ms) {
             t.inject_nvme_faults(fault_kind(kind), times, err, ms);
           },
           py::arg("kind"), py::arg("times"), py::arg("err") = EIO, py::arg("ms") = 0,
           "Test hook: NvmeEngine._inject_faults on this store's NVMe tier.")
      .def_property_readonly("arena_fd", &TieredStore::arena_fd)
      .def_property_readonly("arena_size", &TieredStore::arena_size);
}
