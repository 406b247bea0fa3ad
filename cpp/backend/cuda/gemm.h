// GEMMs through cuBLAS: y[T][N] = x[T][K] W[N][K]^T (+ beta * y), fp16 inputs, fp32 accumulation,
// y fp16 or fp32. Row-major operands map onto column-major cuBLAS as y^T = W x^T.
#pragma once

#include <cublas_v2.h>

#include <cstdint>

#include "core/half.h"

namespace kvinfer::cuda {
void gemm(cublasHandle_t handle, const half_t* x, int64_t x_stride, const half_t* w, void* y,
          bool y_fp32, int64_t y_stride, int T, int N, int K, float beta);
}  // namespace kvinfer::cuda
