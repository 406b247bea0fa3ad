// KVINFER_CUDA_CHECK: runs a CUDA runtime call and throws kvinfer::CudaError (statement, file:line,
// device) when it fails. Only for translation units built with the CUDA backend.
#pragma once

#if KVINFER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "core/errors.h"

namespace kvinfer::detail {
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line);
}  // namespace kvinfer::detail

#define KVINFER_CUDA_CHECK(stmt)                                                         \
  do {                                                                                   \
    cudaError_t kvinfer_err_ = (stmt);                                                   \
    if (kvinfer_err_ != cudaSuccess)                                                     \
      ::kvinfer::detail::throw_cuda_error(kvinfer_err_, #stmt, __FILE__, __LINE__);      \
  } while (0)

// After a kernel launch: a bad configuration shows up here, not at the launch statement.
#define KVINFER_CUDA_CHECK_LAUNCH() KVINFER_CUDA_CHECK(cudaGetLastError())
#endif
