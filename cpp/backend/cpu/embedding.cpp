// Token (and learned position) embedding lookup: fp16 tables -> fp32 rows.
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace kvinfer::cpu {

void embedding(const StepArrays& step, int T, const half_t* table, const half_t* pos_table,
               int32_t* history, int64_t history_stride, float* out, int H) {
  for (int t = 0; t < T; ++t) {
    const int32_t token = step.tokens[t], pos = step.positions[t];
    if (history) history[step.kv_slots[step.token_seq[t]] * history_stride + pos] = token;
    float* row = out + static_cast<int64_t>(t) * H;
    simd::f16_to_f32(table + static_cast<int64_t>(token) * H, row, H);
    if (pos_table) {
      const half_t* p = pos_table + static_cast<int64_t>(pos) * H;
      for (int i = 0; i < H; ++i) row[i] += half_to_float(p[i]);
    }
  }
}

}  // namespace kvinfer::cpu
