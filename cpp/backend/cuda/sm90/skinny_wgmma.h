// The Hopper skinny GEMM (skinny_gemm_wgmma.cu), built for sm_90a where the build targets compute
// capability 9.0 (KVINFER_WITH_SM90A); skinny_gemm() dispatches to it.
#pragma once

#include <cuda_runtime_api.h>

#include "backend/cuda/skinny_gemm.h"

namespace kvinfer::cuda {

// Whether this device (compute capability 9.0) runs the kernel.
bool skinny_wgmma_runs();
// skinny_gemm()'s arguments, fp16 input rows (in.kind == SkinnyIn::half) only.
void skinny_gemm_wgmma(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                       cudaStream_t stream);

}  // namespace kvinfer::cuda
