// Decode attention (attention_decode.cu): what its kernel, its share of the work (decode_share.cuh),
// its fold of chunk states (decode_merge.cuh) and its launch plan (decode_plan.cu) all use: the
// tile constants, the PTX helpers, the chunking of a row (split_plan), the kernel's arguments and
// the shared-memory tile layout.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/attention.h"
#include "backend/cuda/common.cuh"
#include "backend/cuda/ptx.cuh"

namespace kvinfer::cuda::decode {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 64;   // keys per tile
constexpr float kLog2e = 1.4426950408889634f;

// What the compute side needs of a tile that was issued into a stage.
struct TileInfo {
  int b, g, s, splits, key0, kend, flags;
};
enum : int { kFirstTile = 1, kLastTile = 2, kShareEnd = 4, kNoTile = 8, kNewRow = 16 };

// A block's control words, after its tiles in shared memory. (Static __shared__ variables would sit
// before the dynamic tiles and shift them off 32-byte alignment: a 32-byte sector of K/V then lands
// in two 32-byte slots of shared memory, and cp.async moves every sector twice from L2.)
template <int kStages>
struct Control {
  TileInfo info[kStages];  // of the tile in each stage
  int4 finish[2];          // (b, g, splits, first) of a row this block completed (b < 0: none), by step parity
};

template <int D>
__host__ __device__ constexpr int tile_ld();
template <int D, bool kTall, int kStages>
__host__ __device__ constexpr size_t tiles_bytes() {  // K/V tiles [stage][K|V][key], queries [stage][row]
  return size_t{kStages} * (2 * kRows + (kTall ? 16 : 8)) * tile_ld<D>() * sizeof(__half);
}
template <int D, bool kTall, int kStages>
__host__ __device__ constexpr size_t smem_bytes() {
  return tiles_bytes<D, kTall, kStages>() + sizeof(Control<kStages>);
}

// The chunk fold (M, L, O) <- (M, L, O) (+) (m, l, o), base-2 statistics: fold_weights, then
// fold_acc for L and for each O element. The same instructions run on register-held states and in
// finish_row on states read back from the workspace, rounding pinned by the intrinsics, so a fold
// split between blocks gives the bits of one done in registers.
__device__ __forceinline__ void fold_weights(float& M, float m, float& x, float& y) {
  const float mn = fmaxf(M, m);  // m is finite: every chunk has a key
  x = fast_exp2(M - mn);
  y = fast_exp2(m - mn);
  M = mn;
}
__device__ __forceinline__ float fold_acc(float acc, float x, float v, float y) {
  return __fmaf_rn(acc, x, __fmul_rn(v, y));
}

// c = a * b (the accumulator starts at zero).
__device__ __forceinline__ void mma16816_zero(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %10, %10, %10};\n"
      : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}

// Unsigned divisions: every inlined copy of this runs once per block before its first tile, from a
// cold instruction cache, and a signed division is half again as long.
__host__ __device__ inline void split_plan(int n, DecodeSplits plan, int& splits, int& chunk) {
  const unsigned un = static_cast<unsigned>(n);
  unsigned sp = (un + plan.min_chunk - 1) / static_cast<unsigned>(plan.min_chunk);
  sp = sp > static_cast<unsigned>(plan.max_splits) ? plan.max_splits : sp < 1 ? 1 : sp;
  if (plan.growth_keys > 0) {  // chunk length and count grow together: sp <= ceil(sqrt(n / growth_keys))
    // the largest r < 64 with r^2 growth_keys < n, by bits (integers: a float square root costs a
    // small batch's cold start more); r + 1 is the bound, or 64 >= max_splits when it is larger
    const unsigned g = static_cast<unsigned>(plan.growth_keys);
    unsigned r = 0;
#pragma unroll
    for (unsigned bit = 32; bit > 0; bit >>= 1) {
      const unsigned t = r + bit;
      r = t * t * g < un ? t : r;
    }
    const unsigned bound = r + 1 > static_cast<unsigned>(plan.min_splits) ? r + 1 : plan.min_splits;
    sp = bound < sp ? bound : sp;
  }
  const unsigned tiles = (un + 63) / 64;      // chunk = ceil(n / sp) rounded up to 64 keys
  const unsigned ct = (tiles + sp - 1) / sp;  // = ceil(ceil(n / 64) / sp) tiles
  chunk = static_cast<int>(ct * 64);
  splits = static_cast<int>((tiles + ct - 1) / ct);
}

// Workspace: one record per sequence (so a record's place does not depend on the batch). Record of
// sequence b, in floats: chunk states o [num_heads][kDecodeMaxSplits][D] and
// (m, l) [num_heads][kDecodeMaxSplits][2], then int32 row_count [num_kv_heads] (padded to
// num_heads, the record to 16 bytes). A row's counter holds, in its low 16 bits, the number of
// chunks whose states are done, and above them k + 1 once the block that held chunk 0 has put the
// fold of chunks 0..k into chunk slot k; so the block that completes the count learns where to
// start without another read. It is zero between calls: that block resets it.

struct DecodeArgs {
  const __half* q;  // [batch][q_stride], heads of KV head g at columns [g*group*D, (g+1)*group*D)
  int64_t q_stride;
  const __half* k_cache;  // [block][kv_head][block_size][D] (types/kv_layout.h)
  const __half* v_cache;
  KVLayout layout;
  const int32_t* block_tables;  // [batch][layout.table_stride]
  const int32_t* positions;  // [batch]
  int batch, num_heads, num_kv_heads, group, head_dim;
  float scale_log2;  // scale * log2(e): the softmax runs in base 2
  DecodeSplits plan;
  int row_pieces;    // 0: the persistent grid; else block i is piece i % row_pieces of row i / row_pieces
  int piece_chunks;  // chunks per piece: piece p of a row is its chunks p * piece_chunks, ...
  float* records;    // [batch][record_floats]
  int64_t record_floats;
  __half* out;       // [batch][out_stride]
  int64_t out_stride;

  __device__ const int32_t* table(int b) const { return block_tables + static_cast<int64_t>(b) * layout.table_stride; }
  __device__ float* chunk_o(int b, int qh, int s) const {  // [D]
    return records + b * record_floats + (static_cast<int64_t>(qh) * kDecodeMaxSplits + s) * head_dim;
  }
  __device__ float* chunk_ml(int b, int qh, int s) const {  // [2]
    return records + b * record_floats + static_cast<int64_t>(num_heads) * kDecodeMaxSplits * head_dim +
           (static_cast<int64_t>(qh) * kDecodeMaxSplits + s) * 2;
  }
  __device__ int32_t* row_count(int b, int g) const {
    return reinterpret_cast<int32_t*>(records + b * record_floats +
                                      static_cast<int64_t>(num_heads) * kDecodeMaxSplits * (head_dim + 2)) + g;
  }
};


// Shared-memory tile layout: rows of D halves. For D = 32, 64, 128 the 16-byte chunks of a row are
// XOR-swizzled (chunk c of row r lands at c ^ f(r)), so the cp.async writes and the 8-row ldmatrix
// reads both touch distinct banks; other D use rows padded by 16 bytes. Returns the element offset.
template <int D>
__host__ __device__ constexpr int tile_ld() { return (D == 32 || D == 64 || D == 128) ? D : D + 8; }
template <int D>
__device__ __forceinline__ int tile_at(int r, int c) {
  if constexpr (D == 64 || D == 128) return r * D + ((c ^ (r & 7)) << 3);
  else if constexpr (D == 32) return r * D + ((c ^ ((r >> 1) & 3)) << 3);
  else return r * tile_ld<D>() + (c << 3);
}

// A warp's (head, dim) -> float offset of its O^T state in its own 16 K rows, when the warps fold
// their states: the 4 lanes that hold one dim of O^T write heads 0, 2, 4, 6 (or 1, 3, 5, 7), which
// an XOR of the dim by 4 hh (D a multiple of 32) or rows of D + 4 floats put in distinct banks.
template <int D>
__device__ __forceinline__ int scratch_at(int hh, int d) {
  if constexpr (D % 32 == 0) return hh * D + (d ^ ((hh & 7) << 2));
  else return hh * (D + 4) + d;
}

// Dims d0 .. d0 + kE - 1 of head hh from a warp's scratch: the XOR keeps groups of 4 dims together,
// so those are 16-byte loads where kE allows.
template <int D, int kE>
__device__ __forceinline__ void load_scratch(const float* wo, int hh, int d0, float (&v)[kE]) {
  if constexpr (D % 32 == 0 && kE % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kE; i += 4) {
      const float4 x = *reinterpret_cast<const float4*>(wo + scratch_at<D>(hh, d0 + i));
      v[i] = x.x, v[i + 1] = x.y, v[i + 2] = x.z, v[i + 3] = x.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kE; ++i) v[i] = wo[scratch_at<D>(hh, d0 + i)];
  }
}

// A 64-row tile is copied by the block in 16-byte chunks: chunk e = threadIdx.x + i * kThreads is
// row e / (D / 8), column chunk e % (D / 8), constant math with i unrolled.
template <int D>
constexpr int kTileCopies = kRows * (D / 8) / kThreads;  // chunks per thread

// The KV block of each row this thread copies of the tile at rows j0 .. j0 + 63 (0 past `rows`),
// from the sequence's block table row: looked up a tile ahead, so the copies never wait for it.
template <int D>
__device__ __forceinline__ void tile_blocks(const KVLayout& layout, const int32_t* table, int j0, int rows,
                                            int (&blocks)[kTileCopies<D>]) {
#pragma unroll
  for (int i = 0; i < kTileCopies<D>; ++i) {
    const int r = static_cast<int>((threadIdx.x + i * kThreads) / (D / 8));
    blocks[i] = r < rows ? table[(j0 + r) >> layout.block_shift] : 0;
  }
}

// One 64-row tile into shared memory: rows j0 .. j0 + 63 of KV head g from the K or V pool `pool`,
// in the blocks tile_blocks() found. Without kFull, rows >= `rows` are zero-filled.
template <int D, bool kFull>
__device__ __forceinline__ void copy_tile(__half* dst, const __half* pool, const KVLayout& layout,
                                          const int (&blocks)[kTileCopies<D>], int g, int j0, int rows,
                                          uint64_t policy) {
  constexpr int kChunks = D / 8;
  static_assert(kRows * kChunks % kThreads == 0, "tile copies split evenly over the threads");
  const int mask = (1 << layout.block_shift) - 1;
#pragma unroll
  for (int i = 0; i < kTileCopies<D>; ++i) {
    const unsigned e = threadIdx.x + i * kThreads, r = e / kChunks, c = e % kChunks;
    const bool in = kFull || static_cast<int>(r) < rows;
    const __half* src = pool + blocks[i] * layout.block_stride + g * layout.head_stride +
                        static_cast<int64_t>((j0 + static_cast<int>(r)) & mask) * D + c * 8;
    cp_async16_once(dst + tile_at<D>(r, c), in ? src : pool, in ? 16 : 0, policy);
  }
}

}  // namespace kvinfer::cuda::decode
