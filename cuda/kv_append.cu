// kv_append on the GPU: scatter K/V rows [token][kv_head][head_dim] into the layer-strided cache
// [slot][kv_head][pos][head_dim] at each slot's device-side length. Pure data movement: each
// thread moves VEC fp16 values (16 bytes when head_dim and the strides allow), grid.y = sequence.
#include "cuda/kv_append.h"

#include <cuda_fp16.h>

#include "cpp/cuda_check.h"

namespace kvinfer::cuda {

template <int VEC>
struct alignas(2 * VEC) HalfVec {
  __half x[VEC];
};

template <int VEC>
static __global__ void kv_append_kernel(__half* __restrict__ k_cache, __half* __restrict__ v_cache,
                                        KVLayout layout, int num_kv_heads, int head_dim,
                                        const __half* __restrict__ k, const __half* __restrict__ v,
                                        int64_t token_stride, const int32_t* __restrict__ seq_slots,
                                        const int32_t* __restrict__ seq_starts,
                                        const int32_t* __restrict__ slot_lengths) {
  const int b = blockIdx.y;
  const int start = seq_starts[b];
  const int tokens = seq_starts[b + 1] - start;
  const int slot = seq_slots[b];
  const int64_t first_pos = slot_lengths[slot];
  const int vecs_per_head = head_dim / VEC;
  const int64_t total = static_cast<int64_t>(tokens) * num_kv_heads * vecs_per_head;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(i % vecs_per_head) * VEC;
    const int h = static_cast<int>((i / vecs_per_head) % num_kv_heads);
    const int t = static_cast<int>(i / (static_cast<int64_t>(vecs_per_head) * num_kv_heads));
    const int64_t src = (start + t) * token_stride + static_cast<int64_t>(h) * head_dim + d;
    const int64_t dst = slot * layout.slot_stride + h * layout.head_stride +
                        (first_pos + t) * layout.pos_stride + d;
    *reinterpret_cast<HalfVec<VEC>*>(k_cache + dst) = *reinterpret_cast<const HalfVec<VEC>*>(k + src);
    *reinterpret_cast<HalfVec<VEC>*>(v_cache + dst) = *reinterpret_cast<const HalfVec<VEC>*>(v + src);
  }
}

template <int VEC>
static void launch_kv_append(half_t* k_cache, half_t* v_cache, const KVLayout& layout,
                             int num_kv_heads, int head_dim, const half_t* k, const half_t* v,
                             int64_t token_stride, const int32_t* seq_slots,
                             const int32_t* seq_starts, const int32_t* slot_lengths, int batch,
                             int max_seq_tokens, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t work = static_cast<int64_t>(max_seq_tokens) * num_kv_heads * (head_dim / VEC);
  const int blocks = static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 4096));
  kv_append_kernel<VEC><<<dim3(blocks, batch), kThreads, 0, stream>>>(
      reinterpret_cast<__half*>(k_cache), reinterpret_cast<__half*>(v_cache), layout, num_kv_heads,
      head_dim, reinterpret_cast<const __half*>(k), reinterpret_cast<const __half*>(v),
      token_stride, seq_slots, seq_starts, slot_lengths);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void kv_append(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
               int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
               const int32_t* seq_slots, const int32_t* seq_starts, const int32_t* slot_lengths,
               int batch, int max_seq_tokens, cudaStream_t stream) {
  KVINFER_CHECK_ARG(batch >= 0 && max_seq_tokens >= 0, "kv_append: batch=", batch,
                    " max_seq_tokens=", max_seq_tokens, " must be >= 0");
  if (batch == 0 || max_seq_tokens == 0) return;
  auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec8 = head_dim % 8 == 0 && token_stride % 8 == 0 && layout.pos_stride % 8 == 0 &&
                    aligned16(k_cache) && aligned16(v_cache) && aligned16(k) && aligned16(v);
  if (vec8) {
    launch_kv_append<8>(k_cache, v_cache, layout, num_kv_heads, head_dim, k, v, token_stride,
                        seq_slots, seq_starts, slot_lengths, batch, max_seq_tokens, stream);
  } else {
    launch_kv_append<1>(k_cache, v_cache, layout, num_kv_heads, head_dim, k, v, token_stride,
                        seq_slots, seq_starts, slot_lengths, batch, max_seq_tokens, stream);
  }
}

}  // namespace kvinfer::cuda
