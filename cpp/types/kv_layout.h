// Where a (slot, kv_head, position) of one layer's K or V block lives: element strides of the
// layer-strided cache [slot][kv_head][pos][head_dim] (runtime/kv_cache.h). A plain struct that the
// CPU ops and the CUDA kernels both read.
#pragma once

#include <cstdint>

namespace kvinfer {

struct KVLayout {
  int64_t slot_stride;  // num_kv_heads * max_context * head_dim
  int64_t head_stride;  // max_context * head_dim
  int64_t pos_stride;   // head_dim
};

}  // namespace kvinfer
