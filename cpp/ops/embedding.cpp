// Token (and learned position) embedding lookup: fp16 tables -> fp32 rows.
#include "ops/cpu_ops.h"
#include "ops/simd.h"

namespace kvinfer::cpu {

void embedding(const int32_t* tokens, const half_t* table, const half_t* pos_table,
               const int32_t* positions, const int32_t* token_slots, int32_t* history,
               int64_t history_stride, float* out, int T, int H) {
  for (int t = 0; t < T; ++t) {
    if (history) history[token_slots[t] * history_stride + positions[t]] = tokens[t];
    float* row = out + static_cast<int64_t>(t) * H;
    simd::f16_to_f32(table + static_cast<int64_t>(tokens[t]) * H, row, H);
    if (pos_table) {
      const half_t* p = pos_table + static_cast<int64_t>(positions[t]) * H;
      for (int i = 0; i < H; ++i) row[i] += half_to_float(p[i]);
    }
  }
}

}  // namespace kvinfer::cpu
