#include "core/cublas_loader.h"

#if KVINFER_WITH_CUDA
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "core/cuda_check.h"

namespace kvinfer::cublas {

namespace {

struct Loaded {
  Api api{};
  std::string error;  // empty when loaded
};

Loaded load() {
  Loaded out;
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("KVINFER_CUBLAS_LIBRARY")) candidates.emplace_back(env);
  candidates.insert(candidates.end(), {"libcublas.so.13", "libcublas.so.12", "libcublas.so"});
  for (const char* root : {static_cast<const char*>(std::getenv("CUDA_HOME")),
                           static_cast<const char*>(std::getenv("CUDA_PATH")), "/usr/local/cuda"})
    if (root) candidates.push_back(std::string(root) + "/lib64/libcublas.so");
  void* lib = nullptr;
  std::string tried;
  for (const auto& path : candidates) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    tried += (tried.empty() ? "" : ", ") + path;
  }
  if (!lib) {
    out.error = "cuBLAS library not found (tried " + tried +
                "); install the CUDA toolkit or `pip install nvidia-cublas` and set "
                "KVINFER_CUBLAS_LIBRARY to its libcublas.so path";
    return out;
  }
  auto sym = [&](const char* name) {
    void* p = dlsym(lib, name);
    if (!p && out.error.empty()) out.error = std::string("cuBLAS library lacks ") + name;
    return p;
  };
  out.api.create = reinterpret_cast<decltype(Api::create)>(sym("cublasCreate_v2"));
  out.api.destroy = reinterpret_cast<decltype(Api::destroy)>(sym("cublasDestroy_v2"));
  out.api.set_stream = reinterpret_cast<decltype(Api::set_stream)>(sym("cublasSetStream_v2"));
  out.api.set_workspace = reinterpret_cast<decltype(Api::set_workspace)>(sym("cublasSetWorkspace_v2"));
  out.api.gemm_ex = reinterpret_cast<decltype(Api::gemm_ex)>(sym("cublasGemmEx"));
  out.api.status_string = reinterpret_cast<decltype(Api::status_string)>(sym("cublasGetStatusString"));
  return out;
}

const Loaded& loaded() {
  static const Loaded l = load();  // thread-safe one-time initialisation
  return l;
}

}  // namespace

const Api& api() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw CudaError(l.error);
  return l.api;
}

bool available() { return loaded().error.empty(); }

void throw_error(cublasStatus_t status, const char* stmt, const char* file, int line) {
  int device = -1;
  cudaGetDevice(&device);
  const char* text = available() ? loaded().api.status_string(status) : "?";
  throw CudaError(str("cuBLAS error ", static_cast<int>(status), " (", text, ") at ",
                      detail::source_path(file), ":", line,
                      " on cuda:", device, ": ", stmt));
}

}  // namespace kvinfer::cublas
#endif
