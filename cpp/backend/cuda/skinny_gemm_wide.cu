// Skinny GEMM, the wide kernel (skinny_gemm.h; SkinnyKernel::wide, opt-in until it measures
// faster): the narrow kernel's arithmetic on a layout that reads each weight once per block for
// every row of the step. Block = 8 tiles of 16 weight rows (a warp each) and a K range of the plan,
// walked in slices of 32 columns through a cp.async pipeline of kStages shared-memory stages: a
// stage holds the slice of the block's 128 weight rows and of every input row, so the input is read
// from L2 once per 128 weight rows where the narrow kernel reads it once per 16. Each warp loads
// its fragments from the stage exactly as the narrow kernel loads them from global memory (16 bytes
// per lane at column 8 (lane % 4) of rows g and g + 8, and of token g of each group of 8) and
// issues the same MMAs in the same order, quarters folded in the same order: every output is the
// narrow kernel's bits, whatever M is.
//
// Two shapes of block, by how many blocks whole ranges make (skinny_wide_quarters):
//   whole range (then splits == 1): the warp folds each finished quarter into a running total, as
//     the narrow kernel folds its quarter warps, and the block runs the epilogue;
//   a quarter of a range: the four quarter blocks of a range are one cluster; each leaves its
//     partial in its shared memory, and block q folds quarter q of the outputs from all four (in
//     order, through distributed shared memory), then either runs the epilogue (one range) or
//     leaves its share of the range in the workspace, where the last range to arrive folds them.
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <atomic>

#include "backend/cuda/common.cuh"
#include "backend/cuda/ptx.cuh"
#include "backend/cuda/skinny_common.cuh"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda::skinny {

namespace {
namespace cg = cooperative_groups;
constexpr int kTiles = kSkinnyWideTiles, kThreads = 32 * kTiles, kStages = 6, kSlice = kSkinnySlice;
constexpr int kPrefetch = 16, kPrefetchStep = 4;  // L2 prefetch: slices ahead of the one in use, and per call
constexpr int kWeightRows = kTiles * kSkinnyTile;

template <SkinnyIn IN, int NT>
struct Layout {
  static constexpr int kCols = NT * 8;                             // input rows staged (M in 8s)
  static constexpr int kParts = IN == SkinnyIn::silu_mul ? 2 : 1;  // gate, then up
  static constexpr int kW = kWeightRows * kSlice;                  // halves of weights per stage
  static constexpr int kX = kParts * kCols * kSlice;               // halves of input per stage
  static constexpr size_t kStageBytes = size_t{kW + kX} * 2;
  static constexpr int kElems = kTiles * kCols * kSkinnyTile;     // a block's outputs
  static constexpr size_t kRedBytes = size_t{kElems} * 4;         // [tile][token][16] after the loop
  static constexpr size_t bytes = kStages * kStageBytes > kRedBytes ? kStages * kStageBytes : kRedBytes;
};

template <SkinnyIn IN, SkinnyOut OUT, int NT, bool kQuarters>
__device__ __forceinline__ void wide_body(const half_t* __restrict__ w, int N, int K, int M, const SkinnyPlan& plan,
                                          const SkinnyInput& in, const SkinnyOutput& out, const SkinnyWorkspace& ws) {
  using L = Layout<IN, NT>;
  constexpr int kCols = L::kCols;
  extern __shared__ __align__(128) unsigned char smem[];
  half_t* const stages = reinterpret_cast<half_t*>(smem);
  float* const red = reinterpret_cast<float*>(smem);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int pieces = kQuarters ? 4 * plan.splits : 1;
  const int group = blockIdx.x / pieces, piece = blockIdx.x - group * pieces;
  const int split = piece / 4, quarter_index = piece % 4;  // (kQuarters; else both 0)
  const int slices = (K + kSlice - 1) / kSlice, per_split = plan.k_per_split / kSlice;
  const int r0 = split * per_split, r1 = min(slices, r0 + per_split);
  const int quarter = (r1 - r0 + 3) / 4;
  const int s0 = kQuarters ? min(r1, r0 + quarter_index * quarter) : r0;  // this block's slices [s0, s0 + len)
  const int len = kQuarters ? min(r1, s0 + quarter) - s0 : r1 - r0;
  const int n0 = group * kWeightRows;

  const half_t* x = static_cast<const half_t*>(in.x);
  auto issue_weights = [&](int i) {  // 128 rows x 4 pieces of 16 bytes; rows past N are zeros
    half_t* dst = stages + (i % kStages) * (L::kW + L::kX);
    const int k0 = (s0 + i) * kSlice;
    for (int e = threadIdx.x; e < kWeightRows * 4; e += kThreads) {
      const int r = e >> 2, c = (e & 3) * 8, n = n0 + r, k = k0 + c;
      const bool ok = n < N && k < K;
      cp_async16(dst + r * kSlice + c, ok ? w + static_cast<int64_t>(n) * K + k : w, ok ? 16 : 0);
    }
  };
  auto issue_input = [&](int i) {  // kCols rows (x 2 for gate and up); rows past M are zeros
    half_t* dst = stages + (i % kStages) * (L::kW + L::kX) + L::kW;
    const int k0 = (s0 + i) * kSlice;
    for (int e = threadIdx.x; e < L::kParts * kCols * 4; e += kThreads) {
      const int part = e / (kCols * 4), r = (e >> 2) % kCols, c = (e & 3) * 8, k = k0 + c;
      const bool ok = r < M && k < K;
      cp_async16(dst + (part * kCols + r) * kSlice + c, ok ? x + r * in.ld + part * in.up_offset + k : x, ok ? 16 : 0);
    }
  };

  // Slices [i0, i1) of the block's weight rows into L2 ahead of the copies, each row's 128-byte lines
  // by consecutive threads: DRAM then serves runs along a row, where the copies of one stage ask
  // for 64 bytes of each of 128 rows, and many more bytes are in flight than the stages hold.
  auto prefetch = [&](int i0, int i1) {
    i1 = min(i1, len);
    if (i0 >= i1) return;
    const int k0 = (s0 + i0) * kSlice, lines = ((i1 - i0) * kSlice + 63) / 64;
    for (int e = threadIdx.x; e < kWeightRows * lines; e += kThreads) {
      const int r = e / lines, n = min(n0 + r, N - 1), k = min(K - 1, k0 + (e - r * lines) * 64);
      asm volatile("prefetch.global.L2 [%0];" ::"l"(w + static_cast<int64_t>(n) * K + k));
    }
  };

  // The first stages' weights before waiting for the kernel before this one (no kernel of the step
  // writes weights), then the inputs it wrote. Group 0 holds those weights and input 0; group i,
  // input i; each later group a whole stage (possibly empty: the count stays uniform).
  prefetch(0, kPrefetch);
  for (int i = 0; i < min(len, kStages - 1); ++i) issue_weights(i);
  pdl_wait();
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < len) issue_input(i);
    cp_async_commit();
  }

  float acc[NT][4] = {};
  float total[kQuarters ? 1 : NT][4];  // whole ranges: the quarters folded so far
  int folded = 0;
  auto fold = [&] {  // ((q0 + q1) + q2) + q3, as the narrow kernel folds its quarter warps
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if constexpr (!kQuarters) total[nt][e] = folded == 0 ? acc[nt][e] : total[nt][e] + acc[nt][e];
        acc[nt][e] = 0.0f;
      }
    ++folded;
  };
  for (int i = 0; i < len; ++i) {
    cp_async_wait<kStages - 2>();  // slice i is in (this thread's copies; the barrier: everyone's)
    __syncthreads();               // ... and every warp is done with slice i - 1, whose stage is refilled
    if (i % kPrefetchStep == 0) prefetch(i + kPrefetch, i + kPrefetch + kPrefetchStep);
    if (i + kStages - 1 < len) {
      issue_weights(i + kStages - 1);
      issue_input(i + kStages - 1);
    }
    cp_async_commit();
    const half_t* stage = stages + (i % kStages) * (L::kW + L::kX);
    const half_t* wl = stage + (warp * kSkinnyTile + g) * kSlice + 8 * t;
    const uint4 a_lo = *reinterpret_cast<const uint4*>(wl), a_hi = *reinterpret_cast<const uint4*>(wl + 8 * kSlice);
    const uint32_t first[4] = {a_lo.x, a_hi.x, a_lo.y, a_hi.y};
    const uint32_t second[4] = {a_lo.z, a_hi.z, a_lo.w, a_hi.w};
    const half_t* xl = stage + L::kW + g * kSlice + 8 * t;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      Raw<IN> raw;
      raw.v = *reinterpret_cast<const uint4*>(xl + nt * 8 * kSlice);
      if constexpr (IN == SkinnyIn::silu_mul) raw.u = *reinterpret_cast<const uint4*>(xl + (kCols + nt * 8) * kSlice);
      const uint4 b = transform<IN>(raw, 0.0f);
      mma16816(acc[nt], first, b.x, b.y);
      mma16816(acc[nt], second, b.z, b.w);
    }
    if constexpr (!kQuarters) {
      if ((i + 1) % quarter == 0 || i + 1 == len) fold();
    }
  }
  // The weights are read: only now may the next kernel's blocks launch (skinny_gemm.cu says why).
  pdl_allow_next();
  cp_async_wait<0>();  // (the groups left are empty)
  if constexpr (!kQuarters) {
    while (folded < 4) fold();  // empty last quarters add zeros, as the narrow kernel's fold does
  }
  __syncthreads();  // every warp is done with the stages: red takes their place
  // C fragment: (row g, tokens 2t, 2t + 1), (row g + 8, same tokens), token-major in red
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      red[(warp * kCols + nt * 8 + 2 * t + (e & 1)) * kSkinnyTile + g + 8 * (e >> 1)] =
          kQuarters ? acc[nt][e] : total[kQuarters ? 0 : nt][e];

  const int tiles = plan.tiles;
  // element e of the block: tile l, token m, row r (16 consecutive threads per token: the shuffles
  // of the epilogue see whole warps)
  auto run_finish = [&](int e, float v) {
    const int l = e / (kCols * kSkinnyTile), m = (e / kSkinnyTile) % kCols, r = e % kSkinnyTile;
    const int tl = group * kTiles + l;
    finish<OUT>(out, N, min(tl, tiles - 1), tiles, r, tl < tiles ? m : M, M, v);
  };
  if constexpr (!kQuarters) {
    __syncthreads();
    for (int e = threadIdx.x; e < L::kElems; e += kThreads) run_finish(e, red[e]);
    return;
  } else {
    // Block q of the cluster folds elements [q, q + 1) * kElems / 4 of the four partials, in order.
    constexpr int kShare = L::kElems / 4, kPer = kShare / kThreads;  // == NT
    static_assert(kShare % kThreads == 0, "whole warps per share");
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every block's partial is in its shared memory
    const float* parts[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) parts[q] = cluster.map_shared_rank(red, q);
    float v[kPer];
    const int share0 = quarter_index * kShare;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = share0 + j * kThreads + threadIdx.x;
      float s = parts[0][e];
      s = s + parts[1][e];
      s = s + parts[2][e];
      v[j] = s + parts[3][e];
    }
    cluster.sync();  // no block reads another's shared memory after this: each may leave
    if (plan.splits == 1) {
#pragma unroll
      for (int j = 0; j < kPer; ++j) run_finish(share0 + j * kThreads + threadIdx.x, v[j]);
      return;
    }
    // Several ranges: this range's share into the workspace (the narrow kernel's layout), and the
    // block that completes a share folds the ranges in order.
    auto partial = [&](int e, int sp) {
      const int l = e / (kCols * kSkinnyTile), m = (e / kSkinnyTile) % kCols, r = e % kSkinnyTile;
      const int tl = min(group * kTiles + l, tiles - 1);
      return ws.partials + ((static_cast<int64_t>(tl) * plan.splits + sp) * kSkinnyMaxRows + m) * kSkinnyTile + r;
    };
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = share0 + j * kThreads + threadIdx.x;
      if (group * kTiles + e / (kCols * kSkinnyTile) < tiles) *partial(e, split) = v[j];
    }
    __shared__ bool last;
    __syncthreads();  // this block's partials are written
    int* counter = ws.counters + group * 4 + quarter_index;
    if (threadIdx.x == 0) last = atomic_add_acq_rel(counter, 1) == plan.splits - 1;
    __syncthreads();
    if (!last) return;
    if (threadIdx.x == 0) *counter = 0;  // for the next call
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = share0 + j * kThreads + threadIdx.x;
      float s = __ldcg(partial(e, 0));
      for (int sp = 1; sp < plan.splits; ++sp) s += __ldcg(partial(e, sp));
      run_finish(e, s);
    }
  }
}

template <SkinnyIn IN, SkinnyOut OUT, int NT>
static __global__ void __launch_bounds__(kThreads)
    wide_kernel(const half_t* __restrict__ w, int N, int K, int M, SkinnyPlan plan, SkinnyInput in,
                SkinnyOutput out, SkinnyWorkspace ws) {
  wide_body<IN, OUT, NT, false>(w, N, K, M, plan, in, out, ws);
}

template <SkinnyIn IN, SkinnyOut OUT, int NT>
static __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(kThreads)
    wide_quarter_kernel(const half_t* __restrict__ w, int N, int K, int M, SkinnyPlan plan, SkinnyInput in,
                        SkinnyOutput out, SkinnyWorkspace ws) {
  wide_body<IN, OUT, NT, true>(w, N, K, M, plan, in, out, ws);
}

// More than 48 KB of shared memory needs an opt-in per kernel and device; done once for each.
template <class Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, std::atomic<uint64_t>& devices) {
  int device = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (devices.load(std::memory_order_acquire) & bit) return;
  KVINFER_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  devices.fetch_or(bit, std::memory_order_release);
}

template <SkinnyIn IN, SkinnyOut OUT, int NT>
void launch(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
            const SkinnyWorkspace& ws, cudaStream_t stream) {
  const SkinnyPlan plan = skinny_plan(N, K);
  const int groups = (plan.tiles + kTiles - 1) / kTiles;
  constexpr size_t bytes = Layout<IN, NT>::bytes;
  if (skinny_wide_quarters(N, K)) {
    static std::atomic<uint64_t> devices{0};
    allow_shared_memory(wide_quarter_kernel<IN, OUT, NT>, bytes, devices);
    launch_dependent(wide_quarter_kernel<IN, OUT, NT>, dim3(groups * plan.splits * 4), dim3(kThreads), bytes, stream,
                     w, N, K, M, plan, in, out, ws);
  } else {
    KVINFER_CHECK_ARG(plan.splits == 1, "skinny_gemm: whole ranges of N=", N, " K=", K, " with ", plan.splits,
                      " splits");
    static std::atomic<uint64_t> devices{0};
    allow_shared_memory(wide_kernel<IN, OUT, NT>, bytes, devices);
    launch_dependent(wide_kernel<IN, OUT, NT>, dim3(groups), dim3(kThreads), bytes, stream, w, N, K, M, plan, in, out,
                     ws);
  }
}

template <SkinnyIn IN, SkinnyOut OUT>
void launch_rows(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                 const SkinnyWorkspace& ws, cudaStream_t stream) {
  if (M <= 16) return launch<IN, OUT, 2>(w, N, K, M, in, out, ws, stream);
  if (M <= 32) return launch<IN, OUT, 4>(w, N, K, M, in, out, ws, stream);
  launch<IN, OUT, 8>(w, N, K, M, in, out, ws, stream);
}
}  // namespace

void skinny_gemm_wide(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                      const SkinnyWorkspace& ws, cudaStream_t stream) {
  KVINFER_CHECK_ARG(M >= 1 && M <= kSkinnyMaxRows, "skinny_gemm_wide: M=", M);
#define KVINFER_SKINNY_WIDE(I, O) \
  if (in.kind == SkinnyIn::I && out.kind == SkinnyOut::O) return launch_rows<SkinnyIn::I, SkinnyOut::O>(w, N, K, M, in, out, ws, stream)
  KVINFER_SKINNY_WIDE(half, half);
  KVINFER_SKINNY_WIDE(half, logits);
  KVINFER_SKINNY_WIDE(half, residual);
  KVINFER_SKINNY_WIDE(silu_mul, residual);
  KVINFER_SKINNY_WIDE(gelu, residual);
#undef KVINFER_SKINNY_WIDE
  throw std::invalid_argument("skinny_gemm_wide: this input and epilogue are not built together (RMSNorm inputs "
                              "of more rows are normed into fp16 rows first)");
}

}  // namespace kvinfer::cuda::skinny
