// The Hopper prefill kernel (attention_prefill_ws.cu), built for sm_90a where the build targets
// compute capability 9.0 (KVINFER_WITH_SM90A); attention_prefill() dispatches to it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "backend/cuda/attention.h"
#include "core/half.h"
#include "types/kv_layout.h"

namespace kvinfer::cuda {

// Whether this device (compute capability 9.0) runs the kernel for head_dim (64 or 128).
bool prefill_ws_runs(int head_dim);

// The warp-specialised kernel (attention_prefill_ws.cu): whether it takes this head_dim and cache
// layout, and attention_prefill()'s arguments where it does; `kernel`: ws, ws_overlap or (head_dim
// 64) ws_overlap_192, the same bits each.
bool prefill_ws_supports(int head_dim, const KVLayout& layout);
// Query rows a block of this warp-specialised kernel takes (its grid's second dimension divides by it).
int prefill_ws_tile_rows(PrefillKernel kernel);
void attention_prefill_ws(const half_t* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
                          const KVLayout& layout, const int32_t* block_tables, const int32_t* seq_starts,
                          const int32_t* positions, int batch, int max_seq_rows, int num_heads, int num_kv_heads,
                          int head_dim, float scale, half_t* out, int64_t out_stride, cudaStream_t stream,
                          PrefillKernel kernel);

}  // namespace kvinfer::cuda
