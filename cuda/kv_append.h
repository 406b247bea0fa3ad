// CUDA kv_append: same contract as kvinfer::cpu::kv_append (cpp/ops/kv_append.h), device pointers
// (seq_slots, seq_starts and slot_lengths too), enqueued on `stream`.
// max_seq_tokens bounds seq_starts[b+1] - seq_starts[b] and sizes the grid.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cpp/half.h"
#include "cpp/kv_cache.h"

namespace kvinfer::cuda {
void kv_append(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
               int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
               const int32_t* seq_slots, const int32_t* seq_starts, const int32_t* slot_lengths,
               int batch, int max_seq_tokens, cudaStream_t stream);
}  // namespace kvinfer::cuda
