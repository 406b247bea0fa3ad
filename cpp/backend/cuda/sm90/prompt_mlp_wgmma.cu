// The prompt step's gate/up projection with silu(gate) * up in its epilogue, on Hopper
// (prompt_mlp.h). C tiles of 128 rows x 128 outputs: the tile multiplies the rows by 256 weight
// rows, the 128 gate rows of its outputs and their 128 up rows (I rows further on), so every
// thread holds the gate and the up value of each of its outputs and finishes them without an
// exchange. A block of 384 threads: a producer warpgroup (one thread) streams 128 x 64 boxes of x
// and two 128 x 64 boxes of W by TMA (128-byte swizzle) into 4 stages; two consumer warpgroups
// (64 rows each) run m64n256k16 warpgroup MMAs from shared memory, 128 fp32 accumulators a thread.
// The grid is persistent (one block an SM) and walks the tiles M-fast: consecutive tiles share a
// W tile, so a wave of blocks reads a few of W's tiles from DRAM and x (the whole prompt, small)
// stays in L2. The producer counts k-steps over the block's whole walk, so it loads the next
// tile's first stages while the consumers finish the last one. Rows past M read zeros (TMA) and
// are not stored. Each output: g and u rounded to fp16 as the GEMM's stored output is, then
// silu_times() as silu_mul computes it; the sums over K are the MMAs' (not cuBLAS's order).
#include "backend/cuda/sm90/prompt_mlp_wgmma.h"

#include <cuda.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>

#include "backend/cuda/common.cuh"
#include "backend/cuda/sm90/tensor_map.h"
#include "backend/cuda/sm90/wgmma.cuh"
#include "core/cuda_check.h"

namespace kvinfer::cuda {

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "prompt_mlp_wgmma.cu is built for sm_90a only (CMakeLists.txt)"
#endif

namespace {
constexpr int BM = 128, BO = 128, BK = 64, kStages = 4;  // rows, outputs (gate + up rows: 2 BO), K a stage
constexpr int kABytes = BM * BK * 2, kWBytes = 2 * BO * BK * 2, kStageBytes = kABytes + kWBytes;
constexpr int kConsumers = 256, kThreads = kConsumers + 128;
constexpr size_t kSmem = 1024 + size_t{kStages} * kStageBytes + 2 * kStages * sizeof(uint64_t);


__global__ void __launch_bounds__(kThreads, 1)
    gate_up_kernel(const __grid_constant__ CUtensorMap xmap, const __grid_constant__ CUtensorMap wmap, __half* out,
                   int64_t ldo, int K, int M, int I, int m_tiles, int tiles) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* const base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzled boxes
  auto a_tile = [&](int s) { return base + s * kStageBytes; };           // [128 rows][64]
  auto w_tile = [&](int s) { return base + s * kStageBytes + kABytes; };  // [128 gate rows, 128 up rows][64]
  uint64_t* const full = reinterpret_cast<uint64_t*>(base + kStages * kStageBytes);
  uint64_t* const empty = full + kStages;
  const int steps = K / BK;
  if (threadIdx.x == 0) {
    // a stage goes back once every consumer thread's MMAs have read it (a warp's wgmma wait covers
    // its own share of the warpgroup's MMAs only)
    for (int s = 0; s < kStages; ++s) mbar_init(full + s, 1), mbar_init(empty + s, kConsumers);
    mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // producer: k-steps counted over the whole walk (g)
    registers_down<40>();
    if (threadIdx.x == kConsumers) {
      const uint64_t policy = l2_policy_evict_last();  // x and W tiles are read by other blocks too
      int g = 0;
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int m0 = (t % m_tiles) * BM, o0 = (t / m_tiles) * BO;
        for (int i = 0; i < steps; ++i, ++g) {
          const int s = g % kStages;
          if (g >= kStages) mbar_wait(empty + s, ((g / kStages) & 1) ^ 1);
          mbar_arrive_expect_tx(full + s, kStageBytes);
          tma_load_2d(a_tile(s), &xmap, i * BK, m0, full + s, policy);
          tma_load_2d(w_tile(s), &wmap, i * BK, o0, full + s, policy);
          tma_load_2d(w_tile(s) + kWBytes / 2, &wmap, i * BK, I + o0, full + s, policy);
        }
      }
    }
    return;
  }
  registers_up<232>();
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  float acc[32][4];
  int g = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int m0 = (t % m_tiles) * BM, o0 = (t / m_tiles) * BO;
#pragma unroll
    for (int j = 0; j < 32; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int i = 0; i < steps; ++i, ++g) {
      const int s = g % kStages;
      mbar_wait(full + s, (g / kStages) & 1);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk)
        wgmma_ss<256>(acc, smem_desc(a_tile(s) + wg * 64 * 128 + kk * 32, 16, 1024),
                      smem_desc(w_tile(s) + kk * 32, 16, 1024));
      wgmma_commit();
      wgmma_wait<1>();  // step g - 1's MMAs are done: its stage may be refilled
      mbar_arrive_if(empty + (g + kStages - 1) % kStages, i > 0);
    }
    wgmma_wait<0>();
    mbar_arrive(empty + (g + kStages - 1) % kStages);  // the tile's last stage
    fence_registers(acc);
    // acc[j] (j < 16): gate outputs o0 + 8 j + 2 (lane % 4) (+ 1); acc[j + 16]: their up values
    const int row = m0 + wg * 64 + warp * 16 + lane / 4;
    auto act = [](float gate, float up) {
      return silu_times(__half2float(__float2half_rn(gate)), __half2float(__float2half_rn(up)));
    };
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int col = o0 + 8 * j + 2 * (lane % 4);
      if (row < M)
        *reinterpret_cast<__half2*>(out + int64_t(row) * ldo + col) =
            __floats2half2_rn(act(acc[j][0], acc[j + 16][0]), act(acc[j][1], acc[j + 16][1]));
      if (row + 8 < M)
        *reinterpret_cast<__half2*>(out + int64_t(row + 8) * ldo + col) =
            __floats2half2_rn(act(acc[j][2], acc[j + 16][2]), act(acc[j][3], acc[j + 16][3]));
    }
  }
}
}  // namespace

void prompt_mlp_gate_up_wgmma(const half_t* x, int64_t ldx, const half_t* w, int I, int K, int M, half_t* out,
                              int64_t ldo, cudaStream_t stream) {
  int device = 0, sms = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  // more than 48 KB of shared memory needs an opt-in per kernel and device (done outside graph
  // capture: the engine runs a step before it captures one)
  static std::atomic<uint64_t> sized{0};
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (!(sized.load(std::memory_order_acquire) & bit)) {
    KVINFER_CUDA_CHECK(
        cudaFuncSetAttribute(gate_up_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)));
    sized.fetch_or(bit, std::memory_order_release);
  }
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int m_tiles = (M + BM - 1) / BM, tiles = m_tiles * (I / BO);
  const CUtensorMap xmap = tma_map_2d(x, M, K, ldx, BM, BK), wmap = tma_map_2d(w, 2 * int64_t(I), K, K, BO, BK);
  gate_up_kernel<<<std::min(tiles, sms), kThreads, kSmem, stream>>>(xmap, wmap, reinterpret_cast<__half*>(out), ldo,
                                                                    K, M, I, m_tiles, tiles);
  KVINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace kvinfer::cuda
