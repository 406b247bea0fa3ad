// cuBLAS, loaded at run time (dlopen) so that `import kvinfer` needs no cuBLAS library on machines
// without a GPU; only the headers are needed at build time. CUBLAS_CHECK throws kvinfer::CudaError.
#pragma once

#if KVINFER_WITH_CUDA
#include <cublas_v2.h>

#include <string>

#include "core/errors.h"

namespace kvinfer::cublas {

struct Api {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t);
  const char* (*status_string)(cublasStatus_t);
};

// The loaded library (first call loads it). Throws CudaError naming the paths tried when it cannot
// be found. Search: $KVINFER_CUBLAS_LIBRARY, libcublas.so.13 / .12 on the loader path,
// $CUDA_HOME/lib64, /usr/local/cuda/lib64.
const Api& api();
bool available();  // loads if needed; false instead of throwing

[[noreturn]] void throw_error(cublasStatus_t status, const char* stmt, const char* file, int line);

}  // namespace kvinfer::cublas

#define CUBLAS_CHECK(stmt)                                                              \
  do {                                                                                  \
    cublasStatus_t kvinfer_st_ = (stmt);                                                \
    if (kvinfer_st_ != CUBLAS_STATUS_SUCCESS)                                           \
      ::kvinfer::cublas::throw_error(kvinfer_st_, #stmt, __FILE__, __LINE__);           \
  } while (0)
#endif
