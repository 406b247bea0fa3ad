// The Hopper kernel of prompt_mlp.h (prompt_mlp_wgmma.cu), built for sm_90a where the build
// targets compute capability 9.0 (KVINFER_WITH_SM90A).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/half.h"

namespace kvinfer::cuda {

void prompt_mlp_gate_up_wgmma(const half_t* x, int64_t ldx, const half_t* w, int I, int K, int M, half_t* out,
                              int64_t ldo, cudaStream_t stream);

}  // namespace kvinfer::cuda
