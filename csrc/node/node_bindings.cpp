// Python bindings of the node layer (NodeServer, NodeClient).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_node(py::module_& m) {}
