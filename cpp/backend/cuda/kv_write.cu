// kv_write on the GPU: scatter K/V rows [token][kv_head][head_dim] into the layer-strided cache
// [slot][kv_head][pos][head_dim] at each token's position. Pure data movement: each thread moves
// VEC fp16 values (16 bytes when head_dim and the strides allow), one block row per token.
#include "backend/cuda/kv_write.h"

#include <cuda_fp16.h>

#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

template <int VEC>
struct alignas(2 * VEC) HalfVec {
  __half x[VEC];
};

template <int VEC>
static __global__ void kv_write_kernel(__half* __restrict__ k_cache, __half* __restrict__ v_cache,
                                       KVLayout layout, int num_kv_heads, int head_dim,
                                       const __half* __restrict__ k, const __half* __restrict__ v,
                                       int64_t token_stride, StepArrays step) {
  const int t = blockIdx.x;
  const int64_t slot = step.kv_slots[step.token_seq[t]], pos = step.positions[t];
  const int vecs_per_head = head_dim / VEC;
  for (int i = threadIdx.x; i < num_kv_heads * vecs_per_head; i += blockDim.x) {
    const int h = i / vecs_per_head, d = (i % vecs_per_head) * VEC;
    const int64_t src = t * token_stride + static_cast<int64_t>(h) * head_dim + d;
    const int64_t dst = slot * layout.slot_stride + h * layout.head_stride + pos * layout.pos_stride + d;
    *reinterpret_cast<HalfVec<VEC>*>(k_cache + dst) = *reinterpret_cast<const HalfVec<VEC>*>(k + src);
    *reinterpret_cast<HalfVec<VEC>*>(v_cache + dst) = *reinterpret_cast<const HalfVec<VEC>*>(v + src);
  }
}

void kv_write(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
              int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
              const StepArrays& step, int T, cudaStream_t stream) {
  KVINFER_CHECK_ARG(T >= 0, "kv_write: T=", T, " must be >= 0");
  if (T == 0) return;
  auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec8 = head_dim % 8 == 0 && token_stride % 8 == 0 && layout.pos_stride % 8 == 0 &&
                    aligned16(k_cache) && aligned16(v_cache) && aligned16(k) && aligned16(v);
  auto* kc = reinterpret_cast<__half*>(k_cache);
  auto* vc = reinterpret_cast<__half*>(v_cache);
  auto* ks = reinterpret_cast<const __half*>(k);
  auto* vs = reinterpret_cast<const __half*>(v);
  if (vec8)
    kv_write_kernel<8><<<T, 128, 0, stream>>>(kc, vc, layout, num_kv_heads, head_dim, ks, vs, token_stride, step);
  else
    kv_write_kernel<1><<<T, 128, 0, stream>>>(kc, vc, layout, num_kv_heads, head_dim, ks, vs, token_stride, step);
  KVINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace kvinfer::cuda
