// Embedding, RMSNorm/LayerNorm, q/k-norm, the gather of kept rows, SiLU*mul, gelu_new and bias adds
// on the GPU. Norms: one block per row (q/k-norm: one warp per head), statistics in fp32 reductions.
// Everything else: one thread per element or per 16 bytes; all memory-bound.
#include "backend/cuda/elementwise.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

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
  const int pos = step.positions[t];  // -1: a token that pads the step (staging.h), of no sequence
  const int64_t row = static_cast<int64_t>(token) * H;
  const int64_t prow = pos_table ? static_cast<int64_t>(max(pos, 0)) * H : 0;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float v = __half2float(table[row + i]);
    if (pos_table) v += __half2float(pos_table[prow + i]);
    out[static_cast<int64_t>(t) * H + i] = v;
  }
  if (threadIdx.x == 0) {
    step.tokens[t] = token;
    if (history && pos >= 0) history[step.kv_slots[step.token_seq[t]] * history_stride + pos] = token;
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

// V consecutive columns per thread: 4 (16-byte loads of x) where H and x's address allow it.
template <bool LAYER, int V>
static __global__ void norm_kernel(const float* __restrict__ x, const int32_t* __restrict__ rows,
                                   const __half* __restrict__ weight, const __half* __restrict__ bias,
                                   __half* __restrict__ y, int H, float eps) {
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(rows ? rows[r] : r) * H;
  __half* yr = y + static_cast<int64_t>(r) * H;
  auto load = [&](int i, float (&v)[V]) {
    if constexpr (V == 4) {
      const float4 f = *reinterpret_cast<const float4*>(xr + i);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
      v[0] = xr[i];
    }
  };
  float mean = 0.0f;
  if (LAYER) {
    float s = 0.0f;
    for (int i = threadIdx.x * V; i < H; i += blockDim.x * V) {
      float v[V];
      load(i, v);
      for (int j = 0; j < V; ++j) s += v[j];
    }
    mean = block_sum(s, scratch) / H;
  }
  float ss = 0.0f;
  for (int i = threadIdx.x * V; i < H; i += blockDim.x * V) {
    float v[V];
    load(i, v);
    for (int j = 0; j < V; ++j) ss += (v[j] - mean) * (v[j] - mean);
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / H + eps);
  for (int i = threadIdx.x * V; i < H; i += blockDim.x * V) {
    float v[V];
    load(i, v);
    __half out[V];
    for (int j = 0; j < V; ++j) {
      float o = (v[j] - mean) * inv * __half2float(weight[i + j]);
      if (LAYER && bias) o += __half2float(bias[i + j]);
      out[j] = __float2half_rn(o);
    }
    if constexpr (V == 4)
      *reinterpret_cast<uint2*>(yr + i) = *reinterpret_cast<const uint2*>(out);
    else
      yr[i] = out[0];
  }
}

template <bool LAYER>
static void launch_norm(const float* x, const int32_t* rows, const half_t* weight, const half_t* bias, half_t* y,
                        int n_rows, int H, float eps, cudaStream_t stream) {
  const auto* w = reinterpret_cast<const __half*>(weight);
  const auto* b = reinterpret_cast<const __half*>(bias);
  auto* out = reinterpret_cast<__half*>(y);
  if (H % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 8 == 0)
    norm_kernel<LAYER, 4><<<n_rows, 256, 0, stream>>>(x, rows, w, b, out, H, eps);
  else
    norm_kernel<LAYER, 1><<<n_rows, 256, 0, stream>>>(x, rows, w, b, out, H, eps);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void rms_norm(const float* x, const int32_t* rows, const half_t* weight, half_t* y, int n_rows,
              int H, float eps, cudaStream_t stream) {
  if (n_rows == 0) return;
  launch_norm<false>(x, rows, weight, nullptr, y, n_rows, H, eps, stream);
}

void layer_norm(const float* x, const int32_t* rows, const half_t* weight, const half_t* bias,
                half_t* y, int n_rows, int H, float eps, cudaStream_t stream) {
  if (n_rows == 0) return;
  launch_norm<true>(x, rows, weight, bias, y, n_rows, H, eps, stream);
}

// One warp a (token, head); a lane takes head_dim / 32 values (at most kHeadNormMaxPerLane).
constexpr int kHeadNormMaxPerLane = 8;
static __global__ void head_rms_norm_kernel(__half* qkv, int64_t stride, int T, int q_heads, int k_heads,
                                            int head_dim, const __half* __restrict__ q_weight,
                                            const __half* __restrict__ k_weight, float eps) {
  pdl_allow_next();
  pdl_wait();  // qkv comes from the projection before
  const int heads = q_heads + k_heads, lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;  // t * heads + head
  if (item >= int64_t(T) * heads) return;
  const int t = static_cast<int>(item / heads), head = static_cast<int>(item % heads);
  __half* x = qkv + t * stride + int64_t(head) * head_dim;
  const __half* w = head < q_heads ? q_weight : k_weight;
  float v[kHeadNormMaxPerLane];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kHeadNormMaxPerLane; ++j) {
    const int i = lane + 32 * j;
    v[j] = i < head_dim ? __half2float(x[i]) : 0.0f;
    ss += v[j] * v[j];
  }
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float inv = rsqrtf(ss / head_dim + eps);
#pragma unroll
  for (int j = 0; j < kHeadNormMaxPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < head_dim) x[i] = __float2half_rn(v[j] * inv * __half2float(w[i]));
  }
}

void head_rms_norm(half_t* qkv, int64_t stride, int T, int q_heads, int k_heads, int head_dim,
                   const half_t* q_weight, const half_t* k_weight, float eps, cudaStream_t stream) {
  KVINFER_CHECK_ARG(T >= 0 && q_heads >= 0 && k_heads >= 0 && head_dim >= 1 && head_dim <= 32 * kHeadNormMaxPerLane &&
                        stride >= int64_t(q_heads + k_heads) * head_dim && q_weight && k_weight,
                    "head_rms_norm: T=", T, " q_heads=", q_heads, " k_heads=", k_heads, " head_dim=", head_dim,
                    " stride=", stride, " (head_dim in [1, ", 32 * kHeadNormMaxPerLane,
                    "], the heads within the row, both weights given)");
  const int64_t items = int64_t(T) * (q_heads + k_heads);
  if (items == 0) return;
  constexpr int kWarps = 4;
  KVINFER_CHECK_ARG((items + kWarps - 1) / kWarps <= 0x7fffffff, "head_rms_norm: ", items, " heads is too many");
  launch_dependent(head_rms_norm_kernel, dim3(static_cast<unsigned>((items + kWarps - 1) / kWarps)), dim3(32 * kWarps), 0,
                   stream, reinterpret_cast<__half*>(qkv), stride, T, q_heads, k_heads, head_dim,
                   reinterpret_cast<const __half*>(q_weight), reinterpret_cast<const __half*>(k_weight), eps);
}

// One block a kept row (a step keeps a few: its sampled rows).
static __global__ void gather_rows_kernel(const float* __restrict__ x, const __half* __restrict__ attn, int A,
                                          const int32_t* __restrict__ rows, int H, float* __restrict__ x_out,
                                          __half* __restrict__ attn_out) {
  const int64_t r = blockIdx.x, from = rows[r];
  for (int i = threadIdx.x; i < H; i += blockDim.x) x_out[r * H + i] = x[from * H + i];
  for (int i = threadIdx.x; i < A; i += blockDim.x) attn_out[r * A + i] = attn[from * A + i];
}

void gather_rows(const float* x, const half_t* attn, int A, const int32_t* rows, int R, int H, float* x_out,
                 half_t* attn_out, cudaStream_t stream) {
  KVINFER_CHECK_ARG(R >= 0 && H > 0 && A > 0, "gather_rows: R=", R, " H=", H, " A=", A);
  if (R == 0) return;
  gather_rows_kernel<<<R, 256, 0, stream>>>(x, reinterpret_cast<const __half*>(attn), A, rows, H, x_out,
                                            reinterpret_cast<__half*>(attn_out));
  KVINFER_CUDA_CHECK_LAUNCH();
}

// One thread per V columns of a row: V = 8 (16-byte loads and stores) where the widths, strides
// and addresses allow it, else 1. Rows run along the grid's y axis, so no thread divides an index.
// In place (out == gate_up) each thread reads its gate values before it overwrites them.
template <int V>
static __global__ void silu_mul_kernel(const __half* gu, int64_t stride, __half* out, int64_t out_stride, int T,
                                       int I) {
  pdl_allow_next();
  pdl_wait();
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * V;
  if (i >= I) return;
  for (int t = blockIdx.y; t < T; t += gridDim.y) {
    const __half* g = gu + t * stride + i;
    __half* o = out + t * out_stride + i;
    if constexpr (V == 8) {
      uint4 gv = *reinterpret_cast<const uint4*>(g);
      const uint4 uv = *reinterpret_cast<const uint4*>(g + I);
      __half2* gh = reinterpret_cast<__half2*>(&gv);
      const __half2* uh = reinterpret_cast<const __half2*>(&uv);
      for (int j = 0; j < 4; ++j) {
        const float2 a = __half22float2(gh[j]), b = __half22float2(uh[j]);
        gh[j] = __floats2half2_rn(silu_times(a.x, b.x), silu_times(a.y, b.y));
      }
      *reinterpret_cast<uint4*>(o) = gv;
    } else {
      const float a = __half2float(g[0]), b = __half2float(g[I]);
      o[0] = __float2half_rn(silu_times(a, b));
    }
  }
}

static bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void silu_mul(const half_t* gate_up, int64_t stride, half_t* out, int64_t out_stride, int T, int I,
              cudaStream_t stream) {
  if (T == 0 || I == 0) return;
  const bool wide = I % 8 == 0 && stride % 8 == 0 && out_stride % 8 == 0 && aligned16(gate_up) && aligned16(out);
  const int per_thread = wide ? 8 : 1, threads = 128;
  const dim3 grid(blocks_for((I + per_thread - 1) / per_thread, threads), std::min(T, 65535));
  const auto* in = reinterpret_cast<const __half*>(gate_up);
  auto* o = reinterpret_cast<__half*>(out);
  if (wide)
    launch_dependent(silu_mul_kernel<8>, grid, threads, 0, stream, in, stride, o, out_stride, T, I);
  else
    launch_dependent(silu_mul_kernel<1>, grid, threads, 0, stream, in, stride, o, out_stride, T, I);
}

static __device__ __forceinline__ float gelu_value(float v) {
  const float k = 0.7978845608028654f;
  return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
}

// In place; 8 values a thread (16-byte loads) where n and the address allow it.
template <int V>
static __global__ void gelu_kernel(__half* x, int64_t n) {
  pdl_allow_next();
  pdl_wait();
  for (int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V; e < n; e += int64_t(gridDim.x) * blockDim.x * V) {
    if constexpr (V == 8) {
      uint4 v = *reinterpret_cast<const uint4*>(x + e);
      __half2* h = reinterpret_cast<__half2*>(&v);
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(h[j]);
        h[j] = __floats2half2_rn(gelu_value(f.x), gelu_value(f.y));
      }
      *reinterpret_cast<uint4*>(x + e) = v;
    } else {
      x[e] = __float2half_rn(gelu_value(__half2float(x[e])));
    }
  }
}

void gelu_new(half_t* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  auto* h = reinterpret_cast<__half*>(x);
  if (n % 8 == 0 && aligned16(x))
    launch_dependent(gelu_kernel<8>, blocks_for(n / 8, 256), 256, 0, stream, h, n);
  else
    launch_dependent(gelu_kernel<1>, blocks_for(n, 256), 256, 0, stream, h, n);
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
