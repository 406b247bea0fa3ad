// Split-K decode attention on tensor cores, one persistent grid.
//
// out[b, h] = softmax(q[b, h] . K[slot_b, g(h), :n_b]^T * scale) V[slot_b, g(h), :n_b], n_b = position + 1.
//
// Work items: (sequence b, KV head g, chunk s). Chunking (DecodeSplits): splits = min(max_splits,
// ceil(n / min_chunk), max(min_splits, ceil(sqrt(n / growth_keys)))), chunk = ceil(n / splits)
// rounded up to 64; both depend only on n and the plan (one per model). A chunk's state (m, l, o)
// is computed the same way whichever block takes it, and a row's output is always the fold of its
// chunk states in chunk order, so a sequence's result is the same in any batch.
//
// The grid is as many blocks as fit on the device at once; block i takes the i-th contiguous share
// of the item list (ordered b, g, s) and streams 64-key K/V tiles of its items through a 3-stage (4
// when no block has more than one item, 2 when there is a row per SM) cp.async pipeline that runs
// across item boundaries. (Where the caller's lengths hint shows enough rows, or no more chunks
// than SMs, block i takes a piece of a row instead, down to a single chunk: the same code, the
// same bits.) A block that holds chunk 0 of a row folds the row's chunks in registers and writes
// the output itself, so at large batch almost nothing but the output leaves the kernel. Rows
// shared between blocks go through chunk slots in the workspace: each block adds the number of
// chunks it finished to the row's counter, and the block that completes the count folds the row
// with the same instructions (one kernel, no second launch).
//
// Per tile, warp w takes keys 16 w .. 16 w + 15: S^T = K Q^T with mma.sync m16n8k16 (rows: the
// warp's 16 keys, columns: the KV head's query heads, 8 per n-tile: a GQA group of up to 8 is one
// n-tile), an online softmax per head column over the warp's keys, P^T transposed into B-fragments
// in registers (movmatrix), then O^T = O^T * c + V^T P^T for every 16-dim m-tile. At an item's end
// the four warp states are folded in warp order into the chunk's state, through the K/V rows that
// each warp read itself. (When every warp computed all of S and a quarter of O, a lone block took
// about 1.3 us per tile, K was read from shared memory four times, and small batches waited on it.)
// Tiles are XOR-swizzled in shared memory: padding rows instead cost 3% of the streaming rate (bank
// conflicts of the cp.async writes). The code is kept small: at small batches most of it runs once
// per block from a cold instruction cache (the kernels before this one evict it), and each KB of it
// is paid for on the critical path.
#include "backend/cuda/attention.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>

#include "core/cuda_check.h"
#include "core/errors.h"
#include "backend/cuda/common.cuh"

namespace kvinfer::cuda {

namespace {
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

// 16-byte global -> shared copy; src_bytes 0 writes zeros (rows past the chunk end).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}

// The same for data read once per call (K/V tiles), with an L2 policy from evict_first_policy(): its
// lines are the first to go when L2 needs room, so streaming the cache does not push out what is
// reused (the chunk states of this kernel, the weights and activations of the next ones).
__device__ __forceinline__ void cp_async16_once(void* smem, const void* gmem, int src_bytes, uint64_t policy) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::128B [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(gmem),
               "r"(src_bytes), "l"(policy));
}
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const __half* p) {  // lanes 0-15 address
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

// The 8x8 fp16 matrix held by the warp in fragment layout (lane: row lane / 4, columns 2 (lane % 4)
// + 0, 1), transposed.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// 2^x in one MUFU instruction (2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
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
    // the largest r < 64 with r^2 growth_keys < n, by bits (integers: a float square root was 0.3 us
    // of a small batch's cold start); r + 1 is the bound, or 64 >= max_splits when it is larger
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
  const __half* k_cache;  // [slot][kv_head][pos][D] (layout strides)
  const __half* v_cache;
  KVLayout layout;
  const int32_t* seq_slots;  // [batch]
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

// A position in a block's share of consecutive items: which item, which of its tiles. Every thread holds the
// same cursor.
struct Cursor {
  int left = 0;  // items left in the share, this one included
  int b, g, s;
  int n, slot, splits, chunk, tile, tiles;

  __device__ void enter_sequence(const DecodeArgs& a) {  // position and slot: two loads in flight at once
    const int pos = a.positions[b];
    slot = a.seq_slots[b];
    n = pos + 1;
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
// the warp. The positions and slots of the first 128 sequences are read once and together, so a
// batch of up to 128 pays a single global round trip before its first tile is issued. The loops are
// kept rolled: this runs once per block, from a cold instruction cache.
__device__ Cursor start_share(const DecodeArgs& a, int lane) {
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
  int pos_w[kWindows], slot_w[kWindows];
#pragma unroll
  for (int w = 0; w < kWindows; ++w) {
    const bool in = 32 * w + lane < a.batch;
    pos_w[w] = in ? a.positions[32 * w + lane] : 0;
    slot_w[w] = in ? a.seq_slots[32 * w + lane] : 0;
  }
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
      const int slot = b0 < 32 * kWindows ? pick(slot_w, b0 >> 5) : p < 0 ? 0 : a.seq_slots[b0 + lane];
      c.n = __shfl_sync(0xffffffffu, p, src) + 1;
      c.slot = __shfl_sync(0xffffffffu, slot, src);
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

// One 64-row tile (rows of D halves, `pos_stride` apart) into shared memory, by the block. 16-byte
// chunk e = threadIdx.x + i * kThreads is row e / (D / 8), column chunk e % (D / 8): constant math
// with i unrolled. Without kFull, rows >= `rows` are zero-filled.
template <int D, bool kFull>
__device__ __forceinline__ void copy_tile(__half* dst, const __half* src, int pos_stride, int rows, uint64_t policy) {
  constexpr int kChunks = D / 8;
  static_assert(kRows * kChunks % kThreads == 0, "tile copies split evenly over the threads");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const unsigned e = threadIdx.x + i * kThreads, r = e / kChunks, c = e % kChunks;
    const bool in = kFull || static_cast<int>(r) < rows;
    cp_async16_once(dst + tile_at<D>(r, c), src + (in ? r * pos_stride + c * 8 : 0), in ? 16 : 0, policy);
  }
}

}  // namespace

// (M, L, O) <- (M, L, O) (+) one chunk state, four dims of a head: the fold of finish_row and
// finish_row_staged.
__device__ __forceinline__ void fold_chunk4(float& M, float& L, float4& O, float2 ml, float4 o) {
  float x, y;
  fold_weights(M, ml.x, x, y);
  L = fold_acc(L, x, ml.y, y);
  O = make_float4(fold_acc(O.x, x, o.x, y), fold_acc(O.y, x, o.y, y), fold_acc(O.z, x, o.z, y),
                  fold_acc(O.w, x, o.w, y));
}

// out[b, qh, d .. d + 3] = O / L.
template <int D>
__device__ __forceinline__ void store_out4(const DecodeArgs& a, int b, int qh, int d, float4 O, float L) {
  __half2* dst = reinterpret_cast<__half2*>(a.out + b * a.out_stride + static_cast<int64_t>(qh) * D + d);
  dst[0] = __floats2half2_rn(__fdiv_rn(O.x, L), __fdiv_rn(O.y, L));
  dst[1] = __floats2half2_rn(__fdiv_rn(O.z, L), __fdiv_rn(O.w, L));
}

// Row (b, g) is complete in the workspace: fold its chunk states in chunk order, starting from the
// prefix state in slot first - 1 (the fold of register-held chunks 0..first-1 gives the same bits),
// and write the output. The states come from other blocks, through L2; a thread takes 4 dims and
// issues the loads of kBatch chunks before it folds them, a round trip of about 0.8 us per batch.
// Inside the tile loop, where the loop's state is live, the batch is small: 8 chunks, 4 at head_dim
// 64, which keeps that kernel within 128 registers. After the loop, rows of up to 8 chunks come here
// too (one round trip, no barrier); longer ones go through finish_row_staged.
template <int D, int kBatch>
__device__ void finish_row(const DecodeArgs& a, int b, int g, int splits, int first) {
  for (int e = threadIdx.x; e < a.group * (D / 4); e += kThreads) {
    const int qh = g * a.group + e / (D / 4), d = 4 * (e % (D / 4));
    const float2* ml = reinterpret_cast<const float2*>(a.chunk_ml(b, qh, 0));
    const float* o = a.chunk_o(b, qh, 0) + d;
    float M = 0.0f, L = 0.0f;
    float4 O = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s0 = first - 1; s0 < splits; s0 += kBatch) {  // slot first - 1 seeds the fold
      float2 mls[kBatch];
      float4 os[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int s = min(s0 + j, splits - 1);  // past the end: a valid slot, not folded
        mls[j] = __ldcg(ml + s);
        os[j] = __ldcg(reinterpret_cast<const float4*>(o + s * D));
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (s0 + j >= splits) break;
        if (s0 + j == first - 1) {
          M = mls[j].x;
          L = mls[j].y;
          O = os[j];
          continue;
        }
        fold_chunk4(M, L, O, mls[j], os[j]);
      }
    }
    store_out4<D>(a, b, qh, d, O, L);
  }
}

// The fold of finish_row after the tile loop, through shared memory (the tile stages are free by
// then): the row's chunk states from slot first - 1 on are copied in with cp.async, as many heads at
// a time as fit, then each thread folds its elements in chunk order with the same instructions as
// finish_row, so the bits are the same. The loops stay rolled: this runs once, at the end of the
// critical path of a small batch, from a cold instruction cache (a 32-chunk fold unrolled in
// registers was a fifth of the kernel's code); one round trip per batch of heads.
template <int D>
__device__ void finish_row_staged(const DecodeArgs& a, int b, int g, int splits, int first, float* buf,
                                  int buf_floats) {
  const int s0 = first - 1, nb = splits - s0;  // chunk slots s0 .. splits - 1
  const int ml0 = s0 & ~1, ml_units = (splits - ml0 + 1) / 2;  // (m, l) pairs from an even slot: 16 bytes
  const int hb = min(a.group, buf_floats / (nb * D + 4 * ml_units));
#pragma unroll 1
  for (int h0 = 0; h0 < a.group; h0 += hb) {
    const int nh = min(hb, a.group - h0);
    float* so = buf;                  // [nh][nb][D]
    float* sml = buf + nh * nb * D;   // [nh][2 ml_units]: (m, l) of slots ml0 ..
#pragma unroll 1
    for (int hh = 0; hh < nh; ++hh) {
      const int qh = g * a.group + h0 + hh;
      const float* o = a.chunk_o(b, qh, s0);
      for (int u = threadIdx.x; u < nb * (D / 4); u += kThreads) cp_async16(so + hh * nb * D + 4 * u, o + 4 * u, 16);
      const float* ml = a.chunk_ml(b, qh, ml0);
      for (int u = threadIdx.x; u < ml_units; u += kThreads) cp_async16(sml + hh * 4 * ml_units + 4 * u, ml + 4 * u, 16);
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
#pragma unroll 1
    for (int e = threadIdx.x; e < nh * (D / 4); e += kThreads) {
      const int hh = e / (D / 4), d = 4 * (e % (D / 4));
      const float2* ml = reinterpret_cast<const float2*>(sml + hh * 4 * ml_units) + (s0 - ml0);
      const float4* o = reinterpret_cast<const float4*>(so + hh * nb * D + d);
      float M = ml[0].x, L = ml[0].y;  // slot first - 1 seeds the fold
      float4 O = o[0];
#pragma unroll 4
      for (int j = 1; j < nb; ++j) fold_chunk4(M, L, O, ml[j], o[j * (D / 4)]);
      store_out4<D>(a, b, g * a.group + h0 + hh, d, O, L);
    }
    __syncthreads();  // the next batch of heads reuses the buffer
  }
}

// Blocks per SM that the register budget must allow: shared memory fits 4 of the head_dim-64 kernel.
template <int D, bool kTall>
__host__ __device__ constexpr int min_blocks() { return D <= 64 && !kTall ? 4 : 1; }

// kTall: more than 8 query heads per KV head (a second 8-head n-tile). kStages changes no arithmetic.
template <int D, bool kTall, int kStages>
static __global__ void __launch_bounds__(kThreads, min_blocks<D, kTall>()) decode_kernel(const DecodeArgs a) {
  static_assert(D % 16 == 0 && D <= 128, "head_dim: a multiple of 16, at most 128");
  constexpr int kDimTiles = D / 16;                            // 16-dim m-tiles of O^T
  constexpr int kKSteps = D / 16;                              // k-steps of K Q^T
  constexpr int kHeadTiles = kTall ? 2 : 1;                    // 8-head n-tiles
  constexpr int kQRows = 8 * kHeadTiles;
  constexpr int kTile = kRows * tile_ld<D>();                  // halves per K or V tile
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __half* smem = reinterpret_cast<__half*>(smem_raw);  // [stage][K|V][kRows rows], then [stage][kQRows rows]
  Control<kStages>& ctl = *reinterpret_cast<Control<kStages>*>(smem_raw + tiles_bytes<D, kTall, kStages>());
  TileInfo* info = ctl.info;
  int4* finish = ctl.finish;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int qr = lane >> 2, qc = 2 * (lane & 3);  // fragment row / first column of this lane
  const bool leader = threadIdx.x == 0;

  // Block i takes the i-th contiguous share of the items (shares differ by at most one item). It
  // reads only the step's positions and slots, which no kernel writes: the kernels before this one
  // may still be running.
  Cursor load = start_share(a, lane);
  pdl_allow_next();
  pdl_wait();  // q and the new K/V come from the kernels before

  auto stage_k = [&](int st) { return smem + (st * 2) * kTile; };
  auto stage_v = [&](int st) { return smem + (st * 2 + 1) * kTile; };
  auto stage_q = [&](int st) { return smem + kStages * 2 * kTile + st * kQRows * tile_ld<D>(); };
  // The next tile into stage st (with the row's queries if it is the first tile of a row in this
  // share: the chunks of one row share them), its TileInfo for the compute side, then advance `load`.
  // Rows past the chunk end and query rows past the group are zero-filled. Called right after a
  // barrier.
  bool share_start = true;
  const uint64_t kv_policy = evict_first_policy();
  auto issue = [&](int st) {
    TileInfo t{0, 0, 0, 0, 0, 0, kNoTile};
    if (load.left > 0) {
      const bool new_row = load.tile == 0 && (load.s == 0 || share_start);
      share_start = false;
      if (new_row) {
        constexpr int kChunks = D / 8;
        const __half* qg = a.q + load.b * a.q_stride + static_cast<int64_t>(load.g) * a.group * D;
#pragma unroll
        for (int i = 0; i < (kQRows * kChunks + kThreads - 1) / kThreads; ++i) {
          const int e = threadIdx.x + i * kThreads, r = e / kChunks, c = e % kChunks;
          if (e < kQRows * kChunks) {
            const bool in = r < a.group;
            cp_async16(stage_q(st) + tile_at<D>(r, c), qg + (in ? r * D + c * 8 : 0), in ? 16 : 0);
          }
        }
      }
      const int j0 = load.begin() + load.tile * kRows, rows = load.end() - j0;
      const int64_t base = static_cast<int64_t>(load.slot) * a.layout.slot_stride +
                           load.g * a.layout.head_stride + static_cast<int64_t>(j0) * a.layout.pos_stride;
      const int pos_stride = static_cast<int>(a.layout.pos_stride);
      if (rows >= kRows) {
        copy_tile<D, true>(stage_k(st), a.k_cache + base, pos_stride, rows, kv_policy);
        copy_tile<D, true>(stage_v(st), a.v_cache + base, pos_stride, rows, kv_policy);
      } else {
        copy_tile<D, false>(stage_k(st), a.k_cache + base, pos_stride, rows, kv_policy);
        copy_tile<D, false>(stage_v(st), a.v_cache + base, pos_stride, rows, kv_policy);
      }
      const bool last = load.tile == load.tiles - 1;
      t = TileInfo{load.b, load.g, load.s, load.splits, j0, load.end(),
                   (load.tile == 0 ? kFirstTile : 0) | (new_row ? kNewRow : 0) | (last ? kLastTile : 0) |
                       (last && load.left == 1 ? kShareEnd : 0)};
      load.advance(a);
    }
    if (leader) info[st] = t;
    asm volatile("cp.async.commit_group;\n" ::);  // possibly empty: keeps the group count uniform
  };
  // ldmatrix: matrix mi = lane / 8 supplies row mr = lane % 8 of its 8x8 block.
  const int mi = lane >> 3, mr = lane & 7;
  // Warp w owns keys 16 w .. 16 w + 15 of every tile: S^T and O^T fragments have keys (S) or dims
  // (O) as rows and the group's query heads as columns, so a lane's statistics are those of heads
  // 8 nt + qc and 8 nt + qc + 1 (index [nt][j]) over the warp's keys.
  uint32_t qb[kKSteps][kHeadTiles][2];       // Q^T B-fragments (k: dims, n: heads)
  float o[kDimTiles][kHeadTiles][4];         // O^T over this warp's keys, every dim m-tile
  float m[kHeadTiles][2], l[kHeadTiles][2];  // running max (base 2) and this lane's key sum
  // The fold of the row's chunks, element-wise: thread t holds head 8 nt + t / 16, dims
  // kE (t % 16) .. kE (t % 16) + kE - 1 of each n-tile nt.
  constexpr int kE = D / 16;
  const int fh = threadIdx.x >> 4, fd = kE * (threadIdx.x & 15);
  float FO[kHeadTiles][kE], FM[kHeadTiles], FL[kHeadTiles];
  bool own = false;    // this block holds chunk 0 of the current row (once true, true to the end)
  int seg_first = -1;  // first chunk of the current row in this block's share
  // A row segment that ended with the row unfinished is counted into row_count one step later (after
  // the barrier that orders its chunk-state writes), and the atomic's answer is read one step after
  // that; the block that completes the count folds the row. Only the first and the last row of a
  // share can be shared, so a block waits on at most two atomics: a wait on a global round trip
  // queues behind the block's in-flight tiles (a few us), too dear to pay per item.
  int3 count_row = make_int3(-1, 0, 0);  // (b, g, splits) to count in (uniform), adding count_add
  int count_add = 0;
  int3 ticket_row = make_int3(-1, 0, 0);  // leader: counted, answer pending
  int ticket = 0, ticket_add = 0;
  auto settle = [&](int parity) {  // leader, before a barrier: did our count complete the row?
    int4 f = make_int4(-1, 0, 0, 0);
    const int sum = ticket + ticket_add;
    if (ticket_row.x >= 0 && (sum & 0xffff) == ticket_row.z) {
      *a.row_count(ticket_row.x, ticket_row.y) = 0;
      f = make_int4(ticket_row.x, ticket_row.y, ticket_row.z, sum >> 16);
    }
    ticket_row.x = -1;
    finish[parity] = f;
  };
  auto count_in = [&] {  // after a barrier
    if (count_row.x < 0) return;
    if (leader) {  // before this step's copies are issued, so that nothing new is ahead of the atomic
      ticket = atomic_add_acq_rel(a.row_count(count_row.x, count_row.y), count_add);
      ticket_row = count_row;
      ticket_add = count_add;
    }
    count_row.x = -1;
  };
  // Steps 1 - kStages .. -1 only issue the first tiles: one copy of issue() in the code, which runs
  // from a cold instruction cache at small batches.
  int step = 1 - kStages;
  for (;; ++step) {
    if (step >= 0) {
      asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
      if (leader) settle(step & 1);
      __syncthreads();  // tile `step` is visible to all; stage (step - 1) is free again
      count_in();
    }
    issue((step + kStages - 1) % kStages);
    if (step < 0) continue;
    const int st = step % kStages;
    const int4 f = finish[step & 1];
    if (f.x >= 0) finish_row<D, (D <= 64 ? 4 : 8)>(a, f.x, f.y, f.z, f.w);
    const TileInfo t = info[st];
    if (t.flags & kNoTile) break;

    if (t.flags & kFirstTile) {  // a new item: fresh softmax state (and its row's queries)
      if (t.s == 0) {
        own = true;
        seg_first = 0;
      } else if (seg_first < 0) {  // the share starts inside a row
        seg_first = t.s;
      }
      if (t.flags & kNewRow) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk)
#pragma unroll
          for (int nt = 0; nt < kHeadTiles; ++nt)  // rows: heads 8 nt + 0-7; matrices: dims lo | hi
            ldmatrix_x2(qb[kk][nt], stage_q(st) + tile_at<D>(8 * nt + mr, 2 * kk + (mi & 1)));
      }
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          m[nt][j] = -INFINITY;
          l[nt][j] = 0.0f;
        }
#pragma unroll
      for (int i = 0; i < kDimTiles; ++i)
#pragma unroll
        for (int nt = 0; nt < kHeadTiles; ++nt) o[i][nt][0] = o[i][nt][1] = o[i][nt][2] = o[i][nt][3] = 0.0f;
    }

    const __half* ks = stage_k(st);
    const __half* vs = stage_v(st);
    // S^T = K Q^T for the warp's 16 keys, the k-steps alternating between two accumulators (two
    // dependent chains of half the length)
    float s[kHeadTiles][4], s2[kHeadTiles][4];
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {  // A blocks: (keys lo | hi) x (dims lo | hi)
      uint32_t ka[4];
      ldmatrix_x4(ka, ks + tile_at<D>(16 * warp + 8 * (mi & 1) + mr, 2 * kk + (mi >> 1)));
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) {
        if (kk == 0) mma16816_zero(s[nt], ka, qb[kk][nt][0], qb[kk][nt][1]);
        else if (kk == 1) mma16816_zero(s2[nt], ka, qb[kk][nt][0], qb[kk][nt][1]);
        else if (kk % 2 == 0) mma16816(s[nt], ka, qb[kk][nt][0], qb[kk][nt][1]);
        else mma16816(s2[nt], ka, qb[kk][nt][0], qb[kk][nt][1]);
      }
    }
    // online softmax (base 2) per head column; keys past the chunk end (last tile only) are masked.
    // Element e of s[nt]: key 16 warp + qr + 8 (e >> 1), head 8 nt + qc + (e & 1). A warp may have
    // no key yet (a short chunk): its max stays -inf and 0 stands in as the reference.
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = (kKSteps > 1 ? s[nt][e] + s2[nt][e] : s[nt][e]) * a.scale_log2;
    if (t.key0 + kRows > t.kend) {
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (t.key0 + 16 * warp + qr + 8 * (e >> 1) >= t.kend) s[nt][e] = -INFINITY;
    }
    float c[kHeadTiles][2];         // rescale of the running state
    uint32_t pb[kHeadTiles][2];     // P^T B-fragments (k: the warp's keys, n: heads)
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt) {
      float ref[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float mx = fmaxf(s[nt][j], s[nt][j + 2]);
#pragma unroll
        for (int x = 4; x < 32; x <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, x));
        const float mn = fmaxf(m[nt][j], mx);
        ref[j] = mn == -INFINITY ? 0.0f : mn;
        c[nt][j] = fast_exp2(m[nt][j] - ref[j]);  // 0 on an item's first tile
        m[nt][j] = mn;
      }
      const float p0 = fast_exp2(s[nt][0] - ref[0]), p1 = fast_exp2(s[nt][1] - ref[1]);
      const float p2 = fast_exp2(s[nt][2] - ref[0]), p3 = fast_exp2(s[nt][3] - ref[1]);
      l[nt][0] = l[nt][0] * c[nt][0] + (p0 + p2);
      l[nt][1] = l[nt][1] * c[nt][1] + (p1 + p3);
      // (keys x heads) 8x8 blocks transposed into (heads x keys): the B-fragment layout
      pb[nt][0] = movmatrix_trans(pack_half2(p0, p1));
      pb[nt][1] = movmatrix_trans(pack_half2(p2, p3));
    }
    // O^T = O^T * c + V^T P^T for every dim m-tile; V^T A-blocks read transposed
#pragma unroll
    for (int mdt = 0; mdt < kDimTiles; ++mdt) {
      uint32_t va[4];  // A blocks: (dims lo | hi) x (keys lo | hi)
      ldmatrix_x4_trans(va, vs + tile_at<D>(16 * warp + 8 * (mi >> 1) + mr, 2 * mdt + (mi & 1)));
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) {
        o[mdt][nt][0] *= c[nt][0];
        o[mdt][nt][1] *= c[nt][1];
        o[mdt][nt][2] *= c[nt][0];
        o[mdt][nt][3] *= c[nt][1];
        mma16816(o[mdt][nt], va, pb[nt][0], pb[nt][1]);
      }
    }

    if (t.flags & kLastTile) {
      // Item done. The warps' states (each over its keys of the chunk) are folded in warp order
      // into the chunk's (m, l, o), through the K and V rows of this stage that each warp read
      // itself (no other warp touches them). The block holding chunk 0 of the row folds the chunks
      // in registers and writes the output at the last one, or, if its share ends first, its prefix
      // state into the slot of its last chunk; a block that entered the row mid-way writes each
      // chunk's state.
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int x = 4; x < 32; x <<= 1) l[nt][j] += __shfl_xor_sync(0xffffffffu, l[nt][j], x);
      const bool row_done = t.s == t.splits - 1, seg_done = row_done || (t.flags & kShareEnd);
      const bool final_out = own && row_done;
      const bool prefix = own && !row_done;
      float* my_o = reinterpret_cast<float*>(stage_k(st) + 16 * warp * tile_ld<D>());   // [8 heads][D]
      float* my_ml = reinterpret_cast<float*>(stage_v(st) + 16 * warp * tile_ld<D>());  // [8 heads][2]
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) {
        if (nt > 0) __syncthreads();  // the previous n-tile's fold has read the scratch
#pragma unroll
        for (int mdt = 0; mdt < kDimTiles; ++mdt)
#pragma unroll
          for (int e = 0; e < 4; ++e) my_o[scratch_at<D>(qc + (e & 1), 16 * mdt + qr + 8 * (e >> 1))] = o[mdt][nt][e];
        if (qr == 0)
#pragma unroll
          for (int j = 0; j < 2; ++j) *reinterpret_cast<float2*>(my_ml + 2 * (qc + j)) = make_float2(m[nt][j], l[nt][j]);
        __syncthreads();
        float M, L, O[kE];
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          const float* wo = reinterpret_cast<const float*>(stage_k(st) + 16 * w * tile_ld<D>());
          const float2 wml =
              *reinterpret_cast<const float2*>(reinterpret_cast<const float*>(stage_v(st) + 16 * w * tile_ld<D>()) +
                                               2 * fh);
          float v[kE];
          load_scratch<D>(wo, fh, fd, v);
          if (w == 0) {  // warp 0 holds the chunk's first key: its max is finite
            M = wml.x;
            L = wml.y;
#pragma unroll
            for (int i = 0; i < kE; ++i) O[i] = v[i];
          } else {
            float x, y;
            fold_weights(M, wml.x, x, y);
            L = fold_acc(L, x, wml.y, y);
#pragma unroll
            for (int i = 0; i < kE; ++i) O[i] = fold_acc(O[i], x, v[i], y);
          }
        }
        if (own) {
          float x, y;
          if (t.s == 0) {
            FM[nt] = -INFINITY;
            FL[nt] = 0.0f;
          }
          fold_weights(FM[nt], M, x, y);
          FL[nt] = fold_acc(FL[nt], x, L, y);
#pragma unroll
          for (int i = 0; i < kE; ++i) FO[nt][i] = fold_acc(t.s == 0 ? 0.0f : FO[nt][i], x, O[i], y);
        }
        const int hh = 8 * nt + fh;  // head within the group
        if (hh < a.group && (!own || seg_done)) {
          const int qh = t.g * a.group + hh;
          if (final_out) {
            __half* dst = a.out + t.b * a.out_stride + static_cast<int64_t>(qh) * D + fd;
#pragma unroll
            for (int i = 0; i < kE; ++i) dst[i] = __float2half_rn(__fdiv_rn(FO[nt][i], FL[nt]));
          } else {
            float* co = a.chunk_o(t.b, qh, t.s) + fd;
#pragma unroll
            for (int i = 0; i < kE; ++i) co[i] = prefix ? FO[nt][i] : O[i];
            if (fd == 0)
              *reinterpret_cast<float2*>(a.chunk_ml(t.b, qh, t.s)) =
                  prefix ? make_float2(FM[nt], FL[nt]) : make_float2(M, L);
          }
        }
      }
      if (seg_done && !final_out) {  // the row's other chunks are (or will be) in other blocks' hands
        count_row = make_int3(t.b, t.g, t.splits);
        count_add = (t.s - seg_first + 1) + (own ? (t.s + 1) << 16 : 0);  // chunks, and where the prefix is
      }
    }
  }
  if (leader) settle((step + 1) & 1);  // the count made at the last step
  __syncthreads();
  const int4 f = finish[(step + 1) & 1];
  if (f.x >= 0) {
    if (f.z - f.w + 1 <= 8) {  // a few chunks: straight into registers, no barriers
      finish_row<D, 8>(a, f.x, f.y, f.z, f.w);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);  // (the groups left are empty: the share is done)
      finish_row_staged<D>(a, f.x, f.y, f.z, f.w, reinterpret_cast<float*>(smem_raw),
                           static_cast<int>(tiles_bytes<D, kTall, kStages>() / sizeof(float)));
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);  // no copy may outlive the block
}


// Resident blocks per SM of one kernel instance, asked once (it also raises the shared-memory limit).
template <int D, bool kTall, int kStages>
static int blocks_per_sm() {
  static int blocks = 0;
  static std::once_flag once;
  std::call_once(once, [] {
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<D, kTall, kStages>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem_bytes<D, kTall, kStages>())));
    KVINFER_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_kernel<D, kTall, kStages>,
                                                                     kThreads, smem_bytes<D, kTall, kStages>()));
  });
  return blocks;
}

// One launch: the persistent grid (as many blocks as fit at once) or one block per piece of a row.
template <int D, bool kTall, int kStages>
static void launch_shape(const DecodeArgs& a, int sms, cudaStream_t stream) {
  const int slots = sms * blocks_per_sm<D, kTall, kStages>();  // (which also raises the shared-memory limit)
  // the persistent grid: never more blocks than the batch can have items (a small batch in a
  // captured graph would otherwise start hundreds of blocks with nothing to do)
  const int64_t most_items = static_cast<int64_t>(a.batch) * a.num_kv_heads * a.plan.max_splits;
  const int grid = a.row_pieces > 0 ? a.batch * a.num_kv_heads * a.row_pieces
                                    : static_cast<int>(std::min<int64_t>(slots, most_items));
  launch_dependent(decode_kernel<D, kTall, kStages>, dim3(grid), dim3(kThreads), smem_bytes<D, kTall, kStages>(),
                   stream, a);
}

// Only the kernels decode_launch can pick are built: 2 stages only at head_dim > 64, groups <= 8.
template <int D, bool kTall>
static void launch_stages(const DecodeArgs& a, int stages, int sms, cudaStream_t stream) {
  if constexpr (D > 64 && !kTall) {
    if (stages == 2) return launch_shape<D, kTall, 2>(a, sms, stream);
  }
  if (stages == 4) launch_shape<D, kTall, 4>(a, sms, stream);
  else launch_shape<D, kTall, 3>(a, sms, stream);
}

DecodeSplits decode_splits(int num_kv_heads) {
  if (num_kv_heads >= 8) return DecodeSplits{};
  return DecodeSplits{128, 32, 32, 16};
}

DecodeLaunch decode_launch(int batch, int num_heads, int num_kv_heads, int head_dim, int num_sms,
                           DecodeSplits splits, DecodeLengths lengths) {
  DecodeLaunch l;
  if (lengths.max_keys <= 0) return l;  // unknown: the persistent grid, 3 stages
  const int64_t rows = static_cast<int64_t>(batch) * num_kv_heads;
  int max_splits = 0, chunk = 0;  // the longest row's chunk count bounds every row's
  split_plan(lengths.max_keys, splits, max_splits, chunk);
  const int64_t items = rows * max_splits;
  // Rows of similar length (the mean at least half the longest): a piece's size is set by the
  // longest row, and one long row among short ones would be streamed by few blocks.
  const bool similar = 2 * lengths.total_keys >= static_cast<int64_t>(batch) * lengths.max_keys;
  if (items <= num_sms) {
    // a block per chunk, each on an SM of its own, with its whole chunk in flight at once. The
    // persistent grid gives the same blocks the same single chunks, but first scans the batch
    // for them: 0.3-0.7 us more at B=1 (docs/benchmarks.md).
    l.row_pieces = max_splits;
    l.piece_chunks = 1;
    l.stages = 4;
  } else if (similar && rows >= num_sms &&
             (lengths.max_keys <= kRowBlocksMaxKeys || (head_dim > 64 && 5 * rows >= 6 * num_sms))) {
    // a whole row per block. Rows longer than 4K only at head_dim > 64 (2 stages, below) and with
    // at least 1.2 rows per SM. At ctx=8K: B=20 (1.21 rows per SM) 232 us against 242 for the
    // persistent grid (3 stages; 255 with 2), B=17 (1.03) 210 against 197 (2 stages); at head_dim
    // 64 (3 stages) SmolLM2 B=48 (1.09) 135 against 115.
    l.row_pieces = 1;
    l.piece_chunks = max_splits;
  } else if (similar && rows >= kRowPiecesMinRows && rows < num_sms) {
    // equal pieces of rows, about one block per SM at head_dim > 64 and three at 64 (with half the
    // bytes per tile)
    const int64_t target = static_cast<int64_t>(num_sms) * (head_dim <= 64 ? 3 : 1);
    l.piece_chunks = static_cast<int>((items + target - 1) / target);
    l.row_pieces = (max_splits + l.piece_chunks - 1) / l.piece_chunks;
  }
  // At least a row per SM: 2 stages at head_dim > 64. The DRAM is the limit there, and fewer bytes
  // queued per block stream it as fast or faster (docs/benchmarks.md); at head_dim 64 they were
  // 5-10% slower (SmolLM2 B=48 and 64). Not for more than 8 heads per KV head: a second n-tile
  // takes so many registers (209-243) that one block fills an SM at any stage count, and 2 stages
  // would only halve its bytes in flight.
  if (items > num_sms && rows >= num_sms && head_dim > 64 && num_heads <= 8 * num_kv_heads) l.stages = 2;
  return l;
}

template <int D>
static void launch_decode(DecodeArgs a, DecodeLengths lengths, cudaStream_t stream) {
  int device = 0, sms = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const DecodeLaunch l = decode_launch(a.batch, a.num_heads, a.num_kv_heads, D, sms, a.plan, lengths);
  a.row_pieces = l.row_pieces;
  a.piece_chunks = l.piece_chunks;
  if (a.group > 8) launch_stages<D, true>(a, l.stages, sms, stream);
  else launch_stages<D, false>(a, l.stages, sms, stream);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void attention_decode(const half_t* q, int64_t q_stride, const half_t* k_cache,
                      const half_t* v_cache, const KVLayout& layout, const int32_t* seq_slots,
                      const int32_t* positions, int batch, int num_heads, int num_kv_heads,
                      int head_dim, float scale, float* workspace, half_t* out, int64_t out_stride,
                      cudaStream_t stream, DecodeSplits plan, DecodeLengths lengths) {
  if (batch == 0) return;
  KVINFER_CHECK_ARG(plan.min_chunk >= 64 && plan.max_splits >= 1 && plan.max_splits <= kDecodeMaxSplits &&
                        plan.growth_keys >= 0 && plan.growth_keys <= (1 << 20) && plan.min_splits >= 0 &&
                        plan.min_splits <= kDecodeMaxSplits,
                    "attention_decode: min_chunk=", plan.min_chunk, " max_splits=", plan.max_splits,
                    " growth_keys=", plan.growth_keys, " min_splits=", plan.min_splits,
                    " (need min_chunk >= 64, 1 <= max_splits <= ", kDecodeMaxSplits,
                    ", 0 <= growth_keys <= 2^20, 0 <= min_splits <= ", kDecodeMaxSplits, ")");
  KVINFER_CHECK_ARG(lengths.max_keys >= 0 && lengths.total_keys >= 0, "attention_decode: max_keys=",
                    lengths.max_keys, " total_keys=", lengths.total_keys, " (lengths hint: >= 0, 0 when unknown)");
  KVINFER_CHECK_ARG(num_kv_heads > 0 && num_heads % num_kv_heads == 0, "num_heads=", num_heads,
                    " is not a multiple of num_kv_heads=", num_kv_heads);
  const int group = num_heads / num_kv_heads;
  KVINFER_CHECK_ARG(group <= 16, "attention_decode: GQA group of ", group,
                    " query heads per KV head is not supported (1..16)");
  KVINFER_CHECK_ARG(q_stride % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 && out_stride % 2 == 0 &&
                        reinterpret_cast<uintptr_t>(out) % 4 == 0,
                    "attention_decode: q rows must be 16-byte aligned and out rows 4-byte aligned (q_stride=",
                    q_stride, " out_stride=", out_stride, ")");
  KVINFER_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % 16 == 0,
                    "attention_decode: the workspace must be 16-byte aligned");
  const DecodeArgs a{reinterpret_cast<const __half*>(q), q_stride, reinterpret_cast<const __half*>(k_cache),
                     reinterpret_cast<const __half*>(v_cache), layout, seq_slots, positions, batch, num_heads,
                     num_kv_heads, group, head_dim, scale * kLog2e, plan, 0, 0, workspace,
                     decode_record_floats(num_heads, head_dim),
                     reinterpret_cast<__half*>(out), out_stride};
  switch (head_dim) {
    case 32: return launch_decode<32>(a, lengths, stream);
    case 64: return launch_decode<64>(a, lengths, stream);
    case 80: return launch_decode<80>(a, lengths, stream);
    case 96: return launch_decode<96>(a, lengths, stream);
    case 128: return launch_decode<128>(a, lengths, stream);
    default:
      throw std::invalid_argument(str("attention_decode: head_dim=", head_dim,
                                      " is not supported (32, 64, 80, 96, 128)"));
  }
}

}  // namespace kvinfer::cuda
