// Small CUDA ops of the forward pass; each mirrors a CPU reference in cpp/ops/cpu_ops.h with
// device pointers, fp16 activations where the CPU uses fp32 (the residual stream stays fp32), and
// a stream. Element strides as in the CPU ops.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/half.h"
#include "model/model_config.h"
#include "types/step_batch.h"

namespace kvinfer::cuda {

// cpu::embedding on the GPU. First the step's tokens are resolved: where prev_sample_row[t] >= 0,
// tokens[t] = sampled[prev_sample_row[t]] (the previous step's ids, still on the device). With ss,
// also ss[t][g] = sum of out[t][16 g .. 16 g + 15]^2 (H a multiple of 16), what the skinny GEMMs'
// RMSNorm reads (skinny_gemm.h).
void embedding(const StepArrays& step, int T, const int32_t* sampled, const half_t* table,
               const half_t* pos_table, int32_t* history, int64_t history_stride, float* out, int H,
               float* ss, cudaStream_t stream);

// y[i] = norm(x[rows ? rows[i] : i]) as fp16; RMSNorm when bias is unused (layer_norm=false).
void rms_norm(const float* x, const int32_t* rows, const half_t* weight, half_t* y, int n_rows,
              int H, float eps, cudaStream_t stream);
void layer_norm(const float* x, const int32_t* rows, const half_t* weight, const half_t* bias,
                half_t* y, int n_rows, int H, float eps, cudaStream_t stream);

// In place, q/k-norm: each of the q_heads heads at the start of row qkv[t * stride ..] and each of
// the k_heads after them, head_dim fp16 values, = RMSNorm over the head (fp32 statistics) times
// q_weight / k_weight ([head_dim], shared by the heads): cpu::head_rms_norm on fp16 rows.
void head_rms_norm(half_t* qkv, int64_t stride, int T, int q_heads, int k_heads, int head_dim,
                   const half_t* q_weight, const half_t* k_weight, float eps, cudaStream_t stream);

// x_out[r] = x[rows[r]] ([R][H] fp32 rows) and attn_out[r] = attn[rows[r]] ([R][A] fp16 rows,
// contiguous), r < R: the rows a step keeps (DecoderOps::keep_logit_rows), into other buffers.
void gather_rows(const float* x, const half_t* attn, int A, const int32_t* rows, int R, int H, float* x_out,
                 half_t* attn_out, cudaStream_t stream);

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][I + i]
void silu_mul(const half_t* gate_up, int64_t stride, half_t* out, int64_t out_stride, int T, int I,
              cudaStream_t stream);
// x = gelu_new(x), in place, n elements
void gelu_new(half_t* x, int64_t n, cudaStream_t stream);
// y[t][n] += bias[n]
void bias_add(half_t* y, int64_t stride, const half_t* bias, int T, int N, cudaStream_t stream);
void bias_add(float* y, int64_t stride, const half_t* bias, int T, int N, cudaStream_t stream);

}  // namespace kvinfer::cuda
