// Embedding, RMSNorm/LayerNorm, SiLU*mul, gelu_new and bias adds on the GPU. Norms: one
// block per row, statistics in fp32 block reductions. Everything else: one thread per element,
// memory-bound.
#include "backend/cuda/elementwise.h"

#include <cuda_fp16.h>

#include "core/cuda_check.h"
#include "core/errors.h"
#include "backend/cuda/common.cuh"

namespace kvinfer::cuda {

static __global__ void embedding_kernel(StepArrays step, const int32_t* __restrict__ sampled,
                                        const __half* __restrict__ table, const __half* __restrict__ pos_table,
                                        int32_t* __restrict__ history, int64_t history_stride,
                                        float* __restrict__ out, int H, float* __restrict__ ss) {
  const int t = blockIdx.x;
  const int from = step.prev_sample_row[t];
  const int token = from >= 0 ? sampled[from] : step.tokens[t];
  const int pos = step.positions[t];
  const int64_t row = static_cast<int64_t>(token) * H;
  const int64_t prow = pos_table ? static_cast<int64_t>(pos) * H : 0;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float v = __half2float(table[row + i]);
    if (pos_table) v += __half2float(pos_table[prow + i]);
    out[static_cast<int64_t>(t) * H + i] = v;
  }
  if (threadIdx.x == 0) {
    step.tokens[t] = token;
    if (history) history[step.kv_slots[step.token_seq[t]] * history_stride + pos] = token;
  }
  if (ss) {  // each thread sums the squares of its own 16 columns, in order
    __syncthreads();
    const float* row = out + static_cast<int64_t>(t) * H;
    for (int gi = threadIdx.x; gi < H / 16; gi += blockDim.x) {
      float s = 0.0f;
      for (int i = 0; i < 16; ++i) s += row[16 * gi + i] * row[16 * gi + i];
      ss[static_cast<int64_t>(t) * (H / 16) + gi] = s;
    }
  }
}

void embedding(const StepArrays& step, int T, const int32_t* sampled, const half_t* table,
               const half_t* pos_table, int32_t* history, int64_t history_stride, float* out, int H,
               float* ss, cudaStream_t stream) {
  if (T == 0) return;
  KVINFER_CHECK_ARG(!ss || H % 16 == 0, "embedding: sums of squares need hidden=", H, " to be a multiple of 16");
  embedding_kernel<<<T, 256, 0, stream>>>(step, sampled, reinterpret_cast<const __half*>(table),
                                          reinterpret_cast<const __half*>(pos_table), history,
                                          history_stride, out, H, ss);
  KVINFER_CUDA_CHECK_LAUNCH();
}

template <bool LAYER>
static __global__ void norm_kernel(const float* __restrict__ x, const int32_t* __restrict__ rows,
                                   const __half* __restrict__ weight, const __half* __restrict__ bias,
                                   __half* __restrict__ y, int H, float eps) {
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(rows ? rows[r] : r) * H;
  __half* yr = y + static_cast<int64_t>(r) * H;
  float mean = 0.0f;
  if (LAYER) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) s += xr[i];
    mean = block_sum(s, scratch) / H;
  }
  float ss = 0.0f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    const float d = xr[i] - mean;
    ss += d * d;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float v = (xr[i] - mean) * inv * __half2float(weight[i]);
    if (LAYER && bias) v += __half2float(bias[i]);
    yr[i] = __float2half_rn(v);
  }
}

void rms_norm(const float* x, const int32_t* rows, const half_t* weight, half_t* y, int n_rows,
              int H, float eps, cudaStream_t stream) {
  if (n_rows == 0) return;
  norm_kernel<false><<<n_rows, 256, 0, stream>>>(x, rows, reinterpret_cast<const __half*>(weight),
                                                 nullptr, reinterpret_cast<__half*>(y), H, eps);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void layer_norm(const float* x, const int32_t* rows, const half_t* weight, const half_t* bias,
                half_t* y, int n_rows, int H, float eps, cudaStream_t stream) {
  if (n_rows == 0) return;
  norm_kernel<true><<<n_rows, 256, 0, stream>>>(x, rows, reinterpret_cast<const __half*>(weight),
                                                reinterpret_cast<const __half*>(bias),
                                                reinterpret_cast<__half*>(y), H, eps);
  KVINFER_CUDA_CHECK_LAUNCH();
}

static __global__ void silu_mul_kernel(const __half* __restrict__ gu, int64_t stride, __half* out,
                                       int64_t out_stride, int T, int I) {
  pdl_allow_next();
  pdl_wait();
  const int64_t n = static_cast<int64_t>(T) * I;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / I, i = e % I;
    const float g = __half2float(gu[t * stride + i]), u = __half2float(gu[t * stride + I + i]);
    out[t * out_stride + i] = __float2half_rn(g / (1.0f + expf(-g)) * u);
  }
}

void silu_mul(const half_t* gate_up, int64_t stride, half_t* out, int64_t out_stride, int T, int I,
              cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(T) * I;
  if (n == 0) return;
  launch_dependent(silu_mul_kernel, blocks_for(n, 256), 256, 0, stream, reinterpret_cast<const __half*>(gate_up),
                   stride, reinterpret_cast<__half*>(out), out_stride, T, I);
}

static __global__ void gelu_kernel(__half* x, int64_t n) {
  pdl_allow_next();
  pdl_wait();
  const float k = 0.7978845608028654f;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const float v = __half2float(x[e]);
    x[e] = __float2half_rn(0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))));
  }
}

void gelu_new(half_t* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch_dependent(gelu_kernel, blocks_for(n, 256), 256, 0, stream, reinterpret_cast<__half*>(x), n);
}

template <class T>
static __global__ void bias_kernel(T* y, int64_t stride, const __half* __restrict__ bias, int rows, int N) {
  const int64_t n = static_cast<int64_t>(rows) * N;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / N, c = e % N;
    T& dst = y[t * stride + c];
    if constexpr (sizeof(T) == 2) dst = __float2half_rn(__half2float(dst) + __half2float(bias[c]));
    else dst += __half2float(bias[c]);
  }
}

void bias_add(half_t* y, int64_t stride, const half_t* bias, int T, int N, cudaStream_t stream) {
  if (int64_t(T) * N == 0) return;
  bias_kernel<__half><<<blocks_for(int64_t(T) * N, 256), 256, 0, stream>>>(
      reinterpret_cast<__half*>(y), stride, reinterpret_cast<const __half*>(bias), T, N);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void bias_add(float* y, int64_t stride, const half_t* bias, int T, int N, cudaStream_t stream) {
  if (int64_t(T) * N == 0) return;
  bias_kernel<float><<<blocks_for(int64_t(T) * N, 256), 256, 0, stream>>>(
      y, stride, reinterpret_cast<const __half*>(bias), T, N);
  KVINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace kvinfer::cuda
