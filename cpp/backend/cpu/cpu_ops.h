// CPU reference ops of the forward pass, written from the Hugging Face definitions. Activations
// are fp32, weights and the KV cache fp16, accumulation fp32. Row-major; `*_stride` arguments are
// element distances between consecutive rows. Ops that need to know where a token belongs read
// the step's named fields (types/step_batch.h). The CUDA ops (backend/cuda) take the same
// arguments and are checked against these.
#pragma once

#include <cstdint>

#include "core/half.h"
#include "model/model_config.h"
#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer::cpu {

// out[t][:] = table[tokens[t]][:] (+ pos_table[positions[t]][:] when pos_table is given); when
// history is given, also history[slot(t) * history_stride + positions[t]] = tokens[t], where
// slot(t) = kv_slots[token_seq[t]].
void embedding(const StepArrays& step, int T, const half_t* table, const half_t* pos_table,
               int32_t* history, int64_t history_stride, float* out, int H);

// y = x / sqrt(mean(x^2) + eps) * weight                       (LlamaRMSNorm)
void rms_norm(const float* x, const half_t* weight, float* y, int T, int H, float eps);
// In place, RMSNorm of each of `heads` heads of head_dim values in rows x[t * stride ..] (q/k-norm):
// the heads start at the row's start, one after another; weight [head_dim] is shared by them.
void head_rms_norm(float* x, int64_t stride, int T, int heads, int head_dim, const half_t* weight, float eps);
// y = (x - mean) / sqrt(var + eps) * weight + bias             (nn.LayerNorm)
void layer_norm(const float* x, const half_t* weight, const half_t* bias, float* y, int T, int H,
                float eps);

// y[t][n] (+)= sum_k x[t][k] * w[n][k] + bias[n]   (nn.Linear with fp16 weights; bias optional)
void matmul(const float* x, int64_t x_stride, const half_t* w, const half_t* bias, float* y,
            int64_t y_stride, int T, int N, int K, bool accumulate);

// Rotary embedding in place (rotate_half convention): for i < d/2, the pair (x[i], x[i + d/2]) of
// every q head and k head of row t turns by positions[t] * inv_freq[i]. q rows hold num_heads
// heads, k rows num_kv_heads heads, both with row stride `stride`.
void rope(float* q, float* k, int64_t stride, const int32_t* positions, int T, int num_heads,
          int num_kv_heads, int head_dim, const float* inv_freq);
// inv_freq[i] = 1 / theta^(2i/d), adjusted by the scaling (llama3, linear) as in HF's rope init.
void rope_inv_freq(float* inv_freq, int head_dim, float theta, const RopeScaling& scaling);

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][I + i]
void silu_mul(const float* gate_up, int64_t stride, float* out, int64_t out_stride, int T, int I);
// x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))           (gelu_new), in place
void gelu_new(float* x, int64_t n);
// out[t][i] = gelu_new(gate_up[t][i]) * gate_up[t][I + i]        (GeGLU: Gemma's gelu_pytorch_tanh)
void gelu_mul(const float* gate_up, int64_t stride, float* out, int64_t out_stride, int T, int I);
// x = cap * tanh(x / cap), in place                               (Gemma 2's soft-capping)
void softcap(float* x, int64_t n, float cap);

// K/V of T tokens into one layer's cache: row positions[t] of head h of token t's sequence (its
// block table row: step.block_tables[token_seq[t]], types/kv_layout.h) = k[t][h][:] (and v), with
// k, v rows token_stride elements apart, heads contiguous. The caller has checked every block.
void kv_write(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
              int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
              const StepArrays& step, int T);

// Causal attention of T query rows against the KV cache. Row t attends to positions
// [0, positions[t]] of its sequence (through its block table), whose K/V must already be in the cache. GQA: query head h uses
// kv head h / (num_heads / num_kv_heads).
// out[t][h*d:(h+1)*d] = softmax(softcap(q . K^T * scale)) V, softcap(s) = cap * tanh(s / cap)
// where cap > 0 (Gemma 2), else s.
void attention(const float* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
               const KVLayout& layout, const StepArrays& step, int T, int num_heads,
               int num_kv_heads, int head_dim, float scale, float* out, int64_t out_stride,
               float cap = 0.0f);

}  // namespace kvinfer::cpu
