// What the two causal prefill kernels share (attention_prefill.cu on mma.sync,
// sm90/attention_prefill_ws.cu on wgmma): where a block's query tile lies, the online softmax
// of a tile of scores held in the tensor cores' accumulator layout, and the store of the output
// rows. Accumulator layout, per 8 keys (or output columns): a thread holds rows g and g + 8 of its
// warp's 16 (g = lane / 4), columns 2t and 2t + 1 (t = lane % 4); e = 0, 1 row g, e = 2, 3 row g + 8.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/ptx.cuh"
#include "types/kv_layout.h"

namespace kvinfer::cuda::prefill {

constexpr float kLog2e = 1.4426950408889634f;

// The query rows of this block: grid x = query head, y = row tile counted from the sequence's last
// (the longest rows start first, so the short ones fill the end of the launch), z = sequence.
struct Tile {
  int head, start, r0, rows;  // rows [start + r0, start + r0 + rows) of the step
  int first_pos, last_pos;    // their positions (a sequence's rows have consecutive positions)
  int kvh;                    // the KV head of the query head
  const int32_t* table;       // the sequence's block-table row

  // False where this block has no rows (its sequence has fewer row tiles than the grid).
  template <int kRows>
  __device__ bool locate(const int32_t* seq_starts, const int32_t* positions, const int32_t* block_tables,
                         const KVLayout& layout, int num_heads, int num_kv_heads) {
    head = blockIdx.x;
    const int b = blockIdx.z;
    start = seq_starts[b];
    const int n = seq_starts[b + 1] - start;
    const int tile = (n + kRows - 1) / kRows - 1 - static_cast<int>(blockIdx.y);
    if (tile < 0) return false;
    r0 = tile * kRows, rows = min(kRows, n - r0);
    first_pos = positions[start + r0];
    last_pos = first_pos + rows - 1;
    kvh = head / (num_heads / num_kv_heads);
    table = block_tables + static_cast<int64_t>(b) * layout.table_stride;
    return true;
  }
};

// The online softmax of a thread's two rows over tiles of 8 NT keys: the running maximum (scaled,
// base 2) and this thread's share of each row's sum (its quad holds the rest).
template <int NT>
struct RowSoftmax {
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

  // Scores of keys k0.. in; P (fp16, as the A operands of NT / 2 key steps of 16) out, and the
  // factors by which the output rows accumulated so far must be rescaled. With `mask`, keys past a
  // row's position (pos_lo, pos_hi) are left out.
  __device__ __forceinline__ void step(float (&s)[NT][4], int k0, int t, bool mask, int pos_lo, int pos_hi,
                                       float scale_log2, uint32_t (&p)[NT / 2][4], float& alpha_lo,
                                       float& alpha_hi) {
    if (mask) mask_past(s, k0, t, pos_lo, pos_hi);
    exps(s, scale_log2, alpha_lo, alpha_hi);
    pack(s, p);
  }

  // step() in parts, for a kernel that runs the softmax while an MMA still reads P: the scores of
  // keys past a row's position -> -inf
  __device__ __forceinline__ static void mask_past(float (&s)[NT][4], int k0, int t, int pos_lo, int pos_hi) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + nt * 8 + 2 * t + (e & 1);
        if (key > (e < 2 ? pos_lo : pos_hi)) s[nt][e] = -INFINITY;
      }
  }
  // ... the running maximum and sums updated, the scores replaced by their probabilities (fp32,
  // not yet divided by the sum) ...
  __device__ __forceinline__ void exps(float (&s)[NT][4], float scale_log2, float& alpha_lo, float& alpha_hi) {
    // the maxima as trees, log2(NT) dependent steps instead of NT (the same values: max is exact)
    float lo[NT], hi[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) lo[nt] = fmaxf(s[nt][0], s[nt][1]), hi[nt] = fmaxf(s[nt][2], s[nt][3]);
#pragma unroll
    for (int w = 1; w < NT; w *= 2)
#pragma unroll
      for (int i = 0; i + w < NT; i += 2 * w) lo[i] = fmaxf(lo[i], lo[i + w]), hi[i] = fmaxf(hi[i], hi[i + w]);
    float mx_lo = lo[0], mx_hi = hi[0];
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, x));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, x));
    }
    // finite: key 0 precedes every row, and a row's first tile is never skipped
    const float mn_lo = fmaxf(m_lo, mx_lo * scale_log2), mn_hi = fmaxf(m_hi, mx_hi * scale_log2);
    alpha_lo = fast_exp2(m_lo - mn_lo), alpha_hi = fast_exp2(m_hi - mn_hi);
    m_lo = mn_lo, m_hi = mn_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = fast_exp2(fmaf(s[nt][0], scale_log2, -mn_lo));
      s[nt][1] = fast_exp2(fmaf(s[nt][1], scale_log2, -mn_lo));
      s[nt][2] = fast_exp2(fmaf(s[nt][2], scale_log2, -mn_hi));
      s[nt][3] = fast_exp2(fmaf(s[nt][3], scale_log2, -mn_hi));
      sum_lo += s[nt][0] + s[nt][1];
      sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
  }
  // ... and those probabilities as fp16 P.
  __device__ __forceinline__ static void pack(const float (&s)[NT][4], uint32_t (&p)[NT / 2][4]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      p[nt / 2][(nt & 1) * 2] = pack_half2(s[nt][0], s[nt][1]);      // row g, keys 2t, 2t + 1 of the step's first or second 8
      p[nt / 2][(nt & 1) * 2 + 1] = pack_half2(s[nt][2], s[nt][3]);  // row g + 8, same keys
    }
  }

  // O / the row sums, as fp16, into out_lo / out_hi (row g's and g + 8's first of D columns; a row
  // past the tile's end is not stored); value(dn, e) is the accumulator of columns 8 dn.. .
  template <int D, class Value>
  __device__ __forceinline__ void store(__half* out_lo, __half* out_hi, bool store_lo, bool store_hi, int t,
                                        Value value) {
    float sl = l_lo, sh = l_hi;
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      sl += __shfl_xor_sync(0xffffffffu, sl, x);
      sh += __shfl_xor_sync(0xffffffffu, sh, x);
    }
    const float inv_lo = 1.0f / sl, inv_hi = 1.0f / sh;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      const int col = dn * 8 + 2 * t;
      if (store_lo)
        *reinterpret_cast<__half2*>(out_lo + col) = __floats2half2_rn(value(dn, 0) * inv_lo, value(dn, 1) * inv_lo);
      if (store_hi)
        *reinterpret_cast<__half2*>(out_hi + col) = __floats2half2_rn(value(dn, 2) * inv_hi, value(dn, 3) * inv_hi);
    }
  }
};

}  // namespace kvinfer::cuda::prefill
