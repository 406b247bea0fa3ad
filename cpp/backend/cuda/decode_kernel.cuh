// Split-K decode attention on tensor cores, one persistent grid.
//
// out[b, h] = softmax(q[b, h] . K[b, g(h), :n_b]^T * scale) V[b, g(h), :n_b], n_b = position + 1, with
// K[b] and V[b] the rows that sequence b's block table lists.
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
// each warp read itself, so K is read from shared memory once, not by every warp. Tiles are
// XOR-swizzled in shared memory (padded rows made the cp.async writes conflict on banks). The
// measurements behind both: docs/dev/decode-attention-tuning.md. The code is kept small: at small
// batches most of it runs once per block from a cold instruction cache (the kernels before this
// one evict it), and each KB of it is paid for on the critical path.
#pragma once

#include <cuda_fp16.h>

#include "backend/cuda/attention.h"
#include "backend/cuda/common.cuh"
#include "backend/cuda/decode_common.cuh"
#include "backend/cuda/decode_merge.cuh"
#include "backend/cuda/decode_share.cuh"

namespace kvinfer::cuda {

using namespace decode;

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
  // reads only the step's positions, which no kernel writes: the kernels before this one
  // may still be running.
  Cursor load = start_share(a, lane);
  // the blocks of the next tile to copy (block tables, like positions, are written by no kernel)
  int blocks[kTileCopies<D>];
  auto look_ahead = [&]() {
    if (load.left > 0) {
      const int j0 = load.begin() + load.tile * kRows;
      tile_blocks<D>(a.layout, load.table, j0, load.end() - j0, blocks);
    }
  };
  look_ahead();
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
      if (rows >= kRows) {
        copy_tile<D, true>(stage_k(st), a.k_cache, a.layout, blocks, load.g, j0, rows, kv_policy);
        copy_tile<D, true>(stage_v(st), a.v_cache, a.layout, blocks, load.g, j0, rows, kv_policy);
      } else {
        copy_tile<D, false>(stage_k(st), a.k_cache, a.layout, blocks, load.g, j0, rows, kv_policy);
        copy_tile<D, false>(stage_v(st), a.v_cache, a.layout, blocks, load.g, j0, rows, kv_policy);
      }
      const bool last = load.tile == load.tiles - 1;
      t = TileInfo{load.b, load.g, load.s, load.splits, j0, load.end(),
                   (load.tile == 0 ? kFirstTile : 0) | (new_row ? kNewRow : 0) | (last ? kLastTile : 0) |
                       (last && load.left == 1 ? kShareEnd : 0)};
      load.advance(a);
      look_ahead();
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

}  // namespace kvinfer::cuda
