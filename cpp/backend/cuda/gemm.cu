#include "backend/cuda/gemm.h"

#include "core/cublas_loader.h"

namespace kvinfer::cuda {

void gemm(cublasHandle_t handle, const half_t* x, int64_t x_stride, const half_t* w, void* y,
          bool y_fp32, int64_t y_stride, int T, int N, int K, float beta) {
  if (T == 0 || N == 0) return;
  const float alpha = 1.0f;
  // column-major: C (N x T, ld y_stride) = op(A) (N x K) * B (K x T); A = W stored K x N (ld K)
  CUBLAS_CHECK(cublas::api().gemm_ex(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, w,
                                     CUDA_R_16F, K, x, CUDA_R_16F, static_cast<int>(x_stride), &beta,
                                     y, y_fp32 ? CUDA_R_32F : CUDA_R_16F, static_cast<int>(y_stride),
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace kvinfer::cuda
