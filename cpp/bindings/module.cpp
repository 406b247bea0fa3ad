// Python bindings: kvinfer._core (private; python/kvinfer/__init__.py re-exports the public names).
// One file per topic (memory.cpp, model.cpp, runner.cpp); this one holds the module, its
// exceptions and what describes the build and the machine.
// C++ exceptions map to: std::invalid_argument -> ValueError, std::out_of_range -> IndexError,
// OutOfMemoryError -> kvinfer.OutOfMemoryError(MemoryError), CudaError -> kvinfer.CudaError,
// ContextOverflowError -> kvinfer.ContextOverflowError(ValueError).
#include "bindings/bindings.h"
#include "backend/cpu/simd.h"
#include "core/cublas_loader.h"
#include "core/device.h"
#include "core/errors.h"

#if KVINFER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace kvinfer;
using namespace kvinfer::bindings;

namespace {

py::dict build_info() {
  py::dict d;
  d["version"] = KVINFER_VERSION;
  d["cxx_compiler"] = KVINFER_CXX_COMPILER;
#if KVINFER_WITH_CUDA
  d["cuda"] = true;
  d["cuda_architectures"] = KVINFER_CUDA_ARCHS;
  d["cuda_compiler"] = KVINFER_CUDA_COMPILER;
  d["cuda_runtime"] = CUDART_VERSION;
#else
  d["cuda"] = false;
  d["cuda_architectures"] = "";
  d["cuda_compiler"] = "";
  d["cuda_runtime"] = 0;
#endif
  return d;
}

py::list cuda_devices() {
  py::list out;
#if KVINFER_WITH_CUDA
  for (int i = 0, n = cuda_device_count(); i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    size_t free_b = 0, total_b = 0;
    {
      DeviceGuard guard(Device::cuda(i));
      cudaMemGetInfo(&free_b, &total_b);
    }
    py::dict d;
    d["index"] = i;
    d["name"] = std::string(p.name);
    d["compute_capability"] = std::to_string(p.major) + "." + std::to_string(p.minor);
    d["multiprocessors"] = p.multiProcessorCount;
    d["total_bytes"] = total_b;
    d["free_bytes"] = free_b;
    out.append(d);
  }
#endif
  return out;
}

// cudaMemGetInfo for tests and tools: (free, total) bytes of a device.
py::tuple cuda_mem_info(int index) {
#if KVINFER_WITH_CUDA
  DeviceGuard guard(Device::parse("cuda:" + std::to_string(index)));
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) throw CudaError("cudaMemGetInfo failed");
  return py::make_tuple(free_b, total_b);
#else
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "kvinfer native core (private; import kvinfer instead)";

  py::register_exception<OutOfMemoryError>(m, "OutOfMemoryError", PyExc_MemoryError);
  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  py::register_exception<ContextOverflowError>(m, "ContextOverflowError", PyExc_ValueError);

  m.def("build_info", &build_info, "Version, CUDA on/off, CUDA architectures and compilers.");
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_devices", &cuda_devices, "Name, compute capability and memory of each CUDA device.");
  m.def("cuda_mem_info", &cuda_mem_info, py::arg("index") = 0);
  m.def("cuda_forward_available", []() {
#if KVINFER_WITH_CUDA
          return cublas::available();
#else
          return false;
#endif
        },
        "Whether steps can run on CUDA in this build (the backend and cuBLAS are there).");
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.def("set_num_threads", [](int n) {
    KVINFER_CHECK_ARG(n >= 1, "threads=", n, " must be >= 1");
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
  });
  m.def("cpu_simd", []() { return simd::has_avx2() ? "avx2+fma+f16c" : "scalar"; });

  bind_memory(m);
  bind_model(m);
  bind_runner(m);
}
