// Skinny GEMM on Hopper (SkinnyKernel::wgmma, skinny_gemm.h): y[m] = epilogue(x[m] W^T) for up to
// 64 rows x, with the weights streamed by the tensor memory accelerator (TMA) and multiplied by
// warpgroup MMAs. The weights are the MMA's 64-row A operand and the step's rows its N columns
// (8, 16, 32 or 64: "swap AB"), so a weight is read once per step whatever M is.
//
// Block = 64 weight rows x one K range of skinny_wgmma_plan(N, K) (which depends on N and K only):
// one consumer warpgroup and one producer warp. The producer's lane 0 walks the range in stages of
// 64 columns: a 64 x 64 weight box and an NP x 64 input box, both in the 128-byte swizzled layout
// wgmma reads, each stage filled on its own mbarrier. The weights do not depend on the kernel
// before this one, so the first stages' weight copies are issued before the dependent-launch wait.
// The consumers issue 4 MMAs (k16) per stage in column order into one accumulator and free a
// stage once its MMAs have landed. Where K is split, the blocks of a group's ranges form a cluster:
// each leaves its partial in its shared memory and block q folds slice q of the outputs from all
// of them in range order, through distributed shared memory. Every output is thus the same sum in
// the same order for any M (an MMA computes each column of its result from that column of B
// alone): a row's result does not depend on what else shares the step. It is not the narrow
// kernel's bits (another order over K): skinny_gemm() picks a kernel per (N, K), never per M.
#include "backend/cuda/sm90/skinny_wgmma.h"

#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_fp16.h>

#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/skinny_common.cuh"
#include "backend/cuda/sm90/wgmma.cuh"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "skinny_gemm_wgmma.cu is built for sm_90a only (CMakeLists.txt)"
#endif

namespace {
constexpr int kRows = kSkinnyWgmmaRows;  // weight rows per block (the MMA's M)
constexpr int kCols = kSkinnyWgmmaCols;  // K columns per stage: one 128-byte swizzle row
constexpr int kConsumers = 128, kThreads = kConsumers + 32;  // a warpgroup and the producer warp
constexpr int kSmemBudget = 112 * 1024;  // two blocks per SM
constexpr int kPrefetch = 8;             // stages past the first ones prefetched into L2 before the wait

template <int NP>
struct Stages {
  static constexpr int kW = kRows * kCols * 2;  // bytes of a stage's weights (a 64 x 64 box)
  static constexpr int kX = NP * kCols * 2;     // bytes of its input rows
  static constexpr int kStage = kW + kX;
  static constexpr int kCount = (kSmemBudget - 2048) / kStage < 8 ? (kSmemBudget - 2048) / kStage : 8;
  static constexpr int kRed = 4 * NP * kSkinnyTile * 4;  // [tile][row][16] fp32 after the loop
  static constexpr int kData = kCount * kStage > kRed ? kCount * kStage : kRed;
  static constexpr size_t bytes = 1024 + kData + 2 * kCount * 8;  // alignment, stages, barriers
};

__device__ __forceinline__ void consumer_barrier() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }

template <SkinnyOut OUT, int NP>
static __global__ void __launch_bounds__(kThreads)
    skinny_wgmma_kernel(const __grid_constant__ CUtensorMap wmap, const __grid_constant__ CUtensorMap xmap, int N,
                        int K, int M, SkinnyWgmmaPlan plan, SkinnyOutput out) {
  using S = Stages<NP>;
  extern __shared__ unsigned char smem_raw[];
  // swizzled boxes start on 1024-byte boundaries (the swizzle repeats every 8 rows of 128 bytes)
  unsigned char* const base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* const full = reinterpret_cast<uint64_t*>(base + S::kData);  // [stage]: its copies landed
  uint64_t* const empty = full + S::kCount;                            // [stage]: its MMAs landed
  float* const red = reinterpret_cast<float*>(base);                   // [4 tiles][NP rows][16], after the loop

  const int group = blockIdx.x / plan.splits, split = blockIdx.x - group * plan.splits;  // split: rank in the cluster
  const int chunks = (K + kCols - 1) / kCols, per = plan.k_per_split / kCols;
  const int c0 = split * per, count = min(chunks, c0 + per) - c0;  // this block's stages: chunks c0 ..
  const int n0 = group * kRows;
  const bool producer = threadIdx.x >= kConsumers;

  if (threadIdx.x == 0) {
    for (int s = 0; s < S::kCount; ++s) mbar_init(full + s, 1), mbar_init(empty + s, kConsumers);
    mbar_fence_init();
  }
  __syncthreads();

  if (producer) {  // the producer warp; lane 0 issues every copy
    if (threadIdx.x == kConsumers) {
      const uint64_t once = l2_policy_evict_first(), reused = l2_policy_evict_last();
      const int ahead = min(count, S::kCount);
      for (int i = 0; i < ahead; ++i) {  // weights first: no kernel of the step writes them
        mbar_arrive_expect_tx(full + i, S::kStage);
        tma_load_2d(base + i * S::kStage, &wmap, (c0 + i) * kCols, n0, full + i, once);
      }
      for (int i = ahead; i < min(count, ahead + kPrefetch); ++i) tma_prefetch_2d(&wmap, (c0 + i) * kCols, n0);
      pdl_wait();  // the input rows are an earlier kernel's output
      for (int i = 0; i < count; ++i) {
        const int s = i % S::kCount;
        unsigned char* const stage = base + s * S::kStage;
        if (i >= ahead) {
          mbar_wait(empty + s, ((i / S::kCount) & 1) ^ 1);  // use i / kCount - 1 of the stage is done
          mbar_arrive_expect_tx(full + s, S::kStage);
          tma_load_2d(stage, &wmap, (c0 + i) * kCols, n0, full + s, once);
        }
        tma_load_2d(stage + S::kW, &xmap, (c0 + i) * kCols, 0, full + s, reused);
      }
    }
    // (the consumers let the next kernel launch, once the weights are read; the warp stays for
    // the cluster's barriers)
  } else {
    pdl_wait();  // (the epilogue reads and writes what earlier kernels use)
    float acc[NP / 8][4] = {};
    for (int i = 0; i < count; ++i) {
      const int s = i % S::kCount;
      mbar_wait(full + s, (i / S::kCount) & 1);
      const unsigned char* const stage = base + s * S::kStage;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk)  // 16 columns = 32 bytes along the swizzled rows
        wgmma_ss<NP>(acc, smem_desc(stage + kk * 32, 16, 1024), smem_desc(stage + S::kW + kk * 32, 16, 1024));
      wgmma_commit();
      wgmma_wait<1>();  // the MMAs of stage i - 1 have landed: it may be refilled
      if (i > 0) mbar_arrive(empty + (i - 1) % S::kCount);
    }
    wgmma_wait_all();
    fence_registers(acc);
    pdl_allow_next();  // the weights are read

    // Warp w holds rows 16 w + g and 16 w + g + 8 of the block (tile w, rows g and g + 8), tokens
    // 8 j + 2 t and 8 j + 2 t + 1.
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    consumer_barrier();  // every warp's MMAs have read the stages red overlays
#pragma unroll
    for (int j = 0; j < NP / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        red[(warp * NP + 8 * j + 2 * t + (e & 1)) * kSkinnyTile + g + 8 * (e >> 1)] = acc[j][e];
  }

  const int tiles = (N + kSkinnyTile - 1) / kSkinnyTile;
  constexpr int kElems = 4 * NP * kSkinnyTile;  // a multiple of 128: the shuffles see full warps
  auto finish = [&](int e, float v) {
    const int l = e / (NP * kSkinnyTile), m = (e / kSkinnyTile) % NP, r = e % kSkinnyTile, tl = group * 4 + l;
    skinny::finish<OUT>(out, N, min(tl, tiles - 1), tiles, r, tl < tiles ? m : M, M, v);
  };
  if (plan.splits == 1) {
    if (producer) return;
    consumer_barrier();
    for (int e = threadIdx.x; e < kElems; e += kConsumers) finish(e, red[e]);
    return;
  }
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every range's partial is in its block's shared memory
  if (!producer) {
    const float* parts[kSkinnyWgmmaMaxSplits];
#pragma unroll
    for (int sp = 0; sp < kSkinnyWgmmaMaxSplits; ++sp) parts[sp] = cluster.map_shared_rank(red, sp < plan.splits ? sp : 0);
    // block q folds the warps' worth of outputs q, q + splits, ...: whole warps, ranges in order
    for (int e = split * kConsumers + threadIdx.x; e < kElems; e += kConsumers * plan.splits) {
      float v[kSkinnyWgmmaMaxSplits];
#pragma unroll
      for (int sp = 0; sp < kSkinnyWgmmaMaxSplits; ++sp) v[sp] = sp < plan.splits ? parts[sp][e] : 0.0f;
      float sum = v[0];
#pragma unroll
      for (int sp = 1; sp < kSkinnyWgmmaMaxSplits; ++sp)
        if (sp < plan.splits) sum += v[sp];
      finish(e, sum);
    }
  }
  cluster.sync();  // no block reads another's shared memory after this: each may leave
}

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    KVINFER_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !p)
      throw CudaError("skinny_gemm: the CUDA driver has no cuTensorMapEncodeTiled (driver for CUDA 12.0 or later needed)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// Row-major fp16 [rows][cols] (row stride ld) in boxes of box_rows x kCols, 128-byte swizzled;
// boxes reaching past the matrix read zeros there.
CUtensorMap tensor_map(const void* p, int64_t rows, int64_t cols, int64_t ld, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * 2};
  const cuuint32_t box[2] = {kCols, static_cast<cuuint32_t>(box_rows)}, element_strides[2] = {1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<void*>(p), dims, strides, box,
                                    element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw CudaError("skinny_gemm: cuTensorMapEncodeTiled failed (" + std::to_string(int(r)) + ") for " +
                    std::to_string(rows) + " x " + std::to_string(cols) + " rows of stride " + std::to_string(ld));
  return map;
}

template <SkinnyOut OUT, int NP>
void launch(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
            cudaStream_t stream) {
  static const bool sized = [] {
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(skinny_wgmma_kernel<OUT, NP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(Stages<NP>::bytes)));
    return true;
  }();
  (void)sized;
  const SkinnyWgmmaPlan plan = skinny_wgmma_plan(N, K);
  const CUtensorMap wmap = tensor_map(w, N, K, K, kRows), xmap = tensor_map(in.x, M, K, in.ld, NP);
  // a dependent launch (launch_dependent()), in clusters of a group's K ranges
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(plan.groups * plan.splits);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = Stages<NP>::bytes;
  config.stream = stream;
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = plan.splits, attributes[0].val.clusterDim.y = 1, attributes[0].val.clusterDim.z = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attributes;
  config.numAttrs = 2;
  KVINFER_CUDA_CHECK(cudaLaunchKernelEx(&config, skinny_wgmma_kernel<OUT, NP>, wmap, xmap, N, K, M, plan, out));
}

template <SkinnyOut OUT>
void launch_rows(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                 cudaStream_t stream) {
  if (M <= 8) return launch<OUT, 8>(w, N, K, M, in, out, stream);
  if (M <= 16) return launch<OUT, 16>(w, N, K, M, in, out, stream);
  if (M <= 32) return launch<OUT, 32>(w, N, K, M, in, out, stream);
  launch<OUT, 64>(w, N, K, M, in, out, stream);
}
}  // namespace

bool skinny_wgmma_runs() {
  int device = 0, major = 0, minor = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
}

void skinny_gemm_wgmma(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                       cudaStream_t stream) {
  KVINFER_CHECK_ARG(in.kind == SkinnyIn::half, "skinny_gemm_wgmma: fp16 input rows only");
  KVINFER_CHECK_ARG(M >= 1 && M <= kSkinnyMaxRows, "skinny_gemm_wgmma: M=", M);
  // TMA reads rows that start on 16-byte boundaries
  KVINFER_CHECK_ARG(reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(in.x) % 16 == 0 &&
                        K % 8 == 0 && in.ld % 8 == 0,
                    "skinny_gemm_wgmma: weights and input rows must be 16-byte aligned (K=", K, ", ld=", in.ld, ")");
  switch (out.kind) {
    case SkinnyOut::half: return launch_rows<SkinnyOut::half>(w, N, K, M, in, out, stream);
    case SkinnyOut::residual: return launch_rows<SkinnyOut::residual>(w, N, K, M, in, out, stream);
    case SkinnyOut::logits: return launch_rows<SkinnyOut::logits>(w, N, K, M, in, out, stream);
  }
}

}  // namespace kvinfer::cuda
