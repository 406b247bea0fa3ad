// Causal prefill attention on Hopper, warp-specialised in the manner of FlashAttention-3
// (PrefillKernel::ws; head_dim 64 and 128, KV blocks of at least 16 positions).
//
// Block = (query head, 128-row query tile of one sequence), three warpgroups. The producer
// warpgroup gives up its registers (setmaxnreg) and one of its threads streams the K and V tiles
// of 128 keys by TMA, a 16-position box per KV block piece (the block tables make each tile a
// gather), into a ring of stages guarded by mbarriers: K and V of a stage land on their own
// barriers, so S = Q K^T may start while V is still on the way, and go back on their own: K once
// both consumers have S of the tile, V once their P V of it is done. The two consumer warpgroups
// (64 query rows each, the freed registers) run the wgmma math of prefill_wgmma.cuh: S by
// m64n128k16 from shared memory, the online softmax in registers, O += P V with P as the register
// operand (n = head_dim). They take turns at the tensor cores ("ping-pong", two named barriers): a
// warpgroup issues P V of its previous tile and S of this one only after the other has issued its
// own, so one's softmax runs while the other's MMAs do. No block-wide barrier inside the loop.
// Overlap (PrefillKernel::ws_overlap) adds FlashAttention-3's intra-warpgroup overlap: a warpgroup
// issues S of tile j, then P V of tile j - 1 as a second group, waits for S alone and runs the
// softmax of tile j while its own P V still runs; K of a stage goes back to the producer after
// that softmax, V after P V. The same arithmetic in the same order: the same bits. At head_dim 64
// also with three consumer warpgroups (ws_overlap_192, WsShape): 1.5x the rows per K/V byte and a
// third warpgroup to fill the tensor cores, the automatic choice at head_dim 64 for sequences of
// 2048+ rows. ws_overlap itself is opt-in: it was measured no faster than ws
// (docs/dev/prefill-attention-notes.md, runs 6 and 7).
#include <cuda.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "backend/cuda/prefill_common.cuh"
#include "backend/cuda/ptx.cuh"
#include "backend/cuda/sm90/prefill_wgmma.cuh"
#include "backend/cuda/sm90/prefill_wgmma.h"
#include "backend/cuda/sm90/tensor_map.h"
#include "backend/cuda/sm90/wgmma.cuh"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "attention_prefill_ws.cu is built for sm_90a only (CMakeLists.txt)"
#endif

namespace {
constexpr int kKeys = 128;               // keys of a tile
constexpr int kPiece = 16;               // positions of a TMA box (KV blocks hold a multiple of it)
// named barriers (0 is __syncthreads): the consumers' Q fill, and each consumer's turn (synced by
// its warpgroup, arrived at by the one before it: 256 threads)
constexpr int kQBarrier = 1, kTurnBarrier = 2, kTurnThreads = 256;

// G consumer warpgroups of 64 query rows (2, or 3 at head_dim 64: FA3's 192-row tiles, more rows
// per K/V byte and a third softmax to hide) and one producer; the registers each side keeps.
template <int D, int G>
struct WsShape {
  static constexpr int kRows = 64 * G, kConsumers = 128 * G, kThreads = kConsumers + 128;
  static constexpr int kProducerRegs = G == 2 ? 40 : 32, kConsumerRegs = G == 2 ? 232 : 160;
  static_assert(kProducerRegs * 128 + kConsumerRegs * kConsumers <= 65536, "one block an SM");
  static constexpr int kStages = D == 64 ? 4 : 2;
  static constexpr int kQ = kRows * D * 2, kKV = kKeys * D * 2;  // bytes of a Q and a K (or V) tile
  static constexpr size_t kData = kQ + 2 * size_t{kKV} * kStages;
  static constexpr size_t bytes = 1024 + kData + 4 * kStages * 8;  // alignment, tiles, barriers
  static_assert(bytes <= 232448, "227 KB of shared memory a block");
};

__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
}  // namespace

template <int D, bool Overlap, int G>
static __global__ void __launch_bounds__(WsShape<D, G>::kThreads, 1)
    prefill_ws_kernel(const __grid_constant__ CUtensorMap kmap, const __grid_constant__ CUtensorMap vmap,
                      const __half* __restrict__ q, int64_t q_stride, KVLayout layout,
                      const int32_t* __restrict__ block_tables, const int32_t* __restrict__ seq_starts,
                      const int32_t* __restrict__ positions, int num_heads, int num_kv_heads, float scale,
                      __half* __restrict__ out, int64_t out_stride) {
  using T = WsShape<D, G>;
  constexpr int kRows = T::kRows, kConsumers = T::kConsumers;
  constexpr int S = T::kStages;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* const q_tile = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  auto k_tile = [&](int s) { return q_tile + T::kQ + (2 * s) * T::kKV; };
  auto v_tile = [&](int s) { return q_tile + T::kQ + (2 * s + 1) * T::kKV; };
  uint64_t* const k_full = reinterpret_cast<uint64_t*>(q_tile + T::kData);  // [stage]: its K landed
  uint64_t* const v_full = k_full + S;                                     // [stage]: its V landed
  uint64_t* const k_empty = v_full + S;  // [stage]: both consumers are done with its K
  uint64_t* const v_empty = k_empty + S;  // ... and with its V

  prefill::Tile tile{};
  if (!tile.locate<kRows>(seq_starts, positions, block_tables, layout, num_heads, num_kv_heads)) return;
  const int rows = tile.rows, first_pos = tile.first_pos, last_pos = tile.last_pos;
  const int kv_tiles = last_pos / kKeys + 1;

  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s)
      mbar_init(k_full + s, 1), mbar_init(v_full + s, 1), mbar_init(k_empty + s, G), mbar_init(v_empty + s, G);
    mbar_fence_init();
  }
  __syncthreads();

  if (threadIdx.x >= kConsumers) {  // the producer warpgroup
    registers_down<T::kProducerRegs>();
    if (threadIdx.x == kConsumers) {
      const uint64_t policy = l2_policy_evict_last();  // the query tiles of this head read them again
      // the pool row of the piece at `key` (pieces past the sequence's end load its first one: finite
      // values the mask leaves out)
      auto piece_row = [&](int key) {
        return static_cast<int>(layout.at(tile.table, tile.kvh, key <= last_pos ? key : 0) / D);
      };
      constexpr int kPieces = kKeys / kPiece;
      // the pool rows of tile j's pieces, read from the block table once for K and V, all 8 loads
      // in flight together (a TMA's "memory" clobber would otherwise serialise a load per piece)
      auto piece_rows = [&](int j, int (&rows)[kPieces]) {
#pragma unroll
        for (int p = 0; p < kPieces; ++p) rows[p] = piece_row(j * kKeys + p * kPiece);
      };
      // tile j of K or V into `dst`, landing on `bar`: 8 pieces of 16 rows, D / 64 boxes each
      auto load = [&](const int (&rows)[kPieces], unsigned char* dst, const CUtensorMap* map, uint64_t* bar) {
        mbar_arrive_expect_tx(bar, T::kKV);
#pragma unroll
        for (int p = 0; p < kPieces; ++p)
#pragma unroll
          for (int c = 0; c < D / 64; ++c)
            tma_load_2d(dst + c * kKeys * 128 + p * kPiece * 128, map, c * 64, rows[p], bar, policy);
      };
      int next[kPieces];
      piece_rows(0, next);
      for (int j = 0; j < kv_tiles; ++j) {
        const int s = j % S;
        int rows[kPieces];
#pragma unroll
        for (int p = 0; p < kPieces; ++p) rows[p] = next[p];
        if (j + 1 < kv_tiles) piece_rows(j + 1, next);  // the next tile's rows load while this one waits
        if (j >= S) mbar_wait(k_empty + s, ((j / S) & 1) ^ 1);  // use j / S - 1 of the stage is done
        load(rows, k_tile(s), &kmap, k_full + s);
        if (j >= S) mbar_wait(v_empty + s, ((j / S) & 1) ^ 1);
        load(rows, v_tile(s), &vmap, v_full + s);
      }
    }
    return;
  }
  registers_up<T::kConsumerRegs>();

  // Q by cp.async from the consumers (rows past the tile's end: zeros)
  const __half* q_rows = q + (tile.start + tile.r0) * q_stride + static_cast<int64_t>(tile.head) * D;
  prefill::issue_tile<D, kRows, kConsumers>(q_tile, q, [&](int r) { return q_rows + r * q_stride; },
                                            [&](int r) { return r < rows; });
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async();  // visible to wgmma
  named_sync(kQBarrier, kConsumers);

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int wr = wg * 64 + warp * 16;  // this warp's first row of the tile
  const int pos_lo = first_pos + min(wr + g, rows - 1), pos_hi = first_pos + min(wr + g + 8, rows - 1);
  const int wg_first = first_pos + wg * 64;
  const bool stores = wg * 64 < rows;  // a warpgroup past the tile's last row computes, stores nothing
  const bool leader = threadIdx.x % 128 == 0;  // arrives for the warpgroup on `empty`

  const float scale_log2 = scale * prefill::kLog2e;
  float o[D / 64][32] = {};
  prefill::RowSoftmax<16> softmax;
  const unsigned char* q_wg = q_tile + wg * 64 * 128;
  uint32_t p[8][4];  // P of the last tile, as the A operand of 8 key steps of 16

  // O += P V of the tile in stage s: per 16 keys, all D columns in one instruction (V's column
  // blocks of 64 lie kKeys * 128 bytes apart, 8-key groups 1024)
  // (descriptors: one per tile, advanced by constants per MMA; the softmax's warps issue these too)
  auto issue_pv = [&](int s) {
    const uint64_t v = smem_desc(v_tile(s), kKeys * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      if constexpr (D == 128) prefill::wgmma_64x128_rs(o[0], o[1], p[kk], desc_advance(v, kk * 16 * 128));
      else prefill::wgmma_64x64_rs(o[0], p[kk], desc_advance(v, kk * 16 * 128));
    }
  };

  // S = Q K^T of the tile in stage s: per 16 of D, the 32-byte step inside a 128-byte row of
  // column block kk / 4
  const uint64_t q_desc = smem_desc(q_wg, 16, 1024);
  auto issue_s = [&](float (&sc)[16][4], int s) {
    const uint64_t k = smem_desc(k_tile(s), 16, 1024);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int col = kk / 4, step = (kk % 4) * 32;
      prefill::wgmma_64x128_ss(sc, desc_advance(q_desc, col * kRows * 128 + step),
                               desc_advance(k, col * kKeys * 128 + step), kk > 0);
    }
  };
  // O *= the rows' factors, skipped where no row of the warp has a new maximum (every factor is then
  // exp2(0) = 1 exactly: the same bits), as at most tiles of a long sequence
  auto rescale = [&](float alpha_lo, float alpha_hi) {
    if (!__any_sync(0xffffffffu, alpha_lo != 1.0f || alpha_hi != 1.0f)) return;
#pragma unroll
    for (int c = 0; c < D / 64; ++c)
#pragma unroll
      for (int dn = 0; dn < 8; ++dn) {
        o[c][dn * 4] *= alpha_lo, o[c][dn * 4 + 1] *= alpha_lo;
        o[c][dn * 4 + 2] *= alpha_hi, o[c][dn * 4 + 3] *= alpha_hi;
      }
  };

  // Turns go round: warpgroup wg issues after wg - 1, the last one's arrival opens warpgroup 0's
  const int next_turn = kTurnBarrier + (wg + 1) % G;
  if (wg == G - 1) named_arrive(kTurnBarrier, kTurnThreads);  // warpgroup 0 goes first
  // Every warpgroup runs every tile of the block: one past its rows is masked out whole (its P is
  // zeros), which costs a tile at most and keeps every MMA out of divergent code (ptxas serialises
  // MMAs it cannot prove uniform).
  {  // tile 0 alone: no P V before it, so no MMA issued in divergent code (ptxas would fence it)
    mbar_wait(k_full, 0);
    named_sync(kTurnBarrier + wg, kTurnThreads);  // the other warpgroup has issued its MMAs
    float sc[16][4];
    wgmma_fence();
    issue_s(sc, 0);
    wgmma_commit();
    named_arrive(next_turn, kTurnThreads);  // its turn
    wgmma_wait_all();
    fence_registers(sc);
    // K of a tile goes back as soon as S is read: its stage refills a whole tile ahead of its next
    // use (tied to V's release, a 2-stage ring would leave the load only one softmax to land in)
    mbar_arrive_if(k_empty, leader);
    float alpha_lo, alpha_hi;  // (O is still zero: nothing to rescale)
    softmax.step(sc, 0, t, kKeys - 1 > wg_first, pos_lo, pos_hi, scale_log2, p, alpha_lo, alpha_hi);
  }
  if constexpr (!Overlap) {
    for (int j = 1; j < kv_tiles; ++j) {  // P V of tile j - 1 and S of tile j as one group
      const int s = j % S, ps = (j - 1) % S;
      mbar_wait(k_full + s, (j / S) & 1);
      mbar_wait(v_full + ps, ((j - 1) / S) & 1);
      named_sync(kTurnBarrier + wg, kTurnThreads);
      float sc[16][4];
      wgmma_fence();
      issue_pv(ps);
      issue_s(sc, s);
      wgmma_commit();
      named_arrive(next_turn, kTurnThreads);
      wgmma_wait_all();
#pragma unroll
      for (int c = 0; c < D / 64; ++c) fence_registers(o[c]);
      fence_registers(sc);
      mbar_arrive_if(k_empty + s, leader);
      mbar_arrive_if(v_empty + ps, leader);

      float alpha_lo, alpha_hi;
      const int k0 = j * kKeys;
      softmax.step(sc, k0, t, k0 + kKeys - 1 > wg_first, pos_lo, pos_hi, scale_log2, p, alpha_lo, alpha_hi);
      rescale(alpha_lo, alpha_hi);
    }
  } else {
    // Tile j >= 1: S of j and P V of j - 1 in flight together, the softmax of j under P V. Nothing
    // branches while MMAs are in flight (ptxas would serialise them): the mask is a compile-time
    // choice of the loop, the barrier arrivals are predicated.
    auto visit = [&](int j, auto masked) {
      const int s = j % S, ps = (j - 1) % S;
      mbar_wait(k_full + s, (j / S) & 1);
      mbar_wait(v_full + ps, ((j - 1) / S) & 1);
      named_sync(kTurnBarrier + wg, kTurnThreads);
      float sc[16][4];
#pragma unroll
      for (int c = 0; c < D / 64; ++c) fence_registers(o[c]);  // the last rescale and pack stay above
      fence_registers(p);
      wgmma_fence();
      issue_s(sc, s);
      wgmma_commit();
      issue_pv(ps);
      wgmma_commit();
      named_arrive(next_turn, kTurnThreads);
      wgmma_wait<1>();  // S has landed (groups complete in order); P V still runs
      fence_registers(sc);
      if constexpr (decltype(masked)::value) softmax.mask_past(sc, j * kKeys, t, pos_lo, pos_hi);
      float alpha_lo, alpha_hi;
      softmax.exps(sc, scale_log2, alpha_lo, alpha_hi);
      // K is read. ptxas keeps barrier operations in order with the wait below but moves arithmetic
      // freely past it (it had hoisted the wait above every exp2): an arrival predicated on the row
      // sums, which depend on every exp2 and are never negative, anchors the softmax above the wait.
      mbar_arrive_if(k_empty + s, leader && !(softmax.l_lo < 0.0f) && !(softmax.l_hi < 0.0f));
      wgmma_wait_all();
#pragma unroll
      for (int c = 0; c < D / 64; ++c) fence_registers(o[c]);
      fence_registers(p);
      mbar_arrive_if(v_empty + ps, leader);
      rescale(alpha_lo, alpha_hi);
      softmax.pack(sc, p);
    };
    // tiles whose keys all precede the block's first row need no mask, for either warpgroup
    const int unmasked_end = max(1, min(kv_tiles, (first_pos + 1) / kKeys));
    for (int j = 1; j < unmasked_end; ++j) visit(j, std::false_type{});
    for (int j = unmasked_end; j < kv_tiles; ++j) visit(j, std::true_type{});
  }
  // the last tile's P V (the turns are over: the other warpgroup no longer waits on this one's)
  const int last = kv_tiles - 1, valid = last_pos - last * kKeys + 1;  // keys of the last tile
  mbar_wait(v_full + last % S, (last / S) & 1);
  if (valid < kKeys) {
    // its V rows past the sequence's end hold whatever the cache block holds there: zeros, so that
    // their P of 0 adds 0 even if that were not finite (the other kernels read zeros there too)
    unsigned char* const v = v_tile(last % S);
    for (int e = threadIdx.x; e < (kKeys - valid) * (D / 8); e += kConsumers) {
      const int r = valid + e / (D / 8), c = e % (D / 8);
      *reinterpret_cast<uint4*>(v + (c / 8) * kKeys * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4)) = make_uint4(0, 0, 0, 0);
    }
    fence_proxy_async();
    named_sync(kQBarrier, kConsumers);
  }
  wgmma_fence();
  issue_pv(last % S);
  wgmma_commit();
  wgmma_wait_all();
#pragma unroll
  for (int c = 0; c < D / 64; ++c) fence_registers(o[c]);
  if (wg == 0) named_sync(kTurnBarrier, kTurnThreads);  // the last one's last arrive: barriers end balanced

  __half* out_lo = out + (tile.start + tile.r0 + wr + g) * out_stride + static_cast<int64_t>(tile.head) * D;
  if (stores)
    softmax.template store<D>(out_lo, out_lo + 8 * out_stride, wr + g < rows, wr + g + 8 < rows, t,
                              [&](int dn, int e) { return o[dn / 8][(dn % 8) * 4 + e]; });
}

template <int D, bool Overlap, int G>
static void launch_ws(const half_t* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
                      const KVLayout& layout, const int32_t* block_tables, const int32_t* seq_starts,
                      const int32_t* positions, int batch, int max_seq_rows, int num_heads, int num_kv_heads,
                      float scale, half_t* out, int64_t out_stride, cudaStream_t stream) {
  using T = WsShape<D, G>;
  constexpr size_t bytes = T::bytes;
  static const bool sized = [] {
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(prefill_ws_kernel<D, Overlap, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(bytes)));
    return true;
  }();
  (void)sized;
  // one layer's K (or V) pool as rows of head_dim values: a 16-position piece of a block is 16 rows
  const int64_t pool_rows = static_cast<int64_t>(layout.num_blocks) * layout.block_stride / D;
  const CUtensorMap kmap = tma_map_2d(k_cache, pool_rows, D, D, kPiece, 64),
                    vmap = tma_map_2d(v_cache, pool_rows, D, D, kPiece, 64);
  const dim3 grid(num_heads, (max_seq_rows + T::kRows - 1) / T::kRows, batch);
  prefill_ws_kernel<D, Overlap, G><<<grid, T::kThreads, bytes, stream>>>(
      kmap, vmap, reinterpret_cast<const __half*>(q), q_stride, layout, block_tables, seq_starts, positions,
      num_heads, num_kv_heads, scale, reinterpret_cast<__half*>(out), out_stride);
  KVINFER_CUDA_CHECK_LAUNCH();
}

bool prefill_ws_runs(int head_dim) {
  if (head_dim != 64 && head_dim != 128) return false;
  int device = 0, major = 0, minor = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
}

int prefill_ws_tile_rows(PrefillKernel kernel) {
  return kernel == PrefillKernel::ws_overlap_192 ? WsShape<64, 3>::kRows : WsShape<64, 2>::kRows;
}

bool prefill_ws_supports(int head_dim, const KVLayout& layout) {
  return (head_dim == 64 || head_dim == 128) && layout.head_dim == head_dim && layout.block_shift >= 4 &&
         layout.num_blocks > 0 && layout.block_stride % head_dim == 0 && layout.head_stride % head_dim == 0 &&
         static_cast<int64_t>(layout.num_blocks) * layout.block_stride / head_dim < (int64_t{1} << 31);
}

void attention_prefill_ws(const half_t* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
                          const KVLayout& layout, const int32_t* block_tables, const int32_t* seq_starts,
                          const int32_t* positions, int batch, int max_seq_rows, int num_heads, int num_kv_heads,
                          int head_dim, float scale, half_t* out, int64_t out_stride, cudaStream_t stream,
                          PrefillKernel kernel) {
  KVINFER_CHECK_ARG(prefill_ws_supports(head_dim, layout), "attention_prefill: the warp-specialised kernel takes "
                    "head_dim 64 or 128 and KV blocks of >= 16 positions with a known pool (head_dim=", head_dim,
                    ", block_shift=", layout.block_shift, ", num_blocks=", layout.num_blocks, ")");
  KVINFER_CHECK_ARG(reinterpret_cast<uintptr_t>(k_cache) % 16 == 0 && reinterpret_cast<uintptr_t>(v_cache) % 16 == 0,
                    "attention_prefill: K/V caches must be 16-byte aligned");
  KVINFER_CHECK_ARG(kernel == PrefillKernel::ws || kernel == PrefillKernel::ws_overlap ||
                        (kernel == PrefillKernel::ws_overlap_192 && head_dim == 64),
                    "attention_prefill_ws: no such warp-specialised kernel at head_dim=", head_dim);
  const auto launch = head_dim == 128                          ? (kernel == PrefillKernel::ws ? launch_ws<128, false, 2>
                                                                                              : launch_ws<128, true, 2>)
                      : kernel == PrefillKernel::ws             ? launch_ws<64, false, 2>
                      : kernel == PrefillKernel::ws_overlap     ? launch_ws<64, true, 2>
                                                                : launch_ws<64, true, 3>;
  launch(q, q_stride, k_cache, v_cache, layout, block_tables, seq_starts, positions, batch, max_seq_rows, num_heads,
         num_kv_heads, scale, out, out_stride, stream);
}

}  // namespace kvinfer::cuda
