// Decode attention: which (sequence, KV head, chunk) items a block of the persistent grid takes, or
// which piece of a row a block of the row-pieces grid takes, found from the step's positions on the
// device, so the work split follows each step's lengths (a captured graph's too).
#pragma once

#include "backend/cuda/decode_common.cuh"

namespace kvinfer::cuda::decode {

// A position in a block's share of consecutive items: which item, which of its tiles. Every thread holds the
// same cursor.
struct Cursor {
  int left = 0;  // items left in the share, this one included
  int b, g, s;
  int n, splits, chunk, tile, tiles;
  const int32_t* table;  // the sequence's row of block tables

  __device__ void enter_sequence(const DecodeArgs& a) {
    n = a.positions[b] + 1;
    table = a.table(b);
    split_plan(n, a.plan, splits, chunk);
  }
  __device__ void enter_item() {
    tile = 0;
    tiles = (end() - begin() + kRows - 1) / kRows;
  }
  __device__ int begin() const { return s * chunk; }
  __device__ int end() const { return min(n, s * chunk + chunk); }
  __device__ void advance(const DecodeArgs& a) {
    if (++tile < tiles) return;
    if (--left == 0) return;
    if (++s == splits) {
      s = 0;
      if (++g == a.num_kv_heads) {
        g = 0;
        ++b;
        enter_sequence(a);
      }
    }
    enter_item();
  }
};

__device__ __forceinline__ int warp_scan_incl(int v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

// v[i] for a warp-uniform i, as selects: the array stays in registers in a loop that is not unrolled.
template <int N>
__device__ __forceinline__ int pick(const int (&v)[N], int i) {
  int r = v[0];
#pragma unroll
  for (int j = 1; j < N; ++j)
    if (i == j) r = v[j];
  return r;
}

// The cursor at the start of block i's share (see below for how the items are shared out), found by
// the warp. The positions of the first 128 sequences are read once and together, so a
// batch of up to 128 pays a single global round trip before its first tile is issued. The loops are
// kept rolled: this runs once per block, from a cold instruction cache.
__device__ inline Cursor start_share(const DecodeArgs& a, int lane) {
  if (a.row_pieces > 0) {  // the share is one piece of a row
    const unsigned row = blockIdx.x / static_cast<unsigned>(a.row_pieces);
    const int piece = static_cast<int>(blockIdx.x - row * a.row_pieces);
    Cursor c;
    c.b = static_cast<int>(row / static_cast<unsigned>(a.num_kv_heads));
    c.g = static_cast<int>(row) - c.b * a.num_kv_heads;
    c.enter_sequence(a);
    c.s = piece * a.piece_chunks;
    // none past the row's last chunk; the last piece takes every chunk left (a row longer than the
    // hint said: slower, never wrong)
    c.left = max(0, piece == a.row_pieces - 1 ? c.splits - c.s : min(a.piece_chunks, c.splits - c.s));
    if (c.left > 0) c.enter_item();
    return c;
  }
  constexpr int kWindows = 4;  // of 32 sequences, read up front
  int pos_w[kWindows];
#pragma unroll
  for (int w = 0; w < kWindows; ++w) pos_w[w] = 32 * w + lane < a.batch ? a.positions[32 * w + lane] : 0;
  auto pos_at = [&](int b0) {  // position of sequence b0 + lane (b0: a multiple of 32); -1 past the batch
    if (b0 + lane >= a.batch) return -1;
    return b0 < 32 * kWindows ? pick(pos_w, b0 >> 5) : a.positions[b0 + lane];
  };
  int total = 0, splits0 = 0, chunk0 = 0;  // the chunking of sequence lane, kept for the scan below
#pragma unroll 1
  for (int b0 = 0; b0 < a.batch; b0 += 32) {
    const int p = pos_at(b0);
    int splits = 0, chunk = 0;
    if (p >= 0) split_plan(p + 1, a.plan, splits, chunk);
    if (b0 == 0) splits0 = splits, chunk0 = chunk;
    int c = splits * a.num_kv_heads;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    total += c;
  }
  // Blocks 0..r-1 take q + 1 items, the rest q. With fewer items than blocks, the low block indices get
  // them: the first wave of blocks lands on distinct SMs, so a small batch spreads over the SMs instead
  // of pairing up on some (with evenly spaced shares, blocks i and i + #SMs often shared one).
  const int q = static_cast<int>(static_cast<unsigned>(total) / gridDim.x);
  const int i = static_cast<int>(blockIdx.x), r = total - q * static_cast<int>(gridDim.x);
  const int first = i * q + min(i, r);
  const int count = q + (i < r ? 1 : 0);
  Cursor c;
  c.left = count;
  if (count == 0) return c;
  int before = 0;
#pragma unroll 1
  for (int b0 = 0;; b0 += 32) {  // terminates: first < total
    const int p = pos_at(b0);
    int splits = splits0, chunk = chunk0;
    if (b0 > 0 && p >= 0) split_plan(p + 1, a.plan, splits, chunk);
    if (b0 > 0 && p < 0) splits = 0;
    const int cnt = splits * a.num_kv_heads;
    const int incl = warp_scan_incl(cnt, lane);
    const bool hit = before + incl - cnt <= first && first < before + incl;
    const unsigned mask = __ballot_sync(0xffffffffu, hit);
    if (mask != 0) {
      const int src = __ffs(mask) - 1;
      c.b = b0 + src;
      const int rest = first - before - __shfl_sync(0xffffffffu, incl - cnt, src);
      c.n = __shfl_sync(0xffffffffu, p, src) + 1;
      c.table = a.table(c.b);
      c.splits = __shfl_sync(0xffffffffu, splits, src);
      c.chunk = __shfl_sync(0xffffffffu, chunk, src);
      // g = rest / splits in float (exact here: the quotient is below num_kv_heads and rest + 0.5 keeps
      // it half a split away from an integer), corrected once either way to be safe
      int g = __float2int_rz(__fdividef(static_cast<float>(rest) + 0.5f, static_cast<float>(c.splits)));
      int sidx = rest - g * c.splits;
      if (sidx < 0) --g, sidx += c.splits;
      if (sidx >= c.splits) ++g, sidx -= c.splits;
      c.g = g;
      c.s = sidx;
      c.enter_item();
      return c;
    }
    before += __shfl_sync(0xffffffffu, incl, 31);
  }
}

}  // namespace kvinfer::cuda::decode
