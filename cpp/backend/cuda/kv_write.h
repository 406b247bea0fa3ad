// K/V of a step's tokens into one layer of the KV cache on the GPU: the contract of
// cpu::kv_write (backend/cpu/cpu_ops.h) with device pointers, enqueued on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/half.h"
#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer::cuda {
void kv_write(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
              int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
              const StepArrays& step, int T, cudaStream_t stream);
}  // namespace kvinfer::cuda
