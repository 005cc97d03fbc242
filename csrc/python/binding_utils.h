// Helpers shared by the pybind11 binding files (bindings.cpp, tiering/tiering_bindings.cpp,
// node/node_bindings.cpp), so that _native.NvmeEngine, TieredStore and NodeClient take and check
// their batch arguments the same way:
//
// * one_segment, flat_sg, multi_sg: Python lists of raw pointers and sizes -> scatter-gather
//   lists (one segment per key, or a list of segments per key). Lengths that do not match raise
//   ValueError. Call them with the GIL held (they run before the GIL is released).
// * batch_put, batch_get, batch_exists: one batch call on any of the three classes with the GIL
//   released; they return the per-key results as a list.
// * release_gil: the call guard for methods that only forward to C++ and may block.
//
// * def_batch_api: the batch methods every backend class shares (batch_put[_sg],
//   batch_get[_sg], batch_exists), defined once for NvmeEngine, TieredStore and NodeClient.
// * json_dict: a JSON object string (a stats_json()) as a Python dict.
//
// Only the binding files (csrc/python/) include this header; nothing here is Python-visible by
// itself.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/note_log.h"
#include "common/put_waves.h"
#include "common/sg_list.h"
#include "nvme/fault_injector.h"
#include "nvme/options.h"

namespace mch::binding {

using release_gil = pybind11::call_guard<pybind11::gil_scoped_release>;

inline SgList one_segment(uintptr_t ptr, uint64_t size) {
  return SgList{Segment{reinterpret_cast<uint8_t*>(ptr), size}};
}

// ptrs[i], sizes[i]: the one buffer of key i.
inline std::vector<SgList> flat_sg(const std::vector<uintptr_t>& ptrs, const std::vector<uint64_t>& sizes) {
  if (ptrs.size() != sizes.size()) throw pybind11::value_error("pointer and size lists differ in length");
  std::vector<SgList> out;
  out.reserve(ptrs.size());
  for (size_t i = 0; i < ptrs.size(); i++) out.push_back(one_segment(ptrs[i], sizes[i]));
  return out;
}

// ptrs[i][j], sizes[i][j]: segment j of key i.
inline std::vector<SgList> multi_sg(const std::vector<std::vector<uintptr_t>>& ptrs,
                                    const std::vector<std::vector<uint64_t>>& sizes) {
  if (ptrs.size() != sizes.size()) throw pybind11::value_error("pointer and size lists differ in length");
  std::vector<SgList> out(ptrs.size());
  for (size_t i = 0; i < ptrs.size(); i++) {
    if (ptrs[i].size() != sizes[i].size())
      throw pybind11::value_error("key " + std::to_string(i) + ": pointer and size lists differ in length");
    out[i].reserve(ptrs[i].size());
    for (size_t j = 0; j < ptrs[i].size(); j++)
      out[i].push_back(Segment{reinterpret_cast<uint8_t*>(ptrs[i][j]), sizes[i][j]});
  }
  return out;
}

inline PutMode put_mode(bool keep_existing) { return keep_existing ? PutMode::kKeepExisting : PutMode::kReplace; }

// target.batch_put(keys, sg, extra..., results, mode): extra is the depths where the class takes them.
template <class Target, class... Extra>
std::vector<int32_t> batch_put(Target& target, bool keep_existing, const std::vector<std::string>& keys,
                               const std::vector<SgList>& sg, const Extra&... extra) {
  if (keys.size() != sg.size()) throw pybind11::value_error("keys and pointers differ in length");
  std::vector<int32_t> res(keys.size());
  pybind11::gil_scoped_release nogil;
  target.batch_put(keys, sg, extra..., res.data(), put_mode(keep_existing));
  return res;
}

template <class Target>
std::vector<int64_t> batch_get(Target& target, const std::vector<std::string>& keys, const std::vector<SgList>& sg) {
  if (keys.size() != sg.size()) throw pybind11::value_error("keys and pointers differ in length");
  std::vector<int64_t> res(keys.size());
  pybind11::gil_scoped_release nogil;
  target.batch_get(keys, sg, res.data());
  return res;
}

template <class Target>
std::vector<int32_t> batch_exists(Target& target, const std::vector<std::string>& keys) {
  std::vector<int32_t> res(keys.size());
  pybind11::gil_scoped_release nogil;
  target.batch_exists(keys, res.data());
  return res;
}

// The NVMe settings both NvmeEngine(...) and TieredStore(nvme_...) take.
inline NvmeOptions nvme_options(const std::string& path, uint64_t capacity, uint64_t region_size, int queue_depth,
                                bool direct_io, const std::string& io_backend, bool sync_on_seal, bool reinsertion) {
  NvmeOptions o;
  o.path = path;
  o.capacity = capacity;
  o.region_size = region_size;
  o.queue_depth = queue_depth;
  o.direct_io = direct_io;
  o.io_backend = io_backend;
  o.sync_on_seal = sync_on_seal;
  o.reinsertion = reinsertion;
  return o;
}

// TieredStore and NodeClient take one depth per key (missing depths are 0); NvmeEngine none.
struct WithDepths {};
struct NoDepths {};

template <class Target>
std::vector<int32_t> put_with_depths(Target& t, bool keep_existing, const std::vector<std::string>& keys,
                                     const std::vector<SgList>& sg, std::vector<uint32_t> depths) {
  depths.resize(keys.size(), 0);
  return batch_put(t, keep_existing, keys, sg, depths);
}

// Defines batch_put, batch_put_sg, batch_get, batch_get_sg and batch_exists on `cls`. sg_ptrs and
// sg_sizes name the list-of-lists arguments of the _sg forms.
template <class Target, class Depths, class Cls>
void def_batch_api(Cls& cls, const char* sg_ptrs, const char* sg_sizes) {
  namespace py = pybind11;
  using Ptrs = std::vector<uintptr_t>;
  using Sizes = std::vector<uint64_t>;
  using PtrLists = std::vector<std::vector<uintptr_t>>;
  using SizeLists = std::vector<std::vector<uint64_t>>;
  using Keys = std::vector<std::string>;
  // keep_existing: a key already stored keeps its value (reports 0, nothing copied); else the
  // new value replaces it everywhere.
  if constexpr (std::is_same_v<Depths, WithDepths>) {
    using D = std::vector<uint32_t>;
    cls.def("batch_put", [](Target& t, const Keys& k, const Ptrs& p, const Sizes& s, D d, bool keep) {
         return put_with_depths(t, keep, k, flat_sg(p, s), d);
       }, py::arg("keys"), py::arg("ptrs"), py::arg("sizes"), py::arg("depths") = D{}, py::arg("keep_existing") = false);
    cls.def("batch_put_sg", [](Target& t, const Keys& k, const PtrLists& p, const SizeLists& s, D d, bool keep) {
         return put_with_depths(t, keep, k, multi_sg(p, s), d);
       }, py::arg("keys"), py::arg(sg_ptrs), py::arg(sg_sizes), py::arg("depths") = D{}, py::arg("keep_existing") = false);
  } else {
    cls.def("batch_put", [](Target& t, const Keys& k, const Ptrs& p, const Sizes& s, bool keep) {
         return batch_put(t, keep, k, flat_sg(p, s));
       }, py::arg("keys"), py::arg("ptrs"), py::arg("sizes"), py::arg("keep_existing") = false);
    cls.def("batch_put_sg", [](Target& t, const Keys& k, const PtrLists& p, const SizeLists& s, bool keep) {
         return batch_put(t, keep, k, multi_sg(p, s));
       }, py::arg("keys"), py::arg(sg_ptrs), py::arg(sg_sizes), py::arg("keep_existing") = false);
  }
  cls.def("batch_get", [](Target& t, const Keys& k, const Ptrs& p, const Sizes& s) {
       return batch_get(t, k, flat_sg(p, s));
     }, py::arg("keys"), py::arg("ptrs"), py::arg("sizes"));
  cls.def("batch_get_sg", [](Target& t, const Keys& k, const PtrLists& p, const SizeLists& s) {
       return batch_get(t, k, multi_sg(p, s));
     }, py::arg("keys"), py::arg(sg_ptrs), py::arg(sg_sizes));
  cls.def("batch_exists", &batch_exists<Target>);
}

// take_notes(with_levels=False): lines, or (logging level, line) pairs.
inline pybind11::list notes_to_py(const std::vector<Note>& notes, bool with_levels) {
  pybind11::list out;
  for (const Note& n : notes) {
    if (with_levels)
      out.append(pybind11::make_tuple(static_cast<int>(n.level), n.line));
    else
      out.append(n.line);
  }
  return out;
}

template <class Cls>
void def_take_notes(Cls& cls) {
  using Target = typename Cls::type;
  cls.def("take_notes", [](Target& t, bool with_levels) { return notes_to_py(t.take_notes(), with_levels); },
          pybind11::arg("with_levels") = false,
          "Lines worth logging once (cleared when taken); with_levels: (logging level, line) pairs.");
}

// A fault kind by its test-facing name (nvme/fault_injector.h); ValueError for another name.
inline FaultInjector::Kind fault_kind(const std::string& name) {
  static const char* names[FaultInjector::kKinds] = {"write", "submit", "sync", "acquire", "stall"};
  for (int k = 0; k < FaultInjector::kKinds; k++)
    if (name == names[k]) return static_cast<FaultInjector::Kind>(k);
  throw pybind11::value_error("unknown fault kind '" + name + "'; use write, submit, sync, acquire or stall");
}

// The whole value of `key` as bytes, read by target.value_size() and target.batch_get() into
// fresh aligned memory (again if the value changed size in between), or the error code (an int).
template <class Target>
pybind11::object read_whole_value(Target& t, const std::string& key) {
  for (int attempt = 0; attempt < 4; attempt++) {
    int64_t n, got;
    AlignedBuffer buf;
    {
      pybind11::gil_scoped_release nogil;
      n = t.value_size(key);
      if (n < 0) return pybind11::int_(n);
      buf = AlignedBuffer(std::max<uint64_t>(align_up(static_cast<uint64_t>(n)), kBlock));
      std::vector<std::string> keys{key};
      std::vector<SgList> sg{one_segment(reinterpret_cast<uintptr_t>(buf.data()), buf.size())};
      t.batch_get(keys, sg, &got);
    }
    if (got >= 0) return pybind11::bytes(reinterpret_cast<const char*>(buf.data()), static_cast<size_t>(got));
    if (got != status_code(Status::kBufferTooSmall)) return pybind11::int_(got);  // else replaced meanwhile
  }
  return pybind11::int_(status_code(Status::kBufferTooSmall));
}

// The value as bytes (allocated by Python while the copy runs without the GIL), or the code.
// Target has get_value(key, alloc) (NodeClient, PoolClient).
template <class Target>
pybind11::object get_value_bytes(Target& t, const std::string& key) {
  pybind11::object out;
  int64_t r;
  {
    pybind11::gil_scoped_release nogil;
    r = t.get_value(key, [&out](size_t n) -> uint8_t* {
      pybind11::gil_scoped_acquire gil;
      PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
      if (!b) {
        PyErr_Clear();
        return nullptr;
      }
      out = pybind11::reinterpret_steal<pybind11::object>(b);
      return reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(b));
    });
  }
  if (r >= 0) return out;
  return pybind11::int_(r);
}

inline pybind11::object json_dict(const std::string& json) {
  return pybind11::module_::import("json").attr("loads")(json);
}

}  // namespace mch::binding
