// Shared pieces of the kvinfer._core bindings (one file per topic).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "core/device.h"

namespace kvinfer::bindings {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// "cuda", "cuda:1" -> CUDA; anything else -> CPU (for size formulas, which need no device).
inline DeviceKind device_kind(const std::string& device) {
  return device.rfind("cuda", 0) == 0 ? DeviceKind::CUDA : DeviceKind::CPU;
}

void bind_memory(py::module_& m);
void bind_model(py::module_& m);
void bind_runner(py::module_& m);

}  // namespace kvinfer::bindings
