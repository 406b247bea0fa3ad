// Causal attention over the fp16 KV cache for any mix of prefill and decode rows: each query row
// streams its sequence's keys (through its block table) once with an online softmax (running max m,
// running sum l), so no score buffer beyond one block of keys is needed:
// o = sum_j exp(s_j - m) v_j / l with s_j = q . k_j * scale (soft-capped where cap > 0).
//
// Keys go in blocks of kKeyBlock positions (fixed by position, never by the step: a row's result
// does not depend on what else is in its step): the block's scores, one rescale of o and l where
// the block raises the maximum, then its exponentials and their V rows added in key order with o
// held in registers (simd::axpy_rows_f16).
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace kvinfer::cpu {

namespace {
constexpr int kKeyBlock = 32;
}  // namespace

void attention(const float* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
               const KVLayout& layout, const StepArrays& step, int T, int num_heads,
               int num_kv_heads, int head_dim, float scale, float* out, int64_t out_stride,
               float cap) {
  const int group = num_heads / num_kv_heads;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      const int kvh = h / group;
      const int32_t* table = step.block_tables + static_cast<int64_t>(step.token_seq[t]) * layout.table_stride;
      const float* qh = q + t * q_stride + static_cast<int64_t>(h) * head_dim;
      float* o = out + t * out_stride + static_cast<int64_t>(h) * head_dim;
      for (int d = 0; d < head_dim; ++d) o[d] = 0.0f;
      float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
      const int n = step.positions[t] + 1;
      const half_t* keys[kKeyBlock];
      const half_t* values[kKeyBlock];
      float s[kKeyBlock];
      for (int j0 = 0; j0 < n; j0 += kKeyBlock) {
        const int count = std::min(kKeyBlock, n - j0);
        for (int i = 0; i < count; ++i) {
          const int64_t at = layout.at(table, kvh, j0 + i);
          keys[i] = k_cache + at, values[i] = v_cache + at;
        }
        simd::dot_rows_f16_f32(keys, count, qh, head_dim, s);
        float block_max = -std::numeric_limits<float>::infinity();
        for (int i = 0; i < count; ++i) {
          s[i] *= scale;
          if (cap > 0) s[i] = cap * std::tanh(s[i] / cap);
          block_max = std::max(block_max, s[i]);
        }
        if (block_max > m) {
          const float correction = std::exp(m - block_max);  // 0 on the first block (m = -inf)
          l *= correction;
          for (int d = 0; d < head_dim; ++d) o[d] *= correction;
          m = block_max;
        }
        for (int i = 0; i < count; ++i) l += (s[i] = std::exp(s[i] - m));
        simd::axpy_rows_f16(s, values, count, o, head_dim);
      }
      const float inv = 1.0f / l;
      for (int d = 0; d < head_dim; ++d) o[d] *= inv;
    }
  }
}

}  // namespace kvinfer::cpu
