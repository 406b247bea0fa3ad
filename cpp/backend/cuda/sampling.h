// Next-token selection on the GPU: the algorithm of types/sampling_args.h, checked against
// cpu::sample (backend/cpu/sampling.h), one block per row; logits are modified in place. The step
// fields, history and out_tokens are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "types/sampling_args.h"
#include "types/step_batch.h"

namespace kvinfer::cuda {
// argmax (or null): [R][argmax_tiles] (value bits, index) of the largest logit of each tile of the
// row, from the skinny LM head; a greedy row without repetition penalty then folds those instead of
// scanning its logits (same token: the largest value, lowest id on ties).
void sample(float* logits, int R, int vocab, const StepArrays& step, const int32_t* history,
            int64_t history_stride, const int2* argmax, int argmax_tiles, int32_t* out_tokens,
            cudaStream_t stream);
}  // namespace kvinfer::cuda
