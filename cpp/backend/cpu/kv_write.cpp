#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace kvinfer::cpu {

void kv_write(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
              int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
              const StepArrays& step, int T) {
  for (int t = 0; t < T; ++t) {
    const int32_t* table = step.block_tables + static_cast<int64_t>(step.token_seq[t]) * layout.table_stride;
    for (int h = 0; h < num_kv_heads; ++h) {
      const int64_t dst = layout.at(table, h, step.positions[t]);
      const int64_t src = t * token_stride + static_cast<int64_t>(h) * head_dim;
      std::memcpy(k_cache + dst, k + src, sizeof(half_t) * head_dim);
      std::memcpy(v_cache + dst, v + src, sizeof(half_t) * head_dim);
    }
  }
}

}  // namespace kvinfer::cpu
