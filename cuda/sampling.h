// Next-token selection on the GPU: the algorithm of kvinfer::cpu::sample (cpp/ops/sampling.h),
// one block per row; logits are modified in place. args, history, row_slots, history_len and
// out_tokens are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cpp/ops/sampling.h"

namespace kvinfer::cuda {
void sample(float* logits, int batch, int vocab, const SamplingArgs* args, const int32_t* history,
            int64_t history_stride, const int32_t* row_slots, const int32_t* history_len,
            int32_t* out_tokens, cudaStream_t stream);
}  // namespace kvinfer::cuda
