// The gate/up projection of a prompt step with silu(gate) * up in its epilogue: one pass over the
// [T][2I] projection instead of the GEMM writing it and a second kernel reading it back (on
// Hopper, sm_90a; other devices and builds keep cuBLAS + silu_mul).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/half.h"

namespace kvinfer::cuda {

// Whether this build and the current device run prompt_mlp_gate_up() for I outputs over K inputs
// (I a multiple of 128, K of 64; rows 16-byte aligned).
bool prompt_mlp_gate_up_supported(int I, int K);
// Whether the engine's prompt steps use it where supported: yes unless KVINFER_PROMPT_MLP=0 (cuBLAS
// + silu_mul, for A/Bs and as a way out).
bool prompt_mlp_enabled();

// out[m][i] = silu(g) * u for m < M, i < I, where g and u are (x[m] W[i]^T, x[m] W[I + i]^T)
// rounded to fp16 (as the GEMM's output that silu_mul reads), W = [2I][K] gate rows then up rows,
// fp32 accumulation. x: [M][ldx], out: [M][ldo]. Enqueued on `stream` (graph-capturable).
void prompt_mlp_gate_up(const half_t* x, int64_t ldx, const half_t* w, int I, int K, int M, half_t* out,
                        int64_t ldo, cudaStream_t stream);

}  // namespace kvinfer::cuda
