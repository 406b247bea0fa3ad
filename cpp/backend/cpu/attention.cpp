// Causal attention over the fp16 KV cache for any mix of prefill and decode rows: each query row
// streams its sequence's keys (through its block table) once with an online softmax (running max m,
// running sum l), so no score buffer is needed: o = sum_j exp(s_j - m) v_j / l with s_j = q . k_j * scale.
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace kvinfer::cpu {

void attention(const float* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
               const KVLayout& layout, const StepArrays& step, int T, int num_heads,
               int num_kv_heads, int head_dim, float scale, float* out, int64_t out_stride) {
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
      for (int j = 0; j < n; ++j) {
        const int64_t at = layout.at(table, kvh, j);
        const float s = simd::dot_f16_f32(k_cache + at, qh, head_dim) * scale;
        if (s > m) {
          const float correction = std::exp(m - s);  // 0 on the first key (m = -inf)
          l = l * correction + 1.0f;
          simd::scale_axpy_f16(correction, 1.0f, v_cache + at, o, head_dim);
          m = s;
        } else {
          const float p = std::exp(s - m);
          l += p;
          simd::scale_axpy_f16(1.0f, p, v_cache + at, o, head_dim);
        }
      }
      const float inv = 1.0f / l;
      for (int d = 0; d < head_dim; ++d) o[d] *= inv;
    }
  }
}

}  // namespace kvinfer::cpu
