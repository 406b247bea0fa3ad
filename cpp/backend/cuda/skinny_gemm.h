// GEMMs of few rows (decode steps): y[m] = epilogue(in(x)[m] W^T) for m < M <= kSkinnyMaxRows, fp16
// weights W [N][K] streamed once, fp32 accumulation on tensor cores. The reduction order over K
// depends on (N, K) only (skinny_plan), never on M, so a row's result is the same bits whatever
// else shares the step. What a decode step does between two weight reads is fused in:
//   input:    fp16 rows | RMSNorm of fp32 rows (from producers' sums of squares) | silu(gate) * up | gelu
//   epilogue: fp16 rows (+ bias) | residual add into fp32 rows (+ bias, and their sums of squares
//             for the next norm) | fp32 logits and per-tile argmax (greedy sampling reads those) |
//             silu(gate) * up of paired rows (SwiGLU's gate/up projection) | RoPE of paired rows
//             and the K/V write into the cache (the qkv projection); the two paired epilogues on
//             the Hopper kernel only, the same bits as the projection followed by the op alone
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/workspace.h"
#include "core/half.h"
#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer::cuda {

enum class SkinnyIn { half, rms_norm, silu_mul, gelu };
enum class SkinnyOut { half, residual, logits, silu_mul, rope_kv };

struct SkinnyInput {
  SkinnyIn kind = SkinnyIn::half;
  const void* x = nullptr;     // half [M][ld] (half, gelu; silu_mul: gate rows, up at + up_offset) or float [*][ld] (rms_norm)
  int64_t ld = 0;
  int64_t up_offset = 0;       // silu_mul: elements from a gate value to its up value
  const int32_t* rows = nullptr;  // rms_norm: the x row of output row m (null: m)
  bool norm_in_kernel = true;     // rms_norm: the wgmma kernel may normalise in its consumers
                                  // (false: the normed-rows kernel runs first; the same bits)
  const float* ss = nullptr;      // rms_norm: [x row][K / 16] sums of squares of 16-column groups
  const half_t* norm_weight = nullptr;
  float eps = 0.0f;
};

// SkinnyOut::rope_kv: W's rows are num_heads q heads, then num_kv_heads k heads, then v heads of
// head_dim rows. Each q head's outputs are rotated (RoPE, where inv_freq is given) into y; each k
// head's are rotated and each v head's copied into row positions[m] of the layer's cache, in the
// block table row of sequence token_seq[m] (types/kv_layout.h); k and v are not written to y.
// The contract of the projection followed by rope_kv_write (kv_write.h).
struct SkinnyRopeKV {
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  const float* inv_freq = nullptr;  // [head_dim / 2] or null: no rotation
  half_t* k_cache = nullptr;
  half_t* v_cache = nullptr;
  KVLayout layout{};
  StepArrays step{};  // positions, token_seq and block_tables of the step's tokens
};

struct SkinnyOutput {
  SkinnyOut kind = SkinnyOut::half;
  // half [M][ld] | float [M][ld] added to (residual) | float [M][ld] (logits) | half [M][ld] of
  // N / 2 values (silu_mul: y[m][j] = silu(out[j]) * out[j + N / 2]) | half [M][ld], q heads (rope_kv)
  void* y = nullptr;
  int64_t ld = 0;
  const half_t* bias = nullptr;  // [N] or null
  float* ss = nullptr;           // residual: [M][N / 16] sums of squares of the new rows (or null)
  int2* argmax = nullptr;        // logits: [M][tiles] (value bits, index) of each tile's largest
  SkinnyRopeKV rope{};           // rope_kv
};

struct SkinnyWorkspace {
  float* partials = nullptr;   // skinny_partial_floats(N, K)
  int32_t* counters = nullptr; // skinny_counters(N, K), zero before the first call (calls leave them zero)
  half_t* normed = nullptr;    // [M][K]: RMSNorm input of more than kSkinnyNormInBlockRows rows, normed first
};

// Whether the Hopper kernel runs a paired epilogue (silu_mul, rope_kv) here: skinny_wgmma_available()
// and pairs a multiple of 32 rows apart (N / 2 for silu_mul, head_dim / 2 for rope_kv); not where
// KVINFER_SKINNY forces another kernel or KVINFER_WGMMA_FUSE=0 (end-to-end measurements).
bool skinny_paired_supported(int N, const SkinnyOutput& out);
// Whether the fused path can run this shape (K a multiple of 8, N and the norm's K multiples of 16
// where sums of squares are read or written).
bool skinny_supported(int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out);
// Which kernel computes it. narrow: a block per 16-row weight tile, inputs read through L1
// (skinny_gemm.cu); wide: a block per 128 weight rows, inputs staged in shared memory once
// (skinny_gemm_wide.cu) -- the same bits either way (tests/cpp/test_skinny_gemm.cpp), only the
// speed differs; wgmma: Hopper only (skinny_wgmma_available()), weights streamed by TMA into
// warpgroup MMAs (sm90/skinny_gemm_wgmma.cu), fp16 or RMSNorm input, its own bits (another order
// over K). automatic: wgmma wherever it runs the input (chosen by device and input, never by M, so
// batch invariance holds), else wide for more than 32 rows of at least kSkinnyWideMinVocab outputs
// (an LM head), else narrow; KVINFER_SKINNY=narrow|wide|wgmma in the environment overrides it.
enum class SkinnyKernel { automatic, narrow, wide, wgmma };
// Whether the wgmma kernel runs here: built for sm_90a and a compute capability 9.0 device.
bool skinny_wgmma_available();
void skinny_gemm(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                 const SkinnyWorkspace& ws, cudaStream_t stream, SkinnyKernel which = SkinnyKernel::automatic);

}  // namespace kvinfer::cuda
