// Causal prefill attention, FlashAttention-2 style on mma.sync tensor cores (m16n8k16, fp16 in,
// fp32 accumulate). Block = (query head, 64-row query tile of one sequence), 4 warps, each owning
// 16 query rows for the whole pass: S = Q K^T, the causal mask, the online softmax (running max and
// sum per row, base 2) and O += P V all stay in registers; the probabilities P are the A operand of
// the PV product straight from the S accumulators (same fragment layout). K/V tiles of 64 keys are
// read through the block table with cp.async, two stages deep (tile j + 1 lands while tile j is
// used); Q is read once (into registers where head_dim <= 128). Shared memory rows are padded by
// 16 bytes, so the 8 rows one ldmatrix reads fall in different banks.
#include <cuda_fp16.h>

#include "backend/cuda/attention.h"

#include <cstdlib>
#include <cstring>

#include "backend/cuda/common.cuh"
#include "backend/cuda/prefill_common.cuh"
#include "backend/cuda/ptx.cuh"
#include "core/cuda_check.h"
#include "core/errors.h"
#if KVINFER_WITH_SM90A
#include "backend/cuda/sm90/prefill_wgmma.h"
#endif

namespace kvinfer::cuda {

namespace {
constexpr int kRows = 64, kKeys = 64, kWarps = 4, kThreads = kWarps * 32;
static_assert(kRows == kKeys, "one tile size for Q, K and V");

template <int D>
struct PrefillTiles {
  static constexpr int kLd = D + 8;  // halves per shared-memory row
  static constexpr size_t kTile = size_t{kRows} * kLd * sizeof(__half);
  static constexpr size_t bytes = 5 * kTile;  // Q, then K and V of two stages
  static constexpr bool kQInRegisters = D <= 128;  // D / 4 registers; at 256 Q is re-read per use
};

// 64 rows of D halves into a padded tile; row r comes from row_at(r), or is zero where !valid(r).
template <int D, class RowAt, class Valid>
__device__ __forceinline__ void issue_tile(__half* tile, const __half* any, RowAt row_at, Valid valid) {
  constexpr int kChunks = D / 8;  // 16-byte pieces of a row
  for (int e = threadIdx.x; e < kRows * kChunks; e += kThreads) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    const bool in = valid(r);
    cp_async16(tile + r * PrefillTiles<D>::kLd + c, in ? row_at(r) + c : any, in ? 16 : 0);
  }
}
}  // namespace

template <int D>
static __global__ void __launch_bounds__(kThreads)
    prefill_kernel(const __half* __restrict__ q, int64_t q_stride, const __half* __restrict__ k_cache,
                   const __half* __restrict__ v_cache, KVLayout layout, const int32_t* __restrict__ block_tables,
                   const int32_t* __restrict__ seq_starts, const int32_t* __restrict__ positions,
                   int num_heads, int num_kv_heads, float scale, __half* __restrict__ out, int64_t out_stride) {
  using T = PrefillTiles<D>;
  constexpr int kLd = T::kLd;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* const q_tile = reinterpret_cast<__half*>(smem);
  auto k_tile = [&](int stage) { return reinterpret_cast<__half*>(smem + (1 + 2 * stage) * T::kTile); };
  auto v_tile = [&](int stage) { return reinterpret_cast<__half*>(smem + (2 + 2 * stage) * T::kTile); };

  prefill::Tile tile;
  if (!tile.locate<kRows>(seq_starts, positions, block_tables, layout, num_heads, num_kv_heads)) return;
  const int rows = tile.rows, first_pos = tile.first_pos, last_pos = tile.last_pos;
  const int kv_tiles = last_pos / kKeys + 1;

  auto issue_kv = [&](int j) {
    const int k0 = j * kKeys;
    auto valid = [&](int r) { return k0 + r <= last_pos; };
    auto at = [&](int r) { return layout.at(tile.table, tile.kvh, k0 + r); };
    issue_tile<D>(k_tile(j & 1), k_cache, [&](int r) { return k_cache + at(r); }, valid);
    issue_tile<D>(v_tile(j & 1), v_cache, [&](int r) { return v_cache + at(r); }, valid);
  };
  const __half* q_rows = q + (tile.start + tile.r0) * q_stride + static_cast<int64_t>(tile.head) * D;
  issue_tile<D>(q_tile, q, [&](int r) { return q_rows + r * q_stride; }, [&](int r) { return r < rows; });
  issue_kv(0);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wr = warp * 16;  // this warp's first row of the tile
  // Positions of this thread's two rows (g, g + 8; rows past the tile's end take the last row's),
  // and of the warp's last row (-1: the warp has no rows, so it skips every tile).
  const int pos_lo = first_pos + min(wr + g, rows - 1), pos_hi = first_pos + min(wr + g + 8, rows - 1);
  const int warp_last = wr < rows ? first_pos + min(wr + 15, rows - 1) : -1;
  const int warp_first = first_pos + wr;

  // ldmatrix addresses: lane l supplies row l % 8 of matrix l / 8
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;  // Q (A): rows, then columns
  const int k_row = (lane & 7) + (lane >> 4) * 8, k_col = ((lane >> 3) & 1) * 8;  // K (B, by key): keys, then d
  const int v_row = a_row, v_col = a_col;                                           // V (B, transposed)

  cp_async_wait<0>();
  __syncthreads();
  constexpr int kQFrags = T::kQInRegisters ? D / 16 : 1;
  uint32_t qf[kQFrags][4];
  if constexpr (T::kQInRegisters) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], q_tile + (wr + a_row) * kLd + kk * 16 + a_col);
  }

  const float scale_log2 = scale * prefill::kLog2e;
  float o[D / 8][4] = {};
  prefill::RowSoftmax<8> softmax;

  for (int j = 0; j < kv_tiles; ++j) {
    cp_async_wait<0>();  // tile j has landed (for this thread; the barrier makes it every thread's)
    __syncthreads();     // ... and every warp is done with tile j - 1, whose stage tile j + 1 takes
    if (j + 1 < kv_tiles) issue_kv(j + 1);
    cp_async_commit();
    const int k0 = j * kKeys;
    if (k0 > warp_last) continue;  // every key of the tile is after this warp's rows
    const __half* ks = k_tile(j & 1);
    const __half* vs = v_tile(j & 1);

    // S = Q K^T: 16 rows x 64 keys, 8 accumulators of 8 keys
    float s[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      if constexpr (T::kQInRegisters) {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = qf[kk][i];
      } else {
        ldmatrix_x4(a, q_tile + (wr + a_row) * kLd + kk * 16 + a_col);
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t bk[4];
        ldmatrix_x4(bk, ks + (np * 16 + k_row) * kLd + kk * 16 + k_col);
        mma16816(s[2 * np], a, bk[0], bk[1]);
        mma16816(s[2 * np + 1], a, bk[2], bk[3]);
      }
    }
    // the causal mask where the tile reaches past the warp's first row, then the online softmax
    uint32_t p[4][4];  // P as the A operand of 4 key steps of 16
    float alpha_lo, alpha_hi;
    softmax.step(s, k0, t, k0 + kKeys - 1 > warp_first, pos_lo, pos_hi, scale_log2, p, alpha_lo, alpha_hi);
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      o[dn][0] *= alpha_lo, o[dn][1] *= alpha_lo;
      o[dn][2] *= alpha_hi, o[dn][3] *= alpha_hi;
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, vs + (kk * 16 + v_row) * kLd + dp * 16 + v_col);
        mma16816(o[2 * dp], p[kk], bv[0], bv[1]);
        mma16816(o[2 * dp + 1], p[kk], bv[2], bv[3]);
      }
    }
  }
  cp_async_wait<0>();  // (the last group is empty) no copy outlives the block

  __half* out_lo = out + (tile.start + tile.r0 + wr + g) * out_stride + static_cast<int64_t>(tile.head) * D;
  softmax.template store<D>(out_lo, out_lo + 8 * out_stride, wr + g < rows, wr + g + 8 < rows, t,
                            [&](int dn, int e) { return o[dn][e]; });
}

template <int D>
static void launch_prefill(const half_t* q, int64_t q_stride, const half_t* k_cache,
                           const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                           const int32_t* seq_starts, const int32_t* positions, int batch,
                           int max_seq_rows, int num_heads, int num_kv_heads, float scale,
                           half_t* out, int64_t out_stride, cudaStream_t stream) {
  constexpr size_t bytes = PrefillTiles<D>::bytes;
  // More than 48 KB of shared memory needs this opt-in, per device: cheap enough to repeat.
  KVINFER_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  const dim3 grid = prefill_grid(PrefillKernel::mma, num_heads, max_seq_rows, batch);
  prefill_kernel<D><<<grid, kThreads, bytes, stream>>>(
      reinterpret_cast<const __half*>(q), q_stride, reinterpret_cast<const __half*>(k_cache),
      reinterpret_cast<const __half*>(v_cache), layout, block_tables, seq_starts, positions, num_heads,
      num_kv_heads, scale, reinterpret_cast<__half*>(out), out_stride);
  KVINFER_CUDA_CHECK_LAUNCH();
}

// rows of a sequence from which the 192-row kernel runs (head_dim 64): below, its fewer blocks fill
// the SMs worse than 128-row tiles do
constexpr int kWideTileMinRows = 2048;

// KVINFER_PREFILL=mma|ws|ws_overlap|ws_overlap_192 in the environment, read once: that kernel where it runs (to
// measure what each gives end to end).
static PrefillKernel forced_kernel() {
  static const PrefillKernel forced = [] {
    const char* v = std::getenv("KVINFER_PREFILL");
    if (v && std::strcmp(v, "mma") == 0) return PrefillKernel::mma;
    if (v && std::strcmp(v, "ws") == 0) return PrefillKernel::ws;
    if (v && std::strcmp(v, "ws_overlap") == 0) return PrefillKernel::ws_overlap;
    if (v && std::strcmp(v, "ws_overlap_192") == 0) return PrefillKernel::ws_overlap_192;
    return PrefillKernel::automatic;
  }();
  return forced;
}

bool prefill_ws_available(int head_dim, const KVLayout& layout) {
#if KVINFER_WITH_SM90A
  return prefill_ws_runs(head_dim) && prefill_ws_supports(head_dim, layout);
#else
  (void)head_dim, (void)layout;
  return false;
#endif
}

PrefillKernel prefill_kernel_for(int head_dim, const KVLayout& layout, int max_seq_rows) {
  const PrefillKernel forced = forced_kernel();
  // At head_dim 64, 192-row tiles (three consumer warpgroups) once a sequence has enough rows to
  // fill the SMs with them; the same bits as 128-row tiles (docs/dev/prefill-attention-notes.md)
  const PrefillKernel hopper = head_dim == 64 && max_seq_rows >= kWideTileMinRows ? PrefillKernel::ws_overlap_192
                                                                                  : PrefillKernel::ws;
  return forced == PrefillKernel::mma || !prefill_ws_available(head_dim, layout) ? PrefillKernel::mma
         : forced == PrefillKernel::automatic                                    ? hopper
         : forced == PrefillKernel::ws_overlap_192 && head_dim != 64              ? PrefillKernel::ws
                                                                                  : forced;
}

dim3 prefill_grid(PrefillKernel kernel, int num_heads, int max_seq_rows, int batch) {
  int rows = kRows;  // mma.sync
#if KVINFER_WITH_SM90A
  if (kernel != PrefillKernel::mma && kernel != PrefillKernel::automatic) rows = prefill_ws_tile_rows(kernel);
#endif
  return dim3(num_heads, (max_seq_rows + rows - 1) / rows, batch);
}

void attention_prefill(const half_t* q, int64_t q_stride, const half_t* k_cache,
                       const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                       const int32_t* seq_starts, const int32_t* positions, int batch,
                       int max_seq_rows, int num_heads, int num_kv_heads, int head_dim, float scale,
                       half_t* out, int64_t out_stride, cudaStream_t stream, PrefillKernel kernel) {
  if (batch == 0 || max_seq_rows == 0) return;
  KVINFER_CHECK_ARG(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0, "num_heads=", num_heads,
                    " is not a positive multiple of num_kv_heads=", num_kv_heads);
  KVINFER_CHECK_ARG(q_stride % 8 == 0 && layout.head_dim % 8 == 0 && out_stride % 2 == 0,
                    "attention_prefill: q_stride=", q_stride, " and the cache row stride (", layout.head_dim,
                    ") must be multiples of 8 halves, out_stride=", out_stride, " a multiple of 2");
  KVINFER_CHECK_ARG(batch <= 65535 && num_heads <= 65535 && max_seq_rows <= int64_t{65535} * kRows,
                    "attention_prefill: batch=", batch, " num_heads=", num_heads, " max_seq_rows=", max_seq_rows,
                    " exceed the launch grid");
  if (kernel == PrefillKernel::automatic) kernel = prefill_kernel_for(head_dim, layout, max_seq_rows);
  if (kernel != PrefillKernel::mma) {
    KVINFER_CHECK_ARG(prefill_ws_available(head_dim, layout), "attention_prefill: the warp-specialised kernel does "
                      "not run head_dim=", head_dim, " block_shift=", layout.block_shift, " here (it needs a build for "
                      "sm_90a, a compute capability 9.0 GPU, head_dim 64 or 128 and KV blocks of >= 16 positions)");
#if KVINFER_WITH_SM90A
    return attention_prefill_ws(q, q_stride, k_cache, v_cache, layout, block_tables, seq_starts, positions, batch,
                                max_seq_rows, num_heads, num_kv_heads, head_dim, scale, out, out_stride, stream,
                                kernel);
#endif
  }
  switch (head_dim) {
#define KVINFER_PREFILL_CASE(D)                                                                \
  case D:                                                                                      \
    return launch_prefill<D>(q, q_stride, k_cache, v_cache, layout, block_tables, seq_starts,     \
                             positions, batch, max_seq_rows, num_heads, num_kv_heads, scale,   \
                             out, out_stride, stream);
    KVINFER_PREFILL_CASE(32)
    KVINFER_PREFILL_CASE(64)
    KVINFER_PREFILL_CASE(80)
    KVINFER_PREFILL_CASE(96)
    KVINFER_PREFILL_CASE(128)
    KVINFER_PREFILL_CASE(256)
#undef KVINFER_PREFILL_CASE
    default:
      throw std::invalid_argument(str("attention_prefill: head_dim=", head_dim,
                                      " is not supported (32, 64, 80, 96, 128, 256)"));
  }
}

}  // namespace kvinfer::cuda
