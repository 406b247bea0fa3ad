// The Hopper skinny GEMM (skinny_gemm_wgmma.cu), built for sm_90a where the build targets compute
// capability 9.0 (KVINFER_WITH_SM90A); skinny_gemm() dispatches to it.
#pragma once

#include <cuda_runtime_api.h>

#include "backend/cuda/skinny_gemm.h"

namespace kvinfer::cuda {

// Whether this device (compute capability 9.0) runs the kernel.
bool skinny_wgmma_runs();
// Whether the kernel's fusions are on (KVINFER_WGMMA_FUSE=0 turns them off for a measurement).
bool skinny_wgmma_fusions();
// Whether the kernel normalises this RMSNorm input itself (whole fp32 rows, no row selection, into
// fp16, silu_mul or rope_kv outputs); other RMSNorm inputs are normed into fp16 rows first.
bool skinny_wgmma_fuses_norm(const SkinnyInput& in, const SkinnyOutput& out);
// skinny_gemm()'s arguments: fp16 input rows, or an RMSNorm input skinny_wgmma_fuses_norm() takes.
void skinny_gemm_wgmma(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                       cudaStream_t stream);

}  // namespace kvinfer::cuda
