// Python bindings of the tiering layer (TieredStore).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_tiering(py::module_& m) {}
