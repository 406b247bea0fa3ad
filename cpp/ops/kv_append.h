// kv_append: writes the new K/V of a batch of sequences into one layer of the KV cache.
//
//   k_cache[slot][h][pos][d] = k[t][h][d]   for each sequence b, token t in [seq_starts[b], seq_starts[b+1]),
//   where slot = seq_slots[b] and pos = slot_lengths[slot] + (t - seq_starts[b]); same for v.
//
// k, v: [total_tokens][num_kv_heads][head_dim], token_stride elements apart, heads contiguous.
// Cache blocks use KVLayout strides ([slot][kv_head][pos][head_dim]). The caller has checked
// capacity (KVCache::begin_append); positions come from the cache's own lengths.
// cpu::kv_append takes host pointers; cuda::kv_append device pointers and a stream.
#pragma once

#include <cstdint>

#include "half.h"
#include "kv_cache.h"

namespace kvinfer::cpu {
void kv_append(half_t* k_cache, half_t* v_cache, const KVLayout& layout, int num_kv_heads,
               int head_dim, const half_t* k, const half_t* v, int64_t token_stride,
               const int32_t* seq_slots, const int32_t* seq_starts, const int32_t* slot_lengths,
               int batch);
}  // namespace kvinfer::cpu
