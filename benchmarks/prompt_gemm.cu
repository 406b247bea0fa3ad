// Experiment for prompt steps' GEMMs on Hopper (docs/dev/prefill-attention-notes.md, runs 9-10): a
// time to first token of 8 ms needs SiLU·mul, RMSNorm and RoPE + K/V write fused into the
// projections, which cuBLAS cannot do; first, can a GEMM of our own match cuBLAS at these shapes?
// C[M][N] = A[M][K] W[N][K]^T (fp16, fp32 accumulation), Llama-3.2-1B's projections at M = 2048.
// A block of 384 threads takes a 128 x 256 tile of C: a producer warpgroup (one thread) streams
// 128 x 64 boxes of A and 256 x 64 boxes of W by TMA (128-byte swizzle) into 4 stages; two consumer
// warpgroups (64 rows each) run m64n256k16 warpgroup MMAs from shared memory, 128 fp32 accumulators
// a thread. Epilogues: fp16 out, or silu(gate) * up where W's rows are interleaved in blocks of 128
// (a tile's columns 0-127 are gate rows, 128-255 the matching up rows: a thread holds both of each
// pair, so the product needs no exchange). Against cuBLAS (GemmEx, fp32 compute) in the same run.
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icpp -o prompt_gemm benchmarks/prompt_gemm.cu \
//     -lcublas -lcuda && ./prompt_gemm
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

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

template <int N>
__device__ __forceinline__ void registers_up() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void registers_down() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

// D (64 x 256, fp32) += A (64 x 16) B^T (B: 256 x 16), both K-major in shared memory (128-byte
// swizzle); d[j][e]: rows g (e < 2) and g + 8, columns 8 j + 2 t + (e & 1), as wgmma.cuh's wgmma_ss.
__device__ __forceinline__ void mma_64x256(float (&d)[32][4], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]), "+f"(d[16][0]), "+f"(d[16][1]), "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]), "+f"(d[18][0]), "+f"(d[18][1]), "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]), "+f"(d[19][2]), "+f"(d[19][3]), "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]), "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]), "+f"(d[22][0]), "+f"(d[22][1]), "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), "+f"(d[23][2]), "+f"(d[23][3]), "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]), "+f"(d[25][2]), "+f"(d[25][3]), "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]), "+f"(d[27][0]), "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]), "+f"(d[28][0]), "+f"(d[28][1]), "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), "+f"(d[29][3]), "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), "+f"(d[31][0]), "+f"(d[31][1]), "+f"(d[31][2]), "+f"(d[31][3])
      : "l"(a), "l"(b), "r"(accumulate));
}

__global__ void __launch_bounds__(kThreads, 1)
    gemm_kernel(const __grid_constant__ CUtensorMap amap, const __grid_constant__ CUtensorMap wmap, __half* c,
                int ldc, int K, int epilogue, int m_fast) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* const base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  auto a_tile = [&](int s) { return base + s * kStageBytes; };
  auto w_tile = [&](int s) { return base + s * kStageBytes + kABytes; };
  uint64_t* const full = reinterpret_cast<uint64_t*>(base + kStages * kStageBytes);
  uint64_t* const empty = full + kStages;
  // m_fast: consecutive blocks take the M tiles of one W tile, so a wave of blocks reads a few W
  // tiles from DRAM (each once, the rest from L2) instead of most of W
  const int m0 = (m_fast ? blockIdx.x : blockIdx.y) * BM, n0 = (m_fast ? blockIdx.y : blockIdx.x) * BN, steps = K / BK;
  if (threadIdx.x == 0) {
    // a stage goes back once every consumer thread's MMAs have read it (a warp's wgmma wait covers
    // its own share of the warpgroup's MMAs only)
    for (int s = 0; s < kStages; ++s) mbar_init(full + s, 1), mbar_init(empty + s, 256);
    mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x >= 256) {  // producer
    registers_down<40>();
    const uint64_t policy = l2_policy_evict_last();  // A and W tiles are read by other blocks too
    if (threadIdx.x == 256)
      for (int i = 0; i < steps; ++i) {
        const int s = i % kStages;
        if (i >= kStages) mbar_wait(empty + s, ((i / kStages) & 1) ^ 1);
        mbar_arrive_expect_tx(full + s, kStageBytes);
        tma_load_2d(a_tile(s), &amap, i * BK, m0, full + s, policy);
        tma_load_2d(w_tile(s), &wmap, i * BK, n0, full + s, policy);
      }
    return;
  }
  registers_up<232>();
  const int wg = threadIdx.x / 128;
  float acc[32][4];
#pragma unroll
  for (int j = 0; j < 32; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  for (int i = 0; i < steps; ++i) {
    const int s = i % kStages;
    mbar_wait(full + s, (i / kStages) & 1);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
      mma_64x256(acc, smem_desc(a_tile(s) + wg * 64 * 128 + kk * 32, 16, 1024), smem_desc(w_tile(s) + kk * 32, 16, 1024), 1);
    wgmma_commit();
    wgmma_wait<1>();  // step i - 1's MMAs are done: its stage may be refilled
    mbar_arrive_if(empty + (i + kStages - 1) % kStages, i > 0);
  }
  wgmma_wait<0>();
  fence_registers(acc);
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row = m0 + wg * 64 + warp * 16 + g;
  if (epilogue == kStore) {
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int col = n0 + 8 * j + 2 * t;
      *reinterpret_cast<__half2*>(c + (size_t)row * ldc + col) = __floats2half2_rn(acc[j][0], acc[j][1]);
      *reinterpret_cast<__half2*>(c + (size_t)(row + 8) * ldc + col) = __floats2half2_rn(acc[j][2], acc[j][3]);
    }
  } else {  // columns 8 j + .. (j < 16) are gate rows, 8 (j + 16) + .. their up rows
    auto act = [](float gate, float up) {
      const float gv = __half2float(__float2half(gate)), uv = __half2float(__float2half(up));
      return gv / (1.f + __expf(-gv)) * uv;
    };
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int col = n0 / 2 + 8 * j + 2 * t;
      *reinterpret_cast<__half2*>(c + (size_t)row * ldc + col) =
          __floats2half2_rn(act(acc[j][0], acc[j + 16][0]), act(acc[j][1], acc[j + 16][1]));
      *reinterpret_cast<__half2*>(c + (size_t)(row + 8) * ldc + col) =
          __floats2half2_rn(act(acc[j][2], acc[j + 16][2]), act(acc[j][3], acc[j + 16][3]));
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
    int m_fast = 0;
    auto ours = [&] {
      const dim3 grid = m_fast ? dim3(M / BM, N / BN) : dim3(N / BN, M / BM);
      gemm_kernel<<<grid, kThreads, kSmem>>>(amap, wmap, cd, ldc, K, sh.epilogue, m_fast);
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
    const double us_n_fast = time(ours), us_blas = time(theirs), flops = 2.0 * M * N * K;
    m_fast = 1;
    ours();
    CK(cudaDeviceSynchronize());
    std::vector<__half> c2(c.size());
    CK(cudaMemcpy(c2.data(), cd, c2.size() * 2, cudaMemcpyDeviceToHost));
    const bool same = std::memcmp(c.data(), c2.data(), c.size() * 2) == 0;
    const double us_m_fast = time(ours);
    std::printf("%-16s N=%5d K=%4d  ours (n fast / m fast) %7.1f / %7.1f us %6.1f / %6.1f TFLOP/s  cuBLAS %7.1f us "
                "%6.1f TFLOP/s  ratio %.2f / %.2f  max err %.1e of %.1e, orders equal: %s\n",
                sh.name, N, K, us_n_fast, us_m_fast, flops / us_n_fast / 1e6, flops / us_m_fast / 1e6, us_blas,
                flops / us_blas / 1e6, us_blas / us_n_fast, us_blas / us_m_fast, err, mag, same ? "yes" : "NO");
    cudaFree(ad), cudaFree(wd), cudaFree(cd), cudaFree(rd);
  }
  return 0;
}
