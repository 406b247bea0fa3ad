// Skinny GEMM (skinny_gemm.h), the narrow kernel: block = 4 warps on one tile of 16 weight rows and
// one K range; warp w takes quarter w of the range. Per 32 columns a lane loads 16 bytes of each of its two
// weight rows (g and g + 8, g = lane / 4) and 16 bytes of its token's input row, at column
// 8 (lane % 4): that is two m16n8k16 MMAs (weights as A, tokens as the 8 columns of B) with the
// columns of K permuted the same way in A and B, so every load is a 16-byte vector. The quarters
// are folded in order through shared memory; with several ranges (splits) each block leaves its
// partial in the workspace and the block that finishes a tile last folds them in range order and
// runs the epilogue, so no result depends on which block came last, nor on M.
#include "backend/cuda/skinny_gemm.h"

#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>

#include "backend/cuda/common.cuh"
#include "backend/cuda/skinny_common.cuh"
#if KVINFER_WITH_SM90A
#include "backend/cuda/sm90/skinny_wgmma.h"
#endif
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

namespace {
constexpr int kThreads = 128, kWarps = 4, kSlice = kSkinnySlice;
using namespace skinny;

__device__ __forceinline__ uint4 load_stream(const half_t* p) {  // read once: no L1 allocation
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Slices (32 columns) per lane step of the main loop: more in flight where the tile of tokens is
// small, fewer where a slice's input also takes registers until it is transformed.
template <SkinnyIn IN, int NT>
__host__ __device__ constexpr int unroll() {
  if constexpr (IN == SkinnyIn::half) return NT == 1 ? 8 : NT == 2 ? 4 : NT == 4 ? 2 : 1;
  return NT == 1 ? 4 : NT <= 4 ? 2 : 1;
}

// Block = TPB tiles x 4 quarter warps: warp w takes quarter w % 4 of tile w / 4 of its group. The
// warps of one quarter read the same input columns, which L1 serves to all but the first; TPB
// changes which warps share a block, never what a warp computes, so no bit depends on it.
template <SkinnyIn IN, SkinnyOut OUT, int NT, int TPB>
static __global__ void __launch_bounds__(kThreads * TPB) skinny_kernel(const half_t* __restrict__ w, int N, int K,
                                                                       int M, SkinnyPlan plan, SkinnyInput in,
                                                                       SkinnyOutput out, SkinnyWorkspace ws) {
  constexpr int kCols = NT * 8, kU = unroll<IN, NT>();
  __shared__ float red[TPB][kCols][kSkinnyTile];  // the quarters' fold, per tile, token-major
  __shared__ float inv_rms[kCols];
  __shared__ bool last;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int quarter_index = warp % kWarps, local = warp / kWarps;
  const int group = blockIdx.x / plan.splits, split = blockIdx.x - group * plan.splits;
  const int tile = group * TPB + local;  // may be past the last tile: such warps only join the barriers
  const bool live_tile = tile < plan.tiles;

  // this warp's quarter of the range: slices [s0, s1)
  const int slices = (K + kSlice - 1) / kSlice, per_split = plan.k_per_split / kSlice;
  const int r0 = split * per_split, r1 = min(slices, r0 + per_split);
  const int quarter = (r1 - r0 + kWarps - 1) / kWarps;
  const int s0 = min(r1, r0 + quarter_index * quarter), s1 = live_tile ? min(r1, s0 + quarter) : s0;

  // While the kernel before this one drains: its weights into L2 (no kernel of the step writes
  // them), 128-byte lines of the warp's 16 rows.
  {
    const int lines = ((s1 - s0) * kSlice * 2 + 127) / 128;
    for (int i = lane; i < kSkinnyTile * lines; i += 32) {
      const int row = min(tile * kSkinnyTile + i / lines, N - 1);
      const int k = min(K - 1, s0 * kSlice + (i % lines) * 64);
      asm volatile("prefetch.global.L2 [%0];" ::"l"(w + static_cast<int64_t>(row) * K + k));
    }
  }
  pdl_wait();

  if constexpr (IN == SkinnyIn::rms_norm) {  // a warp per token
    for (int m = warp; m < kCols; m += blockDim.x / 32) {
      const float v = m < M ? inv_rms_of(in, m, K, lane) : 0.0f;
      if (lane == 0) inv_rms[m] = v;
    }
    __syncthreads();
  }

  const int n_lo = tile * kSkinnyTile + g, n_hi = n_lo + 8;
  const half_t* w_lo = w + static_cast<int64_t>(min(n_lo, N - 1)) * K;  // rows past N: loaded, never stored
  const half_t* w_hi = w + static_cast<int64_t>(min(n_hi, N - 1)) * K;
  float inv[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) inv[nt] = IN == SkinnyIn::rms_norm ? inv_rms[nt * 8 + g] : 0.0f;
  float acc[NT][4] = {};
  for (int s = s0; s < s1; s += kU) {
    uint4 a_lo[kU], a_hi[kU];
    Raw<IN> raw[kU][NT];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int k = (s + u) * kSlice + 8 * t;
      const bool on = s + u < s1 && k < K;
      a_lo[u] = on ? load_stream(w_lo + k) : make_uint4(0, 0, 0, 0);
      a_hi[u] = on ? load_stream(w_hi + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int k = (s + u) * kSlice + 8 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int m = nt * 8 + g;
        if (s + u < s1 && m < M) raw[u][nt] = load_raw<IN>(in, m, k, K);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (s + u >= s1) break;  // past the quarter: no MMA, so the unroll depth changes no bit
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint4 b = transform<IN>(raw[u][nt], inv[nt]);
        const uint32_t first[4] = {a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y};
        const uint32_t second[4] = {a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w};
        mma16816(acc[nt], first, b.x, b.y);
        mma16816(acc[nt], second, b.z, b.w);
      }
    }
  }
  // The weights are read: only now may the next kernel's blocks launch. Let in earlier, they hold
  // SM slots and issue their prefetches while this kernel's weight stream still needs both.
  pdl_allow_next();
  // The quarters, folded in order: ((q0 + q1) + q2) + q3, one quarter warp after another.
  // C fragment: c0, c1 = (row g, tokens 2t, 2t + 1), c2, c3 = (row g + 8, same tokens).
  for (int q = 0; q < kWarps; ++q) {
    if (quarter_index == q) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float& dst = red[local][nt * 8 + 2 * t + (e & 1)][g + 8 * (e >> 1)];
          dst = q == 0 ? acc[nt][e] : dst + acc[nt][e];
        }
    }
    __syncthreads();
  }
  const int tiles = plan.tiles;
  constexpr int kElems = TPB * kCols * kSkinnyTile;  // a multiple of the block: the shuffles see full warps
  if (plan.splits == 1) {
    for (int e = threadIdx.x; e < kElems; e += blockDim.x) {
      const int l = e / (kCols * kSkinnyTile), m = (e / kSkinnyTile) % kCols, r = e % kSkinnyTile;
      const int tl = group * TPB + l;
      finish<OUT>(out, N, min(tl, tiles - 1), tiles, r, tl < tiles ? m : M, M, red[l][m][r]);
    }
    return;
  }
  for (int e = threadIdx.x; e < kElems; e += blockDim.x) {
    const int l = e / (kCols * kSkinnyTile), m = (e / kSkinnyTile) % kCols, r = e % kSkinnyTile;
    const int tl = group * TPB + l;
    if (tl < tiles)
      ws.partials[((static_cast<int64_t>(tl) * plan.splits + split) * kSkinnyMaxRows + m) * kSkinnyTile + r] =
          red[l][m][r];
  }
  __syncthreads();  // this block's partials are written
  if (threadIdx.x == 0) last = atomic_add_acq_rel(ws.counters + group, 1) == plan.splits - 1;
  __syncthreads();
  if (!last) return;
  if (threadIdx.x == 0) ws.counters[group] = 0;  // for the next call
  for (int e = threadIdx.x; e < kElems; e += blockDim.x) {  // the ranges, in order
    const int l = e / (kCols * kSkinnyTile), m = (e / kSkinnyTile) % kCols, r = e % kSkinnyTile;
    const int tl = min(group * TPB + l, tiles - 1);
    const float* p = ws.partials + (static_cast<int64_t>(tl) * plan.splits * kSkinnyMaxRows + m) * kSkinnyTile + r;
    float v = __ldcg(p);
    for (int sp = 1; sp < plan.splits; ++sp) v += __ldcg(p + sp * kSkinnyMaxRows * kSkinnyTile);
    finish<OUT>(out, N, tl, tiles, r, group * TPB + l < tiles ? m : M, M, v);
  }
}

// h[m][k] = the RMSNorm input of the fused path, as fp16 rows (for wide M, where each block would
// otherwise normalise the same fp32 rows again): the same instructions, so the same bits.
static __global__ void rms_rows_kernel(SkinnyInput in, int K, int M, __half* __restrict__ h) {
  __shared__ float inv;
  pdl_allow_next();
  pdl_wait();
  const int m = blockIdx.x;
  if (threadIdx.x < 32) {
    const float v = inv_rms_of(in, m, K, threadIdx.x);
    if (threadIdx.x == 0) inv = v;
  }
  __syncthreads();
  for (int k = 8 * threadIdx.x; k < K; k += 8 * blockDim.x)
    *reinterpret_cast<uint4*>(h + static_cast<int64_t>(m) * K + k) =
        transform<SkinnyIn::rms_norm>(load_raw<SkinnyIn::rms_norm>(in, m, k, K), inv);
}

// What KVINFER_SKINNY=narrow|wide|wgmma in the environment forces, else automatic.
SkinnyKernel forced_kernel() {
  static const SkinnyKernel forced = [] {
    const char* v = std::getenv("KVINFER_SKINNY");
    if (v && std::strcmp(v, "wide") == 0) return SkinnyKernel::wide;
    if (v && std::strcmp(v, "narrow") == 0) return SkinnyKernel::narrow;
    if (v && std::strcmp(v, "wgmma") == 0) return SkinnyKernel::wgmma;
    return SkinnyKernel::automatic;
  }();
  return forced;
}

}  // namespace

// KVINFER_WGMMA_FUSE=0 in the environment turns the Hopper kernel's fusions off (to measure what
// they give end to end).
bool skinny_wgmma_fusions() {
  static const bool on = [] {
    const char* v = std::getenv("KVINFER_WGMMA_FUSE");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

namespace {
// The kernel of SkinnyKernel::automatic: what KVINFER_SKINNY=narrow|wide|wgmma in the environment
// says (to measure what each gives end to end), else the wgmma kernel where it runs this input (a
// choice by device and input kind, the same for every M), else the wide kernel for an LM head of
// more than 32 rows (the narrow kernel's bits), the narrow one otherwise (measurements:
// docs/dev/step-runtime-notes.md).
SkinnyKernel automatic_kernel(int N, int M, SkinnyIn in) {
  const SkinnyKernel forced = forced_kernel();
  const bool wgmma = skinny_wgmma_available() && (in == SkinnyIn::half || in == SkinnyIn::rms_norm);
  if (forced == SkinnyKernel::narrow || forced == SkinnyKernel::wide) return forced;
  if (wgmma) return SkinnyKernel::wgmma;
  return M > 32 && N >= kSkinnyWideMinVocab ? SkinnyKernel::wide : SkinnyKernel::narrow;
}

template <SkinnyIn IN, SkinnyOut OUT, int NT, int TPB>
void launch_group(const half_t* w, int N, int K, int M, const SkinnyPlan& plan, const SkinnyInput& in,
                  const SkinnyOutput& out, const SkinnyWorkspace& ws, cudaStream_t stream) {
  const dim3 grid((plan.tiles + TPB - 1) / TPB * plan.splits), block(kThreads * TPB);
  launch_dependent(skinny_kernel<IN, OUT, NT, TPB>, grid, block, 0, stream, w, N, K, M, plan, in, out, ws);
}

// Tiles per block: more where several tokens read each input column (up to 4: 512 threads within
// 128 registers), fewer where the GPU would then have under two blocks per SM.
template <SkinnyIn IN, SkinnyOut OUT, int NT>
void launch_tiles(const half_t* w, int N, int K, int M, const SkinnyPlan& plan, const SkinnyInput& in,
                  const SkinnyOutput& out, const SkinnyWorkspace& ws, cudaStream_t stream) {
  int tpb = NT >= 4 ? 4 : NT;
  while (tpb > 1 && static_cast<int64_t>((plan.tiles + tpb - 1) / tpb) * plan.splits < 264) tpb /= 2;
  if constexpr (NT >= 4) {
    if (tpb == 4) return launch_group<IN, OUT, NT, 4>(w, N, K, M, plan, in, out, ws, stream);
  }
  if constexpr (NT >= 2) {
    if (tpb == 2) return launch_group<IN, OUT, NT, 2>(w, N, K, M, plan, in, out, ws, stream);
  }
  launch_group<IN, OUT, NT, 1>(w, N, K, M, plan, in, out, ws, stream);
}

template <SkinnyIn IN, SkinnyOut OUT>
void launch(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
            const SkinnyWorkspace& ws, SkinnyKernel which, cudaStream_t stream) {
  const SkinnyPlan plan = skinny_plan(N, K);
  if constexpr (IN != SkinnyIn::rms_norm) {  // (RMSNorm inputs reach these as normed fp16 rows)
    if (which == SkinnyKernel::wide) return skinny_gemm_wide(w, N, K, M, in, out, ws, stream);
    if (M > 32) return launch_tiles<IN, OUT, 8>(w, N, K, M, plan, in, out, ws, stream);
    if (M > 16) return launch_tiles<IN, OUT, 4>(w, N, K, M, plan, in, out, ws, stream);
    if (M > 8) return launch_tiles<IN, OUT, 2>(w, N, K, M, plan, in, out, ws, stream);
  }
  launch_tiles<IN, OUT, 1>(w, N, K, M, plan, in, out, ws, stream);
}
}  // namespace

bool skinny_wgmma_available() {
#if KVINFER_WITH_SM90A
  static const bool runs = skinny_wgmma_runs();
  return runs;
#else
  return false;
#endif
}

bool skinny_paired_supported(int N, const SkinnyOutput& out) {
  if (!skinny_wgmma_fusions() || !skinny_wgmma_available() || forced_kernel() == SkinnyKernel::narrow || forced_kernel() == SkinnyKernel::wide)
    return false;
  if (out.kind == SkinnyOut::silu_mul) return N % 64 == 0 && out.ld % 8 == 0;
  if (out.kind == SkinnyOut::rope_kv) {
    const SkinnyRopeKV& r = out.rope;
    return r.head_dim % 64 == 0 && r.num_heads > 0 && r.num_kv_heads > 0 &&
           static_cast<int64_t>(r.num_heads + 2 * r.num_kv_heads) * r.head_dim == N && r.layout.head_dim == r.head_dim &&
           r.k_cache && r.v_cache;
  }
  return false;
}

bool skinny_supported(int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out) {
  if ((out.kind == SkinnyOut::silu_mul || out.kind == SkinnyOut::rope_kv) &&
      (!skinny_paired_supported(N, out) || (in.kind != SkinnyIn::half && in.kind != SkinnyIn::rms_norm)))
    return false;
  if (M < 1 || M > kSkinnyMaxRows || N < 1 || K < 8 || K % 8 != 0 || in.ld % 8 != 0) return false;
  if (in.kind == SkinnyIn::rms_norm && (K % kSkinnyTile != 0 || in.ld % 4 != 0)) return false;
  if (in.kind == SkinnyIn::silu_mul && in.up_offset % 8 != 0) return false;
  if (out.kind == SkinnyOut::residual && out.ss && N % kSkinnyTile != 0) return false;
  return true;
}

void skinny_gemm(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                 const SkinnyWorkspace& ws, cudaStream_t stream, SkinnyKernel which) {
  KVINFER_CHECK_ARG(skinny_supported(N, K, M, in, out), "skinny_gemm: unsupported shape N=", N, " K=", K,
                    " M=", M, " (M in [1, ", kSkinnyMaxRows, "], K a multiple of 8, aligned rows)");
  KVINFER_CHECK_ARG(skinny_partial_floats(N, K) == 0 || (ws.partials && ws.counters),
                    "skinny_gemm: N=", N, " K=", K, " splits K and needs a workspace");
  if (which == SkinnyKernel::automatic) which = automatic_kernel(N, M, in.kind);
  const bool paired = out.kind == SkinnyOut::silu_mul || out.kind == SkinnyOut::rope_kv;
  KVINFER_CHECK_ARG(!paired || which == SkinnyKernel::wgmma,
                    "skinny_gemm: the silu_mul and rope_kv epilogues run on the wgmma kernel only");
#if KVINFER_WITH_SM90A
  const bool wgmma_norms = which == SkinnyKernel::wgmma && skinny_wgmma_fuses_norm(in, out);
#else
  const bool wgmma_norms = false;
#endif
  // the wide kernel, the wgmma one unless it normalises this input itself, and the narrow one
  // beyond kSkinnyNormInBlockRows rows take normed fp16 rows
  const bool normed_first = in.kind == SkinnyIn::rms_norm && !wgmma_norms &&
                            (M > kSkinnyNormInBlockRows || which == SkinnyKernel::wide || which == SkinnyKernel::wgmma);
  if (which == SkinnyKernel::wgmma)
    KVINFER_CHECK_ARG(skinny_wgmma_available() && (in.kind == SkinnyIn::half || in.kind == SkinnyIn::rms_norm),
                      "skinny_gemm: the wgmma kernel needs a build for sm_90a, a compute capability 9.0 GPU and fp16 "
                      "or RMSNorm input");
  if (normed_first) {
    KVINFER_CHECK_ARG(ws.normed, "skinny_gemm: RMSNorm input of ", M, " rows needs the workspace's normed rows");
    launch_dependent(rms_rows_kernel, dim3(M), dim3(128), 0, stream, in, K, M, reinterpret_cast<__half*>(ws.normed));
  }
  const SkinnyInput h = normed_first ? SkinnyInput{SkinnyIn::half, ws.normed, K} : in;
  if (which == SkinnyKernel::wgmma) {
#if KVINFER_WITH_SM90A
    return skinny_gemm_wgmma(w, N, K, M, h, out, stream);
#endif
  }
  if (normed_first) {
    if (out.kind == SkinnyOut::half) return launch<SkinnyIn::half, SkinnyOut::half>(w, N, K, M, h, out, ws, which, stream);
    return launch<SkinnyIn::half, SkinnyOut::logits>(w, N, K, M, h, out, ws, which, stream);
  }
#define KVINFER_SKINNY(I, O) \
  if (in.kind == SkinnyIn::I && out.kind == SkinnyOut::O) return launch<SkinnyIn::I, SkinnyOut::O>(w, N, K, M, in, out, ws, which, stream)
  KVINFER_SKINNY(rms_norm, half);
  KVINFER_SKINNY(rms_norm, logits);
  KVINFER_SKINNY(half, half);
  KVINFER_SKINNY(half, logits);
  KVINFER_SKINNY(half, residual);
  KVINFER_SKINNY(silu_mul, residual);
  KVINFER_SKINNY(gelu, residual);
#undef KVINFER_SKINNY
  throw std::invalid_argument("skinny_gemm: this input and epilogue are not built together");
}

}  // namespace kvinfer::cuda
