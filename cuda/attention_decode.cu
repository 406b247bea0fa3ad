// Split-K decode attention on tensor cores, one persistent grid.
//
// out[b, h] = softmax(q[b, h] . K[slot_b, g(h), :n_b]^T * scale) V[slot_b, g(h), :n_b], n_b = position + 1.
//
// Work items: (sequence b, KV head g, chunk s). Chunking (DecodeSplits): splits = min(max_splits,
// ceil(n / min_chunk)), chunk = ceil(n / splits) rounded up to 64; both depend only on n. A chunk's
// state (m, l, o) is computed the same way whichever block takes it, and a row's output is always the
// fold of its chunk states in chunk order, so a sequence's result is the same in any batch.
//
// The grid is as many blocks as fit on the device at once; block i takes the i-th contiguous share
// of the item list (ordered b, g, s) and streams 64-key K/V tiles of its items through a 3-stage
// cp.async pipeline that runs across item boundaries. A block that holds chunk 0 of a row folds the
// row's chunks in registers and writes the output itself, so at large batch almost nothing but the
// output leaves the kernel; rows shared between blocks go through chunk slots in global memory and
// merge_kernel finishes them with the same fold.
//
// Per tile, in each of the 4 warps: S = Q K^T with mma.sync m16n8k16 (rows: the query heads of the
// KV head, padded to 16; columns: the 64 keys), an online softmax on the S fragments, then
// O = O * c + P V for the warp's quarter of head_dim (dim n-tiles w, w + 4, ...). Every warp
// computes the same S and softmax statistics, so warps never merge; K is read from shared memory by
// all four warps, V once. Tiles are XOR-swizzled in shared memory: padding rows instead cost 3% of
// the streaming rate (bank conflicts of the cp.async writes).
#include "cuda/attention.h"

#include <cuda_fp16.h>

#include <mutex>

#include "cpp/cuda_check.h"
#include "cpp/errors.h"

namespace kvinfer::cuda {

namespace {
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 64;   // keys per tile
constexpr int kStages = 3;  // tiles in flight per block
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
__host__ __device__ constexpr int tile_ld();
template <int D, bool kTall>
__host__ __device__ constexpr size_t smem_bytes() {  // K/V tiles [stage][K|V][key], queries [stage][row]
  return size_t{kStages} * (2 * kRows + (kTall ? 16 : 8)) * tile_ld<D>() * sizeof(__half);
}

// 16-byte global -> shared copy; src_bytes 0 writes zeros (rows past the chunk end).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
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
// fold_acc for L and for each O element. The same instructions run in the decode kernel and in
// merge_kernel, rounding pinned by the intrinsics, so a fold split between them gives the bits of
// one done in registers.
__device__ __forceinline__ void fold_weights(float& M, float m, float& x, float& y) {
  const float mn = fmaxf(M, m);  // m is finite: every chunk has a key
  x = fast_exp2(M - mn);
  y = fast_exp2(m - mn);
  M = mn;
}
__device__ __forceinline__ float fold_acc(float acc, float x, float v, float y) {
  return __fmaf_rn(acc, x, __fmul_rn(v, y));
}

// c += a (16x16, row-major) * b (16x8, column-major); fp16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__host__ __device__ inline void split_plan(int n, DecodeSplits plan, int& splits, int& chunk) {
  splits = (n + plan.min_chunk - 1) / plan.min_chunk;
  if (splits > plan.max_splits) splits = plan.max_splits;
  if (splits < 1) splits = 1;
  chunk = (n + splits - 1) / splits;
  chunk = (chunk + 63) / 64 * 64;
  splits = (n + chunk - 1) / chunk;
}

struct DecodeArgs {
  const __half* q;  // [batch][q_stride], heads of KV head g at columns [g*group*D, (g+1)*group*D)
  int64_t q_stride;
  const __half* k_cache;  // [slot][kv_head][pos][D] (layout strides)
  const __half* v_cache;
  KVLayout layout;
  const int32_t* seq_slots;  // [batch]
  const int32_t* positions;  // [batch]
  int batch, num_heads, num_kv_heads, group;
  float scale_log2;  // scale * log2(e): the softmax runs in base 2
  DecodeSplits plan;
  float* part_o;      // [batch][num_heads][kDecodeMaxSplits][D]
  float* part_ml;     // [batch][num_heads][kDecodeMaxSplits][2]
  int32_t* row_info;  // [batch][num_kv_heads]: 0 = output written, k + 1 = prefix state in chunk slot k
  __half* out;        // [batch][out_stride]
  int64_t out_stride;
};

// A position in a worker's item list: which item, which of its tiles. Every thread holds the same
// cursor; entering a new sequence reads its position (an L1 hit after the first scan).
struct Cursor {
  int left;  // items left, this one included
  int b, g, s;
  int n, splits, chunk, tile, tiles;

  __device__ void enter_sequence(const DecodeArgs& a) {
    n = a.positions[b] + 1;
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

// Worker w's share of the items: [total * w / workers, total * (w+1) / workers). The warp scans the
// per-sequence item counts itself.
__device__ Cursor worker_share(const DecodeArgs& a, int worker, int workers, int lane) {
  auto items_of = [&](int b) {
    if (b >= a.batch) return 0;
    int splits, chunk;
    split_plan(a.positions[b] + 1, a.plan, splits, chunk);
    return splits * a.num_kv_heads;
  };
  int64_t total = 0;
  for (int b0 = 0; b0 < a.batch; b0 += 32) {
    int c = items_of(b0 + lane);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    total += c;
  }
  const int64_t first = total * worker / workers, last = total * (worker + 1) / workers;
  Cursor c;
  c.left = static_cast<int>(last - first);
  if (c.left == 0) return c;
  int64_t before = 0;
  for (int b0 = 0;; b0 += 32) {  // terminates: first < total
    const int cnt = items_of(b0 + lane);
    const int incl = warp_scan_incl(cnt, lane);
    const bool hit = before + incl - cnt <= first && first < before + incl;
    const unsigned mask = __ballot_sync(0xffffffffu, hit);
    if (mask != 0) {
      const int src = __ffs(mask) - 1;
      c.b = b0 + src;
      const int rest = static_cast<int>(first - before) - __shfl_sync(0xffffffffu, incl - cnt, src);
      c.enter_sequence(a);
      c.g = rest / c.splits;
      c.s = rest % c.splits;
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

// One 64-row tile (rows of D halves, `pos_stride` apart) into shared memory, by the block. 16-byte
// chunk e = threadIdx.x + i * kThreads is row e / (D / 8), column chunk e % (D / 8): constant math
// with i unrolled. Without kFull, rows >= `rows` are zero-filled.
template <int D, bool kFull>
__device__ __forceinline__ void copy_tile(__half* dst, const __half* src, int pos_stride, int rows) {
  constexpr int kChunks = D / 8;
  static_assert(kRows * kChunks % kThreads == 0, "tile copies split evenly over the threads");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const unsigned e = threadIdx.x + i * kThreads, r = e / kChunks, c = e % kChunks;
    const bool in = kFull || static_cast<int>(r) < rows;
    cp_async16(dst + tile_at<D>(r, c), src + (in ? r * pos_stride + c * 8 : 0), in ? 16 : 0);
  }
}

}  // namespace

template <int D, bool kTall>  // kTall: more than 8 query heads per KV head (rows 8..15 of the tile live)
static __global__ void __launch_bounds__(kThreads) decode_kernel(const DecodeArgs a) {
  static_assert(D % 16 == 0 && D <= 128, "head_dim: a multiple of 16, at most 128");
  constexpr int kDimTiles = D / 8;                             // 8-dim n-tiles of the output
  constexpr int kMyTiles = (kDimTiles + kWarps - 1) / kWarps;  // this warp's: w, w + 4, ...
  constexpr int kKSteps = D / 16;                              // k-steps of Q K^T
  constexpr int kQRows = kTall ? 16 : 8;
  constexpr int kTile = kRows * tile_ld<D>();                  // halves per K or V tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* smem = reinterpret_cast<__half*>(smem_raw);  // [stage][K|V][kRows rows], then [stage][kQRows rows]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int qr = lane >> 2, qc = 2 * (lane & 3);  // fragment row / first column of this lane

  Cursor cur = worker_share(a, blockIdx.x, gridDim.x, lane);  // every warp finds the block's share
  if (cur.left == 0) return;
  Cursor load = cur;

  auto stage_k = [&](int st) { return smem + (st * 2) * kTile; };
  auto stage_v = [&](int st) { return smem + (st * 2 + 1) * kTile; };
  auto stage_q = [&](int st) { return smem + kStages * 2 * kTile + st * kQRows * tile_ld<D>(); };
  // The tile at `load` into stage st (with the item's queries if it is the item's first tile), then
  // advance `load`. Rows past the chunk end and query rows past the group are zero-filled.
  auto issue = [&](int st) {
    if (load.left > 0) {
      if (load.tile == 0) {
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
      const int64_t base = static_cast<int64_t>(a.seq_slots[load.b]) * a.layout.slot_stride +
                           load.g * a.layout.head_stride + static_cast<int64_t>(j0) * a.layout.pos_stride;
      const int pos_stride = static_cast<int>(a.layout.pos_stride);
      if (rows >= kRows) {
        copy_tile<D, true>(stage_k(st), a.k_cache + base, pos_stride, rows);
        copy_tile<D, true>(stage_v(st), a.v_cache + base, pos_stride, rows);
      } else {
        copy_tile<D, false>(stage_k(st), a.k_cache + base, pos_stride, rows);
        copy_tile<D, false>(stage_v(st), a.v_cache + base, pos_stride, rows);
      }
      load.advance(a);
    }
    asm volatile("cp.async.commit_group;\n" ::);  // possibly empty: keeps the group count uniform
  };
  for (int st = 0; st < kStages - 1; ++st) issue(st);

  // ldmatrix: matrix mi = lane / 8 supplies row mr = lane % 8 of its 8x8 block.
  const int mi = lane >> 3, mr = lane & 7;
  uint32_t qa[kKSteps][4];  // Q A-fragments (rows: the group's heads, padded to 16)
  float o[kMyTiles][4];     // O fragments of this warp's dims: rows qr, qr + 8; dims 8 nt + qc (+1)
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows qr, qr + 8; l: this lane's keys
  float FO[kMyTiles][4], FM0 = 0.0f, FM1 = 0.0f, FL0 = 0.0f, FL1 = 0.0f;  // fold of the row's chunks
  bool own = false;  // this block holds chunk 0 of the current row
  for (int step = 0; cur.left > 0; ++step) {
    const int st = step % kStages;
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
    __syncthreads();  // tile `step` is visible to all; stage (step - 1) is free again
    issue((step + kStages - 1) % kStages);

    if (cur.tile == 0) {  // a new item: its queries, fresh softmax state
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        if (kTall) {  // blocks (rows 0-7 | 8-15) x (dims lo | hi)
          ldmatrix_x4(qa[kk], stage_q(st) + tile_at<D>(8 * (mi & 1) + mr, 2 * kk + (mi >> 1)));
        } else {  // rows 0-7 x (dims lo | hi); rows 8-15 are zero
          uint32_t r[4];
          ldmatrix_x4(r, stage_q(st) + tile_at<D>(mr, 2 * kk + (mi & 1)));
          qa[kk][0] = r[0];
          qa[kk][2] = r[1];
          qa[kk][1] = qa[kk][3] = 0u;
        }
      }
      m0 = m1 = -INFINITY;
      l0 = l1 = 0.0f;
#pragma unroll
      for (int t = 0; t < kMyTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    }

    const __half* ks = stage_k(st);
    const __half* vs = stage_v(st);
    // S = Q K^T: rows heads, 8 n-tiles of 8 keys; every warp computes all of it
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int jp = 0; jp < 4; ++jp) {  // blocks (keys 16 jp + 0-7 | 8-15) x (dims lo | hi)
        uint32_t b[4];
        ldmatrix_x4(b, ks + tile_at<D>(16 * jp + 8 * (mi >> 1) + mr, 2 * kk + (mi & 1)));
        mma16816(s[2 * jp], qa[kk], b[0], b[1]);
        mma16816(s[2 * jp + 1], qa[kk], b[2], b[3]);
      }
    }
    // online softmax (base 2); keys past the chunk end (last tile only) are masked, the tile's first
    // key never is
    const int key0 = cur.begin() + cur.tile * kRows, kend = cur.end();
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= a.scale_log2;
    if (key0 + kRows > kend) {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (key0 + 8 * j + qc + (e & 1) >= kend) s[j][e] = -INFINITY;
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
      if (kTall) mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
      if (kTall) mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
    }
    const float n0 = fmaxf(m0, mx0), c0 = fast_exp2(m0 - n0);  // c = 0 on an item's first tile
    const float n1 = kTall ? fmaxf(m1, mx1) : 0.0f, c1 = kTall ? fast_exp2(m1 - n1) : 0.0f;
    m0 = n0;
    m1 = n1;
    uint32_t pa[4][4];  // P as fp16 A-fragments, k-step = 16 keys
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float p0 = fast_exp2(s[j][0] - n0), p1 = fast_exp2(s[j][1] - n0);
      const float p2 = kTall ? fast_exp2(s[j][2] - n1) : 0.0f, p3 = kTall ? fast_exp2(s[j][3] - n1) : 0.0f;
      sum0 += p0 + p1;
      sum1 += p2 + p3;
      pa[j >> 1][(j & 1) * 2] = pack_half2(p0, p1);
      pa[j >> 1][(j & 1) * 2 + 1] = pack_half2(p2, p3);
    }
    l0 = l0 * c0 + sum0;
    l1 = l1 * c1 + sum1;
    // O = O * c + P V for this warp's dims; V read transposed: blocks of 8 keys x 8 dims
#pragma unroll
    for (int t = 0; t < kMyTiles; ++t) {
      const int nt = warp + kWarps * t;
      if (nt < kDimTiles) {
        o[t][0] *= c0;
        o[t][1] *= c0;
        o[t][2] *= c1;
        o[t][3] *= c1;
#pragma unroll
        for (int kp = 0; kp < 2; ++kp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vs + tile_at<D>(32 * kp + 8 * mi + mr, nt));
          mma16816(o[t], pa[2 * kp], b[0], b[1]);
          mma16816(o[t], pa[2 * kp + 1], b[2], b[3]);
        }
      }
    }

    if (cur.tile == cur.tiles - 1) {
      // Item done: its (m, l, o). The block holding chunk 0 of the row folds the chunks in registers
      // and writes the output at the last one, or, if its share ends first, its prefix state into the
      // slot of its last chunk; a block that entered the row mid-way writes each chunk's state.
      // merge_kernel finishes split rows.
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, x);
        l1 += __shfl_xor_sync(0xffffffffu, l1, x);
      }
      if (cur.s == 0) own = true;
      const bool row_done = cur.s == cur.splits - 1, share_done = cur.left == 1;
      if (own) {
        if (cur.s == 0) {
          FM0 = FM1 = -INFINITY;
          FL0 = FL1 = 0.0f;
#pragma unroll
          for (int t = 0; t < kMyTiles; ++t) FO[t][0] = FO[t][1] = FO[t][2] = FO[t][3] = 0.0f;
        }
        float x0, y0, x1 = 0.0f, y1 = 0.0f;
        fold_weights(FM0, m0, x0, y0);
        FL0 = fold_acc(FL0, x0, l0, y0);
        if (kTall) {
          fold_weights(FM1, m1, x1, y1);
          FL1 = fold_acc(FL1, x1, l1, y1);
        }
#pragma unroll
        for (int t = 0; t < kMyTiles; ++t) {
          FO[t][0] = fold_acc(FO[t][0], x0, o[t][0], y0);
          FO[t][1] = fold_acc(FO[t][1], x0, o[t][1], y0);
          if (kTall) {
            FO[t][2] = fold_acc(FO[t][2], x1, o[t][2], y1);
            FO[t][3] = fold_acc(FO[t][3], x1, o[t][3], y1);
          }
        }
      }
      if (!own || row_done || share_done) {
        const bool final_out = own && row_done, prefix = own && !row_done;
#pragma unroll
        for (int half = 0; half < (kTall ? 2 : 1); ++half) {
          const int hh = qr + 8 * half;  // head within the group
          if (hh >= a.group) continue;
          const int qh = cur.g * a.group + hh;
          const int64_t slot = (static_cast<int64_t>(cur.b) * a.num_heads + qh) * kDecodeMaxSplits + cur.s;
#pragma unroll
          for (int t = 0; t < kMyTiles; ++t) {
            const int d = 8 * (warp + kWarps * t) + qc;
            if (d >= D) continue;
            if (final_out) {
              const float L = half ? FL1 : FL0;
              *reinterpret_cast<__half2*>(a.out + cur.b * a.out_stride + qh * D + d) =
                  __floats2half2_rn(__fdiv_rn(FO[t][2 * half], L), __fdiv_rn(FO[t][2 * half + 1], L));
            } else {
              *reinterpret_cast<float2*>(a.part_o + slot * D + d) =
                  prefix ? make_float2(FO[t][2 * half], FO[t][2 * half + 1])
                         : make_float2(o[t][2 * half], o[t][2 * half + 1]);
            }
          }
          if (!final_out && warp == 0 && (lane & 3) == 0)
            *reinterpret_cast<float2*>(a.part_ml + slot * 2) =
                prefix ? make_float2(half ? FM1 : FM0, half ? FL1 : FL0) : make_float2(half ? m1 : m0, half ? l1 : l0);
        }
        if (own && threadIdx.x == 0) a.row_info[cur.b * a.num_kv_heads + cur.g] = row_done ? 0 : cur.s + 1;
      }
    }
    cur.advance(a);
  }
  asm volatile("cp.async.wait_group 0;\n" ::);  // no copy may outlive the block
}

// Finishes rows split between blocks: the prefix state of the block that held chunk 0, then the
// later chunks in order, through the same fold. Rows with row_info 0 were written by decode_kernel.
// Block (query head, sequence), one thread per dim.
template <int D>
static __global__ void merge_kernel(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                    const int32_t* __restrict__ row_info, const int32_t* __restrict__ positions,
                                    int num_kv_heads, int group, DecodeSplits plan, __half* __restrict__ out,
                                    int64_t out_stride) {
  const int head = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int info = row_info[b * num_kv_heads + head / group];
  if (info == 0) return;
  int splits, chunk;
  split_plan(positions[b] + 1, plan, splits, chunk);
  const int64_t first = (static_cast<int64_t>(b) * gridDim.x + head) * kDecodeMaxSplits;
  const float* ml = part_ml + first * 2;
  const float* o = part_o + first * D + d;
  float M = ml[(info - 1) * 2], L = ml[(info - 1) * 2 + 1], O = o[(info - 1) * D];
#pragma unroll 8
  for (int s = info; s < splits; ++s) {
    float x, y;
    fold_weights(M, ml[s * 2], x, y);
    L = fold_acc(L, x, ml[s * 2 + 1], y);
    O = fold_acc(O, x, o[s * D], y);
  }
  out[b * out_stride + static_cast<int64_t>(head) * D + d] = __float2half_rn(__fdiv_rn(O, L));
}

size_t decode_workspace_bytes(int batch, int num_heads, int head_dim) {
  return static_cast<size_t>(batch) * num_heads * (kDecodeMaxSplits * (head_dim + 2) * sizeof(float) + sizeof(int32_t));
}

// Resident blocks per SM of one kernel instance, asked once (it also raises the shared-memory limit).
template <int D, bool kTall>
static int blocks_per_sm() {
  static int blocks = 0;
  static std::once_flag once;
  std::call_once(once, [] {
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<D, kTall>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem_bytes<D, kTall>())));
    KVINFER_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_kernel<D, kTall>, kThreads,
                                                                     smem_bytes<D, kTall>()));
  });
  return blocks;
}

template <int D>
static void launch_decode(const DecodeArgs& a, cudaStream_t stream) {
  int device = 0, sms = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (a.group > 8) {
    decode_kernel<D, true><<<sms * blocks_per_sm<D, true>(), kThreads, smem_bytes<D, true>(), stream>>>(a);
  } else {
    decode_kernel<D, false><<<sms * blocks_per_sm<D, false>(), kThreads, smem_bytes<D, false>(), stream>>>(a);
  }
  KVINFER_CUDA_CHECK_LAUNCH();
  merge_kernel<D><<<dim3(a.num_heads, a.batch), D, 0, stream>>>(
      a.part_o, a.part_ml, a.row_info, a.positions, a.num_kv_heads, a.group, a.plan, a.out, a.out_stride);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void attention_decode(const half_t* q, int64_t q_stride, const half_t* k_cache,
                      const half_t* v_cache, const KVLayout& layout, const int32_t* seq_slots,
                      const int32_t* positions, int batch, int num_heads, int num_kv_heads,
                      int head_dim, float scale, float* partial, half_t* out, int64_t out_stride,
                      cudaStream_t stream, DecodeSplits plan) {
  if (batch == 0) return;
  KVINFER_CHECK_ARG(plan.min_chunk >= 64 && plan.max_splits >= 1 && plan.max_splits <= kDecodeMaxSplits,
                    "attention_decode: min_chunk=", plan.min_chunk, " max_splits=", plan.max_splits,
                    " (need min_chunk >= 64, 1 <= max_splits <= ", kDecodeMaxSplits, ")");
  KVINFER_CHECK_ARG(num_kv_heads > 0 && num_heads % num_kv_heads == 0, "num_heads=", num_heads,
                    " is not a multiple of num_kv_heads=", num_kv_heads);
  const int group = num_heads / num_kv_heads;
  KVINFER_CHECK_ARG(group <= 16, "attention_decode: GQA group of ", group,
                    " query heads per KV head is not supported (1..16)");
  KVINFER_CHECK_ARG(q_stride % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 && out_stride % 2 == 0 &&
                        reinterpret_cast<uintptr_t>(out) % 4 == 0,
                    "attention_decode: q rows must be 16-byte aligned and out rows 4-byte aligned (q_stride=",
                    q_stride, " out_stride=", out_stride, ")");
  DecodeArgs a{reinterpret_cast<const __half*>(q), q_stride, reinterpret_cast<const __half*>(k_cache),
               reinterpret_cast<const __half*>(v_cache), layout, seq_slots, positions, batch, num_heads,
               num_kv_heads, group, scale * kLog2e, plan, partial,
               partial + static_cast<size_t>(batch) * num_heads * kDecodeMaxSplits * head_dim,
               reinterpret_cast<int32_t*>(partial + static_cast<size_t>(batch) * num_heads * kDecodeMaxSplits *
                                                        (head_dim + 2)),
               reinterpret_cast<__half*>(out), out_stride};
  switch (head_dim) {
    case 32: return launch_decode<32>(a, stream);
    case 64: return launch_decode<64>(a, stream);
    case 80: return launch_decode<80>(a, stream);
    case 96: return launch_decode<96>(a, stream);
    case 128: return launch_decode<128>(a, stream);
    default:
      throw std::invalid_argument(str("attention_decode: head_dim=", head_dim,
                                      " is not supported (32, 64, 80, 96, 128)"));
  }
}

}  // namespace kvinfer::cuda
