#include "ops/kv_append.h"

#include <cstring>

namespace kvinfer::cpu {

void kv_append(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
               int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
               const int32_t* seq_slots, const int32_t* seq_starts, const int32_t* slot_lengths,
               int batch) {
  for (int b = 0; b < batch; ++b) {
    int slot = seq_slots[b];
    for (int t = seq_starts[b]; t < seq_starts[b + 1]; ++t) {
      int64_t pos = slot_lengths[slot] + (t - seq_starts[b]);
      for (int h = 0; h < num_kv_heads; ++h) {
        int64_t dst = slot * layout.slot_stride + h * layout.head_stride + pos * layout.pos_stride;
        int64_t src = t * token_stride + static_cast<int64_t>(h) * head_dim;
        std::memcpy(k_cache + dst, k + src, sizeof(half_t) * head_dim);
        std::memcpy(v_cache + dst, v + src, sizeof(half_t) * head_dim);
      }
    }
  }
}

}  // namespace kvinfer::cpu
