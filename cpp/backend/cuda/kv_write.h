// K/V of a step's tokens into one layer of the KV cache on the GPU, with the rotary embedding of
// q and k on the way (one kernel): the contract of cpu::rope followed by cpu::kv_write
// (backend/cpu/cpu_ops.h), with device pointers, enqueued on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/half.h"
#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer::cuda {

// qkv: [T][stride] rows of num_heads q heads, then num_kv_heads k heads, then v heads. With
// inv_freq (RoPE models), every q head is rotated in place and every k head rotated on its way to
// the cache; without it k and v are copied. Row positions[t] of head h of token t's sequence
// (types/kv_layout.h: its block table row is block_tables[token_seq[t]]) = k[t][h] (and v).
void rope_kv_write(half_t* qkv, int64_t stride, int num_heads, int num_kv_heads, int head_dim,
                   const float* inv_freq, half_t* k_cache, half_t* v_cache, const KVLayout& layout,
                   const StepArrays& step, int T, cudaStream_t stream);

}  // namespace kvinfer::cuda
