// Next-token selection on the CPU: the reference of the algorithm in types/sampling_args.h, which
// the GPU kernel (backend/cuda/sampling.h) runs the same way. Thresholds are found by bisection
// over the order-preserving integer form of the floats, so they are exact values of the row.
#pragma once

#include <cstdint>

#include "types/sampling_args.h"
#include "types/step_batch.h"

namespace kvinfer::cpu {
// logits: [R][vocab], row r for token step.logit_rows[r] with arguments step.sampling[r] (modified
// in place by penalty and temperature). history: token ids per slot, history[slot * history_stride
// + i] for the slot's positions i <= the row's position (the repetition penalty's window).
void sample(float* logits, int R, int vocab, const StepArrays& step, const int32_t* history,
            int64_t history_stride, int32_t* out_tokens);
}  // namespace kvinfer::cpu
