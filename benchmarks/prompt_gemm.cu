// Experiment for prompt steps' GEMMs on Hopper (docs/dev/prefill-attention-notes.md, runs 9-10): a
// time to first token of 8 ms needs SiLU·mul, RMSNorm and RoPE + K/V write fused into the
// projections, which cuBLAS cannot do; first, can a GEMM of our own match cuBLAS at these shapes?
// C[M][N] = A[M][K] W[N][K]^T (fp16, fp32 accumulation), Llama-3.2-1B's projections at M = 2048.
// A block of 384 threads takes a 128 x 256 tile of C: a producer warpgroup (one thread) streams
// 128 x 64 boxes of A and 256 x 64 boxes of W by TMA (128-byte swizzle) into 4 stages; two consumer
// warpgroups (64 rows each) run m64n256k16 warpgroup MMAs from shared memory, 128 fp32 accumulators
// a thread. Epilogues: fp16 out, or silu(gate) * up where W's rows are interleaved in blocks of 128
// (a tile's columns 0-127 are gate rows, 128-255 the matching up rows: a thread holds both of each
// pair, so the product needs no exchange). Blocks take one tile each, or persist (one an SM) and walk
// tiles, the producer running ahead into the next tile. Against cuBLAS (GemmEx, fp32 compute) in the same run.
// And the engine's kernel for the fused case (the same tiles: the same bits expected).
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -DKVINFER_WITH_CUDA=1 -Icpp -o prompt_gemm \
//     benchmarks/prompt_gemm.cu cpp/backend/cuda/sm90/prompt_mlp_wgmma.cu cpp/backend/cuda/sm90/tensor_map.cu \
//     cpp/core/errors.cpp \
//     -lcublas && ./prompt_gemm
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/sm90/prompt_mlp_wgmma.h"
#include "backend/cuda/sm90/wgmma.cuh"

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      return 1;                                                                      \
    }                                                                                \
  } while (0)

constexpr int BM = 128, BN = 256, BK = 64, kStages = 4;
constexpr int kABytes = BM * BK * 2, kBBytes = BN * BK * 2, kStageBytes = kABytes + kBBytes;
constexpr int kThreads = 384;
constexpr size_t kSmem = 1024 + size_t{kStages} * kStageBytes + 2 * kStages * 8;
enum Epilogue { kStore = 0, kSiluMul = 1 };

using namespace kvinfer::cuda;  // the engine's PTX wrappers (cpp/backend/cuda/sm90/wgmma.cuh)


// Tiles t = blockIdx.x, + gridDim.x, ...: one a block (grid = tiles), or persistent (grid = SMs),
// where the producer runs on into the next tile's stages while the consumers finish a tile. Order:
// m_fast takes the M tiles of one W tile in turn (a wave of blocks reads a few W tiles from DRAM,
// each once), else the N tiles of one A tile.
__global__ void __launch_bounds__(kThreads, 1)
    gemm_kernel(const __grid_constant__ CUtensorMap amap, const __grid_constant__ CUtensorMap wmap, __half* c,
                int ldc, int K, int epilogue, int m_tiles, int n_tiles, int m_fast) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* const base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  auto a_tile = [&](int s) { return base + s * kStageBytes; };
  auto w_tile = [&](int s) { return base + s * kStageBytes + kABytes; };
  uint64_t* const full = reinterpret_cast<uint64_t*>(base + kStages * kStageBytes);
  uint64_t* const empty = full + kStages;
  const int steps = K / BK, tiles = m_tiles * n_tiles;
  auto origin = [&](int t, int& m0, int& n0) {
    m0 = (m_fast ? t % m_tiles : t / n_tiles) * BM;
    n0 = (m_fast ? t / m_tiles : t % n_tiles) * BN;
  };
  if (threadIdx.x == 0) {
    // a stage goes back once every consumer thread's MMAs have read it (a warp's wgmma wait covers
    // its own share of the warpgroup's MMAs only)
    for (int s = 0; s < kStages; ++s) mbar_init(full + s, 1), mbar_init(empty + s, 256);
    mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x >= 256) {  // producer: k-steps counted over the block's whole walk (g)
    registers_down<40>();
    const uint64_t policy = l2_policy_evict_last();  // A and W tiles are read by other blocks too
    if (threadIdx.x == 256) {
      int g = 0;
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int m0, n0;
        origin(t, m0, n0);
        for (int i = 0; i < steps; ++i, ++g) {
          const int s = g % kStages;
          if (g >= kStages) mbar_wait(empty + s, ((g / kStages) & 1) ^ 1);
          mbar_arrive_expect_tx(full + s, kStageBytes);
          tma_load_2d(a_tile(s), &amap, i * BK, m0, full + s, policy);
          tma_load_2d(w_tile(s), &wmap, i * BK, n0, full + s, policy);
        }
      }
    }
    return;
  }
  registers_up<232>();
  const int wg = threadIdx.x / 128;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g8 = lane / 4, t4 = lane % 4;
  float acc[32][4];
  int g = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int m0, n0;
    origin(t, m0, n0);
#pragma unroll
    for (int j = 0; j < 32; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int i = 0; i < steps; ++i, ++g) {
      const int s = g % kStages;
      mbar_wait(full + s, (g / kStages) & 1);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk)
        wgmma_ss<256>(acc, smem_desc(a_tile(s) + wg * 64 * 128 + kk * 32, 16, 1024), smem_desc(w_tile(s) + kk * 32, 16, 1024));
      wgmma_commit();
      wgmma_wait<1>();  // step g - 1's MMAs are done: its stage may be refilled
      mbar_arrive_if(empty + (g + kStages - 1) % kStages, i > 0);
    }
    wgmma_wait<0>();
    mbar_arrive(empty + (g + kStages - 1) % kStages);  // the tile's last stage
    fence_registers(acc);
    const int row = m0 + wg * 64 + warp * 16 + g8;
    if (epilogue == kStore) {
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const int col = n0 + 8 * j + 2 * t4;
        *reinterpret_cast<__half2*>(c + (size_t)row * ldc + col) = __floats2half2_rn(acc[j][0], acc[j][1]);
        *reinterpret_cast<__half2*>(c + (size_t)(row + 8) * ldc + col) = __floats2half2_rn(acc[j][2], acc[j][3]);
      }
    } else {  // columns 8 j + .. (j < 16) are gate rows, 8 (j + 16) + .. their up rows
      auto act = [](float gate, float up) {  // as the engine's silu_mul (common.cuh)
        return silu_times(__half2float(__float2half_rn(gate)), __half2float(__float2half_rn(up)));
      };
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = n0 / 2 + 8 * j + 2 * t4;
        *reinterpret_cast<__half2*>(c + (size_t)row * ldc + col) =
            __floats2half2_rn(act(acc[j][0], acc[j + 16][0]), act(acc[j][1], acc[j + 16][1]));
        *reinterpret_cast<__half2*>(c + (size_t)(row + 8) * ldc + col) =
            __floats2half2_rn(act(acc[j][2], acc[j + 16][2]), act(acc[j][3], acc[j + 16][3]));
      }
    }
  }
}

// ---- host ------------------------------------------------------------------------------------------
static PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found{};
  cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found);
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
}
static CUtensorMap map_2d(const __half* p, int rows, int cols, int box_rows) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * 2};
  const cuuint32_t box[2] = {BK, (cuuint32_t)box_rows}, es[2] = {1, 1};
  encode_tiled()(&m, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<__half*>(p), dims, strides, box, es,
                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return m;
}

int main() {
  struct Shape {
    const char* name;
    int n, k, epilogue;
  };
  const int M = 2048;
  const Shape shapes[] = {{"qkv", 3072, 2048, kStore},      {"o", 2048, 2048, kStore},
                          {"gate_up", 16384, 2048, kStore}, {"gate_up silu*up", 16384, 2048, kSiluMul},
                          {"down", 2048, 8192, kStore}};
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, M = %d, tiles %d x %d x %d, %d stages\n", prop.name, M, BM, BN, BK, kStages);
  CK(cudaFuncSetAttribute(gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmem));
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) return std::printf("cublasCreate failed\n"), 1;
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  for (const Shape& sh : shapes) {
    const int N = sh.n, K = sh.k;
    std::vector<__half> a((size_t)M * K), w((size_t)N * K);
    for (auto& v : a) v = __float2half(d(gen));
    const float ws = 1.f / std::sqrt((float)K);
    for (auto& v : w) v = __float2half(d(gen) * ws);
    __half *ad, *wd, *cd, *rd;
    CK(cudaMalloc(&ad, a.size() * 2));
    CK(cudaMalloc(&wd, w.size() * 2));
    CK(cudaMalloc(&cd, (size_t)M * N * 2));
    CK(cudaMalloc(&rd, (size_t)M * N * 2));
    CK(cudaMemcpy(ad, a.data(), a.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(wd, w.data(), w.size() * 2, cudaMemcpyHostToDevice));
    const CUtensorMap amap = map_2d(ad, M, K, BM), wmap = map_2d(wd, N, K, BN);
    const int ldc = sh.epilogue == kSiluMul ? N / 2 : N;
    int variant = 0;  // 0: one tile a block, N fast; 1: one tile a block, M fast; 2: persistent, M fast
    const int m_tiles = M / BM, n_tiles = N / BN, tiles = m_tiles * n_tiles;
    auto ours = [&] {
      const int grid = variant == 2 ? std::min(tiles, prop.multiProcessorCount) : tiles;
      gemm_kernel<<<grid, kThreads, kSmem>>>(amap, wmap, cd, ldc, K, sh.epilogue, m_tiles, n_tiles, variant > 0);
    };
    const float one = 1.f, zero = 0.f;
    auto theirs = [&] {  // row-major C = A W^T as column-major C^T = W A^T
      cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, wd, CUDA_R_16F, K, ad, CUDA_R_16F, K, &zero, rd,
                   CUDA_R_16F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    ours(), theirs();
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    std::vector<__half> c((size_t)M * ldc), r((size_t)M * N);
    CK(cudaMemcpy(c.data(), cd, c.size() * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r.data(), rd, r.size() * 2, cudaMemcpyDeviceToHost));
    double err = 0, mag = 0;
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < ldc; ++j) {
        double want;
        if (sh.epilogue == kStore) {
          want = __half2float(r[(size_t)i * N + j]);
        } else {  // output column j: gate row 256 (j / 128) + j % 128, up row + 128
          const size_t gcol = 256 * (j / 128) + j % 128;
          const float gv = __half2float(r[(size_t)i * N + gcol]), uv = __half2float(r[(size_t)i * N + gcol + 128]);
          want = gv / (1.f + std::exp(-gv)) * uv;
        }
        err = std::max(err, std::fabs(__half2float(c[(size_t)i * ldc + j]) - want));
        mag = std::max(mag, std::fabs(want));
      }
    auto time = [&](auto&& f) {
      for (int i = 0; i < 5; ++i) f();
      cudaEventRecord(e0);
      for (int i = 0; i < 50; ++i) f();
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      return 1e3 * ms / 50;
    };
    const double us_blas = time(theirs), flops = 2.0 * M * N * K;
    double us[3];
    bool same = true;
    for (variant = 0; variant < 3; ++variant) {
      CK(cudaMemset(cd, 0, c.size() * 2));
      ours();
      CK(cudaDeviceSynchronize());
      std::vector<__half> c2(c.size());
      CK(cudaMemcpy(c2.data(), cd, c2.size() * 2, cudaMemcpyDeviceToHost));
      same = same && std::memcmp(c.data(), c2.data(), c.size() * 2) == 0;
      us[variant] = time(ours);
    }
    if (sh.epilogue == kSiluMul) {  // the engine's kernel (sm90/prompt_mlp_wgmma.cu): W as gate rows, then up rows
      std::vector<__half> wp(w.size());
      const int I = N / 2;
      for (int i = 0; i < I; ++i)
        for (int k = 0; k < K; ++k) {
          const size_t g = (size_t)(256 * (i / 128) + i % 128);
          wp[(size_t)i * K + k] = w[g * K + k], wp[(size_t)(I + i) * K + k] = w[(g + 128) * K + k];
        }
      __half* wpd;
      CK(cudaMalloc(&wpd, wp.size() * 2));
      CK(cudaMemcpy(wpd, wp.data(), wp.size() * 2, cudaMemcpyHostToDevice));
      auto engine = [&] {
        kvinfer::cuda::prompt_mlp_gate_up_wgmma(reinterpret_cast<const kvinfer::half_t*>(ad), K,
                                                reinterpret_cast<const kvinfer::half_t*>(wpd), I, K, M,
                                                reinterpret_cast<kvinfer::half_t*>(cd), I, nullptr);
      };
      CK(cudaMemset(cd, 0, c.size() * 2));
      engine();
      CK(cudaDeviceSynchronize());
      std::vector<__half> c3(c.size());
      CK(cudaMemcpy(c3.data(), cd, c3.size() * 2, cudaMemcpyDeviceToHost));
      const double us_engine = time(engine);
      std::printf("%-16s the engine's kernel %6.1f us = %5.1f TFLOP/s, ratio %.2f, the same bits: %s\n", sh.name,
                  us_engine, flops / us_engine / 1e6, us_blas / us_engine,
                  std::memcmp(c.data(), c3.data(), c.size() * 2) == 0 ? "yes" : "NO");
      cudaFree(wpd);
    }
    std::printf("%-16s N=%5d K=%4d  ours (one a block N fast / M fast / persistent) %6.1f / %6.1f / %6.1f us = "
                "%5.1f / %5.1f / %5.1f TFLOP/s  cuBLAS %6.1f us %5.1f TFLOP/s  ratio %.2f / %.2f / %.2f  max err "
                "%.1e of %.1e, variants equal: %s\n",
                sh.name, N, K, us[0], us[1], us[2], flops / us[0] / 1e6, flops / us[1] / 1e6, flops / us[2] / 1e6,
                us_blas, flops / us_blas / 1e6, us_blas / us[0], us_blas / us[1], us_blas / us[2], err, mag,
                same ? "yes" : "NO");
    cudaFree(ad), cudaFree(wd), cudaFree(cd), cudaFree(rd);
  }
  return 0;
}
