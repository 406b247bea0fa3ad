// Causal prefill attention on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a), for
// head_dim 64 and 128; attention_prefill.cu's mma.sync kernel serves every other case and GPU.
//
// Block = (query head, 128-row query tile of one sequence), two warpgroups of 64 rows each.
// Per tile of 128 keys each warpgroup computes S = Q K^T with both operands in shared memory
// (m64n128k16, asynchronous), masks and exponentiates S in registers (online softmax, base 2),
// and accumulates O += P V with P as the register operand straight from the S accumulators and V
// read from shared memory transposed (m64n64k16 per 64 output columns). Q, K and V tiles are
// stored in the 128-byte swizzled layout wgmma reads without bank conflicts: rows of 64 halves
// (128 bytes) in column blocks of 64, the 16-byte piece c of row r at piece c ^ (r % 8). K/V tiles
// come through the block tables by cp.async, two stages deep.
#include "backend/cuda/sm90/prefill_wgmma.h"

#include <cuda_fp16.h>

#include "backend/cuda/prefill_common.cuh"
#include "backend/cuda/ptx.cuh"
#include "backend/cuda/sm90/prefill_wgmma.cuh"
#include "backend/cuda/sm90/wgmma.cuh"
#include "core/cuda_check.h"

namespace kvinfer::cuda {

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "attention_prefill_wgmma.cu is built for sm_90a only (CMakeLists.txt)"
#endif

namespace {
constexpr int kRows = 128, kKeys = 128, kThreads = 256;  // 2 warpgroups x 64 query rows

template <int D>
struct WgmmaTiles {
  static constexpr int kStages = 2;
  static constexpr int kQ = kRows * D * 2, kKV = kKeys * D * 2;   // bytes of a Q and a K (or V) tile
  static constexpr size_t bytes = kQ + 2 * kStages * size_t{kKV} + 1024;  // Q, K and V per stage, alignment
};

}  // namespace

template <int D>
static __global__ void __launch_bounds__(kThreads, D == 64 ? 2 : 1)
    prefill_wgmma_kernel(const __half* __restrict__ q, int64_t q_stride, const __half* __restrict__ k_cache,
                         const __half* __restrict__ v_cache, KVLayout layout, const int32_t* __restrict__ block_tables,
                         const int32_t* __restrict__ seq_starts, const int32_t* __restrict__ positions,
                         int num_heads, int num_kv_heads, float scale, __half* __restrict__ out, int64_t out_stride) {
  using T = WgmmaTiles<D>;
  extern __shared__ unsigned char smem_raw[];
  // swizzled tiles start on 1024-byte boundaries (the swizzle pattern repeats every 8 rows)
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* const q_tile = smem_raw + ((1024 - (raw & 1023)) & 1023);
  auto k_tile = [&](int j) { return q_tile + T::kQ + (2 * (j % T::kStages)) * T::kKV; };  // of key tile j
  auto v_tile = [&](int j) { return q_tile + T::kQ + (2 * (j % T::kStages) + 1) * T::kKV; };

  prefill::Tile tile;
  if (!tile.locate<kRows>(seq_starts, positions, block_tables, layout, num_heads, num_kv_heads)) return;
  const int rows = tile.rows, first_pos = tile.first_pos, last_pos = tile.last_pos;
  const int kv_tiles = last_pos / kKeys + 1;

  auto issue_kv = [&](int j) {
    const int k0 = j * kKeys;
    auto valid = [&](int r) { return k0 + r <= last_pos; };
    auto at = [&](int r) { return layout.at(tile.table, tile.kvh, k0 + r); };
    prefill::issue_tile<D, kKeys, kThreads>(k_tile(j), k_cache, [&](int r) { return k_cache + at(r); }, valid);
    prefill::issue_tile<D, kKeys, kThreads>(v_tile(j), v_cache, [&](int r) { return v_cache + at(r); }, valid);
  };
  const __half* q_rows = q + (tile.start + tile.r0) * q_stride + static_cast<int64_t>(tile.head) * D;
  prefill::issue_tile<D, kRows, kThreads>(q_tile, q, [&](int r) { return q_rows + r * q_stride; }, [&](int r) { return r < rows; });
  issue_kv(0);
  cp_async_commit();

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int wr = wg * 64 + warp * 16;  // this warp's first row of the tile
  // positions of this thread's two rows (rows past the tile's end take the last row's), and the
  // warpgroup's first and last (-1: no rows, so it skips every tile)
  const int pos_lo = first_pos + min(wr + g, rows - 1), pos_hi = first_pos + min(wr + g + 8, rows - 1);
  const int wg_first = first_pos + wg * 64;
  const int wg_last = wg * 64 < rows ? first_pos + min(wg * 64 + 63, rows - 1) : -1;

  const float scale_log2 = scale * prefill::kLog2e;
  float o[D / 64][32] = {};  // per 64 output columns: (8 columns x rows g, g + 8) x 8
  prefill::RowSoftmax<16> softmax;
  const unsigned char* q_wg = q_tile + wg * 64 * 128;
  uint32_t p[8][4];  // P of the tile, as the A operand of 8 key steps of 16

  // O += P V of key tile j: key step kk is rows 16 kk.. of the V tile; column block c its columns
  // 64 c.. (V is MN-major here: 8-row groups 1024 bytes apart; one 64-column block per MMA)
  auto issue_pv = [&](int j) {
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
      for (int c = 0; c < D / 64; ++c)
        prefill::wgmma_64x64_rs(o[c], p[kk], smem_desc(v_tile(j) + c * kKeys * 128 + kk * 16 * 128, 1024, 1024));
    wgmma_commit();
  };

  for (int j = 0; j < kv_tiles; ++j) {
    cp_async_wait<0>();  // tile j has landed (for this thread; the barrier makes it every thread's)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // ... and visible to wgmma
    __syncthreads();     // every warpgroup is done with the stage tile j + 1 takes
    if (j + 1 < kv_tiles) issue_kv(j + 1);
    cp_async_commit();
    const int k0 = j * kKeys;
    if (k0 > wg_last) continue;  // every key of the tile is after this warpgroup's rows

    // S = Q K^T: per 16 of D, the 32-byte step inside a 128-byte row of column block kk / 4
    float s[16][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int col = (kk / 4), step = (kk % 4) * 32;
      prefill::wgmma_64x128_ss(s, smem_desc(q_wg + col * kRows * 128 + step, 16, 1024),
                      smem_desc(k_tile(j) + col * kKeys * 128 + step, 16, 1024), kk > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_registers(s);

    // the causal mask where the tile reaches past the warpgroup's first row, then the online softmax
    float alpha_lo, alpha_hi;
    softmax.step(s, k0, t, k0 + kKeys - 1 > wg_first, pos_lo, pos_hi, scale_log2, p, alpha_lo, alpha_hi);
#pragma unroll
    for (int c = 0; c < D / 64; ++c)
#pragma unroll
      for (int dn = 0; dn < 8; ++dn) {
        o[c][dn * 4] *= alpha_lo, o[c][dn * 4 + 1] *= alpha_lo;
        o[c][dn * 4 + 2] *= alpha_hi, o[c][dn * 4 + 3] *= alpha_hi;
      }
    wgmma_fence();
    issue_pv(j);
    wgmma_wait_all();
#pragma unroll
    for (int c = 0; c < D / 64; ++c) fence_registers(o[c]);
  }
  cp_async_wait<0>();  // (the last group is empty) no copy outlives the block

  __half* out_lo = out + (tile.start + tile.r0 + wr + g) * out_stride + static_cast<int64_t>(tile.head) * D;
  softmax.template store<D>(out_lo, out_lo + 8 * out_stride, wr + g < rows, wr + g + 8 < rows, t,
                            [&](int dn, int e) { return o[dn / 8][(dn % 8) * 4 + e]; });
}

template <int D>
static void launch_wgmma(const half_t* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
                         const KVLayout& layout, const int32_t* block_tables, const int32_t* seq_starts,
                         const int32_t* positions, int batch, int max_seq_rows, int num_heads, int num_kv_heads,
                         float scale, half_t* out, int64_t out_stride, cudaStream_t stream) {
  constexpr size_t bytes = WgmmaTiles<D>::bytes;
  KVINFER_CUDA_CHECK(cudaFuncSetAttribute(prefill_wgmma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  const dim3 grid(num_heads, (max_seq_rows + kRows - 1) / kRows, batch);
  prefill_wgmma_kernel<D><<<grid, kThreads, bytes, stream>>>(
      reinterpret_cast<const __half*>(q), q_stride, reinterpret_cast<const __half*>(k_cache),
      reinterpret_cast<const __half*>(v_cache), layout, block_tables, seq_starts, positions, num_heads,
      num_kv_heads, scale, reinterpret_cast<__half*>(out), out_stride);
  KVINFER_CUDA_CHECK_LAUNCH();
}

bool prefill_wgmma_runs(int head_dim) {
  if (head_dim != 64 && head_dim != 128) return false;
  int device = 0, major = 0, minor = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
}

void attention_prefill_wgmma(const half_t* q, int64_t q_stride, const half_t* k_cache, const half_t* v_cache,
                             const KVLayout& layout, const int32_t* block_tables, const int32_t* seq_starts,
                             const int32_t* positions, int batch, int max_seq_rows, int num_heads,
                             int num_kv_heads, int head_dim, float scale, half_t* out, int64_t out_stride,
                             cudaStream_t stream) {
#define KVINFER_WGMMA(D)                                                                                   \
  return launch_wgmma<D>(q, q_stride, k_cache, v_cache, layout, block_tables, seq_starts, positions, batch, \
                         max_seq_rows, num_heads, num_kv_heads, scale, out, out_stride, stream)
  if (head_dim == 64) KVINFER_WGMMA(64);
  KVINFER_WGMMA(128);
#undef KVINFER_WGMMA
}

}  // namespace kvinfer::cuda
