// Where a (sequence, kv_head, position) of one layer's K or V lives in the paged KV cache
// (runtime/kv_cache.h): a layer's K (and its V) is a pool of blocks [block][kv_head][block_size]
// [head_dim], and a sequence's block table row lists its blocks in position order, so position p
// is row p % block_size of block table[p / block_size]. A plain struct that the CPU ops and the
// CUDA kernels both read.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KVINFER_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KVINFER_HOST_DEVICE inline
#endif

namespace kvinfer {

struct KVLayout {
  int64_t block_stride;  // num_kv_heads * block_size * head_dim: one block of one layer's K (or V)
  int64_t head_stride;   // block_size * head_dim: a head's rows inside a block
  int32_t head_dim;      // elements of a row (one position of one head)
  int32_t block_shift;   // log2(block_size); block sizes are powers of two
  int32_t table_stride;  // entries of one sequence's row of the step's block tables
  int32_t num_blocks = 0;  // blocks of one layer's pool (the extent TMA copies are bounded by; 0: unknown)

  KVINFER_HOST_DEVICE int block_size() const { return 1 << block_shift; }
  // Row `pos` of head `head` of the sequence whose block table row is `table` (element offset).
  KVINFER_HOST_DEVICE int64_t at(const int32_t* table, int head, int pos) const {
    return table[pos >> block_shift] * block_stride + head * head_stride +
           static_cast<int64_t>(pos & ((1 << block_shift) - 1)) * head_dim;
  }
};

}  // namespace kvinfer
