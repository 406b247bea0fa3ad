// RoPE and the KV write in one kernel: a block per token; its threads take (head, pair) items of
// the q and k heads (rotating q in place, writing rotated k to the cache) and then the v values.
// The token's head_dim / 2 angles are computed once into shared memory (a sincos each), not once
// per head: at a long prompt the sincos of every (head, pair) item made this kernel compute-bound.
// rope_rotate() (common.cuh), as the qkv projection's fused epilogue computes it (skinny_gemm.h),
// so the two give the same bits.
#include "backend/cuda/kv_write.h"

#include <cuda_fp16.h>

#include "backend/cuda/common.cuh"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

// V consecutive halves at p (V = 8: one 16-byte access; the caller checked the alignment).
template <int V>
__device__ __forceinline__ void load_halves(__half (&d)[V], const __half* p) {
  if constexpr (V == 8) {
    *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(p);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) d[j] = p[j];
  }
}
template <int V>
__device__ __forceinline__ void store_halves(__half* p, const __half (&d)[V]) {
  if constexpr (V == 8) {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(d);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = d[j];
  }
}

// V: pairs (and k / v elements) a thread takes at once: 8 where every row and cache offset is
// 16-byte aligned, else 1. The arithmetic of each pair is the same either way.
template <int V>
static __global__ void rope_kv_write_kernel(__half* __restrict__ qkv, int64_t stride, int num_heads,
                                            int num_kv_heads, int head_dim, const float* __restrict__ inv_freq,
                                            __half* __restrict__ k_cache, __half* __restrict__ v_cache,
                                            KVLayout layout, StepArrays step) {
  extern __shared__ float2 angles[];  // [head_dim / 2] cosine, sine of this token's pair i
  const int t = blockIdx.x, half = head_dim / 2;
  // the step's fields are in place before its first kernel: read them while the projection drains
  const int pos = step.positions[t];
  if (pos < 0) {  // a token that pads the step (staging.h): nothing of it is kept
    pdl_allow_next();
    pdl_wait();  // still ordered after the kernel before: the kernel after relies on it transitively
    return;
  }
  const int64_t cache_row = layout.at(step.block_tables + int64_t(step.token_seq[t]) * layout.table_stride, 0, pos);
  if (inv_freq) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) angles[i] = rope_angle(pos, inv_freq[i]);
    __syncthreads();
  }
  pdl_allow_next();
  pdl_wait();  // qkv comes from the projection before
  __half* row = qkv + t * stride;
  __half* k = row + static_cast<int64_t>(num_heads) * head_dim;
  const __half* v = k + static_cast<int64_t>(num_kv_heads) * head_dim;
  const int heads = num_heads + num_kv_heads;
  alignas(16) __half a[V], b[V];
  if (inv_freq) {
    const int groups = half / V;
    for (int p = threadIdx.x; p < heads * groups; p += blockDim.x) {
      const int head = p / groups, i = (p % groups) * V;
      __half* x = row + static_cast<int64_t>(head) * head_dim;
      load_halves<V>(a, x + i);
      load_halves<V>(b, x + i + half);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const __half2 r = rope_rotate(__half2float(a[j]), __half2float(b[j]), angles[i + j]);
        a[j] = __low2half(r), b[j] = __high2half(r);
      }
      __half* dst = head < num_heads ? x : k_cache + cache_row + (head - num_heads) * layout.head_stride;
      store_halves<V>(dst + i, a);
      store_halves<V>(dst + i + half, b);
    }
  } else {
    for (int e = threadIdx.x * V; e < num_kv_heads * head_dim; e += blockDim.x * V) {
      load_halves<V>(a, k + e);
      store_halves<V>(k_cache + cache_row + (e / head_dim) * layout.head_stride + e % head_dim, a);
    }
  }
  for (int e = threadIdx.x * V; e < num_kv_heads * head_dim; e += blockDim.x * V) {
    load_halves<V>(a, v + e);
    store_halves<V>(v_cache + cache_row + (e / head_dim) * layout.head_stride + e % head_dim, a);
  }
}

static bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void rope_kv_write(half_t* qkv, int64_t stride, int num_heads, int num_kv_heads, int head_dim,
                   const float* inv_freq, half_t* k_cache, half_t* v_cache, const KVLayout& layout,
                   const StepArrays& step, int T, cudaStream_t stream) {
  KVINFER_CHECK_ARG(T >= 0 && head_dim % 2 == 0, "rope_kv_write: T=", T, " head_dim=", head_dim,
                    " (T >= 0, head_dim even)");
  if (T == 0) return;
  const size_t angles = inv_freq ? sizeof(float2) * static_cast<size_t>(head_dim / 2) : 0;
  // 16-byte accesses where every row, head and pair group starts on 16 bytes (8 halves)
  const bool wide = head_dim % 16 == 0 && layout.head_dim == head_dim && stride % 8 == 0 && layout.head_stride % 8 == 0 &&
                    layout.block_stride % 8 == 0 && aligned16(qkv) && aligned16(k_cache) && aligned16(v_cache);
  auto* kernel = wide ? rope_kv_write_kernel<8> : rope_kv_write_kernel<1>;
  launch_dependent(kernel, dim3(T), dim3(128), angles, stream, reinterpret_cast<__half*>(qkv), stride, num_heads,
                   num_kv_heads, head_dim, inv_freq, reinterpret_cast<__half*>(k_cache),
                   reinterpret_cast<__half*>(v_cache), layout, step);
}

}  // namespace kvinfer::cuda
