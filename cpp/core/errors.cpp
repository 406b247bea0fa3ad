#include "core/errors.h"

#include <string>

#include "core/cuda_check.h"

namespace kvinfer {

std::string format_bytes(size_t bytes) {
  std::string digits = std::to_string(bytes);
  std::string out;
  int n = static_cast<int>(digits.size());
  for (int i = 0; i < n; ++i) {
    out += digits[i];
    if ((n - i - 1) % 3 == 0 && i != n - 1) out += ',';
  }
  return out + " B";
}

namespace detail {
std::string source_path(const std::string& file) {
  for (const char* dir : {"/cpp/", "/cuda/", "/tests/"}) {
    size_t at = file.rfind(dir);
    if (at != std::string::npos) return file.substr(at + 1);
  }
  return file;
}
}  // namespace detail

#if KVINFER_WITH_CUDA
namespace detail {
void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line) {
  int device = -1;
  cudaGetDevice(&device);  // best effort: the device is context for the message only
  throw CudaError(str("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ",
                      source_path(file), ":", line, " on cuda:", device, ": ", stmt));
}
}  // namespace detail
#endif

}  // namespace kvinfer
