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
//
// Paired epilogues (silu_mul, rope_kv): outputs come in pairs P rows apart (gate j and up j,
// P = N / 2; the two halves of a RoPE pair, P = head_dim / 2), so a block takes two 32-row weight
// boxes P rows apart as the MMA's 64 rows and finishes each pair in one thread: SwiGLU's gate/up
// projection writes silu(gate) * up, the qkv projection writes rotated q and puts rotated k and v
// into the KV cache, each value rounded to fp16 first as the separate op reads it.
#include "backend/cuda/sm90/skinny_wgmma.h"

#include <cooperative_groups.h>
#include <cuda.h>
#include <cuda_fp16.h>

#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/skinny_common.cuh"
#include "backend/cuda/sm90/tensor_map.h"
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

// Shared memory of a block: kCount stages of [weights 64 x 64 fp16 | input], then for RMSNorm
// input three fp16 B tiles taken in turn and a ring of the norm weights' columns, then the
// barriers. fp16 input: an NP x 64 box in the swizzled layout the MMA reads. RMSNorm input: the
// fp32 rows' NP x 64 box as stored, which the consumers normalise into a B tile.
template <SkinnyIn IN, int NP>
struct Stages {
  static constexpr bool kNorm = IN == SkinnyIn::rms_norm;
  static constexpr int kW = kRows * kCols * 2;                 // a 64 x 64 weight box
  static constexpr int kX = NP * kCols * (kNorm ? 4 : 2);      // the input rows' box (a multiple of 1024)
  static constexpr int kStage = kW + kX;
  static constexpr int kB = kNorm ? NP * kCols * 2 : 0;        // a normed B tile (1024-aligned after the stages)
  static constexpr int kNw = kNorm ? kCols * 2 : 0;            // a stage's norm weights
  static constexpr int kFit = (kSmemBudget - 2048 - 3 * kB) / (kStage + kNw);
  static constexpr int kCount = kFit < 8 ? kFit : 8;
  static constexpr int kRed = 4 * NP * kSkinnyTile * 4;  // [tile][row][16] fp32 after the loop
  static constexpr int kLoop = kCount * kStage + 3 * kB + kCount * kNw;
  static constexpr int kData = kLoop > kRed ? kLoop : kRed;
  static constexpr int kTx = kStage + kNw;  // bytes a stage's copies bring
  static constexpr size_t bytes = 1024 + kData + 2 * kCount * 8;  // alignment, data, barriers
  static_assert(kCount >= 3, "too few stages");
};

__host__ __device__ constexpr bool paired(SkinnyOut o) { return o == SkinnyOut::silu_mul || o == SkinnyOut::rope_kv; }

// The first row of each half of the pairs `group` holds: 32 pairs P rows apart, out of segments
// of 2 P rows (the whole matrix for silu_mul, a head for rope_kv).
__device__ __forceinline__ int pair_row0(int group, int P) {
  const int per = P / 32, seg = group / per;
  return seg * 2 * P + (group - seg * per) * 32;
}

// Pair j (0 <= j < P) of segment seg of output row m: a = out[seg 2P + j], b = out[seg 2P + j + P]
// before the bias, as fp16 values the way the separate op reads them.
template <SkinnyOut OUT>
__device__ __forceinline__ void finish_pair(const SkinnyOutput& out, int P, int seg, int j, int m, float a, float b) {
  const int na = seg * 2 * P + j;
  if (out.bias) {
    a += __half2float(reinterpret_cast<const __half*>(out.bias)[na]);
    b += __half2float(reinterpret_cast<const __half*>(out.bias)[na + P]);
  }
  a = __half2float(__float2half_rn(a)), b = __half2float(__float2half_rn(b));
  if constexpr (OUT == SkinnyOut::silu_mul) {
    static_cast<__half*>(out.y)[m * out.ld + seg * P + j] = __float2half_rn(silu_times(a, b));
  } else {
    const SkinnyRopeKV& r = out.rope;
    const int pos = r.step.positions[m];
    __half2 v = __floats2half2_rn(a, b);
    if (r.inv_freq && seg < r.num_heads + r.num_kv_heads) v = rope_rotate(a, b, pos, r.inv_freq[j]);
    __half* dst;
    if (seg < r.num_heads) {
      dst = static_cast<__half*>(out.y) + m * out.ld + seg * 2 * P;
    } else {
      const int kv = seg - r.num_heads, head = kv < r.num_kv_heads ? kv : kv - r.num_kv_heads;
      const int64_t row = r.layout.at(r.step.block_tables + int64_t(r.step.token_seq[m]) * r.layout.table_stride, head, pos);
      dst = reinterpret_cast<__half*>(kv < r.num_kv_heads ? r.k_cache : r.v_cache) + row;
    }
    dst[j] = __low2half(v), dst[j + P] = __high2half(v);
  }
}

__device__ __forceinline__ void consumer_barrier() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }

// Normalise stage x32 (NP x 64 fp32 columns of the residual) into B tile b (fp16, 128-byte swizzled
// as TMA would have written it): b[r][k] = x[r][k] * inv[r] * nw[k], the arithmetic of the
// normed-rows kernel (skinny_common.cuh transform), so the bits are the same.
template <int NP>
__device__ __forceinline__ void normalise(const float* x32, const half_t* nw, const float* inv, unsigned char* b) {
  for (int item = threadIdx.x; item < NP * 8; item += kConsumers) {  // (row, 8-column chunk)
    const int r = item / 8, c = item % 8;
    const float4 a = *reinterpret_cast<const float4*>(x32 + r * kCols + 8 * c);
    const float4 bb = *reinterpret_cast<const float4*>(x32 + r * kCols + 8 * c + 4);
    skinny::Raw<SkinnyIn::rms_norm> raw;
    raw.a = a, raw.b = bb, raw.v = *reinterpret_cast<const uint4*>(nw + 8 * c);
    *reinterpret_cast<uint4*>(b + r * 128 + ((c ^ (r & 7)) * 16)) = skinny::transform<SkinnyIn::rms_norm>(raw, inv[r]);
  }
}

template <SkinnyIn IN, SkinnyOut OUT, int NP>
static __global__ void __launch_bounds__(kThreads)
    skinny_wgmma_kernel(const __grid_constant__ CUtensorMap wmap, const __grid_constant__ CUtensorMap xmap,
                        const __grid_constant__ CUtensorMap nmap, int N, int K, int M, int P, SkinnyWgmmaPlan plan,
                        SkinnyInput in, SkinnyOutput out) {
  using S = Stages<IN, NP>;
  extern __shared__ unsigned char smem_raw[];
  // swizzled boxes start on 1024-byte boundaries (the swizzle repeats every 8 rows of 128 bytes)
  unsigned char* const base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* const full = reinterpret_cast<uint64_t*>(base + S::kData);  // [stage]: its copies landed
  uint64_t* const empty = full + S::kCount;                            // [stage]: its MMAs landed
  float* const red = reinterpret_cast<float*>(base);                   // [4 tiles][NP rows][16], after the loop
  unsigned char* const btile = base + S::kCount * S::kStage;            // RMSNorm: [3][NP][64] fp16
  half_t* const nw = reinterpret_cast<half_t*>(btile + 3 * S::kB);      // RMSNorm: [stage][64] norm weights
  __shared__ float inv[NP];                                             // RMSNorm: 1 / rms of each row

  const int group = blockIdx.x / plan.splits, split = blockIdx.x - group * plan.splits;  // split: rank in the cluster
  const int chunks = (K + kCols - 1) / kCols, per = plan.k_per_split / kCols;
  const int c0 = split * per, count = min(chunks, c0 + per) - c0;  // this block's stages: chunks c0 ..
  // the block's weight rows: n0 .. n0 + 63, or (paired) n0 .. n0 + 31 and n0 + P .. n0 + P + 31
  const int n0 = paired(OUT) ? pair_row0(group, P) : group * kRows;
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
      auto load_weights = [&](unsigned char* stage, int i, uint64_t* bar) {
        if constexpr (S::kNorm) tma_load_2d(nw + (stage - base) / S::kStage * kCols, &nmap, (c0 + i) * kCols, 0, bar, reused);
        if constexpr (paired(OUT)) {
          tma_load_2d(stage, &wmap, (c0 + i) * kCols, n0, bar, once);
          tma_load_2d(stage + S::kW / 2, &wmap, (c0 + i) * kCols, n0 + P, bar, once);
        } else {
          tma_load_2d(stage, &wmap, (c0 + i) * kCols, n0, bar, once);
        }
      };
      for (int i = 0; i < ahead; ++i) {  // weights first: no kernel of the step writes them
        mbar_arrive_expect_tx(full + i, S::kTx);
        load_weights(base + i * S::kStage, i, full + i);
      }
      for (int i = ahead; i < min(count, ahead + kPrefetch); ++i) {
        tma_prefetch_2d(&wmap, (c0 + i) * kCols, n0);
        if constexpr (paired(OUT)) tma_prefetch_2d(&wmap, (c0 + i) * kCols, n0 + P);
      }
      pdl_wait();  // the input rows are an earlier kernel's output
      for (int i = 0; i < count; ++i) {
        const int s = i % S::kCount;
        unsigned char* const stage = base + s * S::kStage;
        if (i >= ahead) {
          mbar_wait(empty + s, ((i / S::kCount) & 1) ^ 1);  // use i / kCount - 1 of the stage is done
          mbar_arrive_expect_tx(full + s, S::kTx);
          load_weights(stage, i, full + s);
        }
        tma_load_2d(stage + S::kW, &xmap, (c0 + i) * kCols, 0, full + s, reused);
      }
    }
    // (the consumers let the next kernel launch, once the weights are read; the warp stays for
    // the cluster's barriers)
  } else {
    pdl_wait();  // (the epilogue reads and writes what earlier kernels use)
    if constexpr (S::kNorm) {  // 1 / rms of each row, a warp a row (rows past M: 0, their inputs are zeros)
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      for (int m = warp; m < NP; m += kConsumers / 32) {
        const float v = m < M ? skinny::inv_rms_of(in, m, K, lane) : 0.0f;
        if (lane == 0) inv[m] = v;
      }
      consumer_barrier();
    }
    float acc[NP / 8][4] = {};
    for (int i = 0; i < count; ++i) {
      const int s = i % S::kCount;
      mbar_wait(full + s, (i / S::kCount) & 1);
      const unsigned char* const stage = base + s * S::kStage;
      const unsigned char* b = stage + S::kW;
      if constexpr (S::kNorm) {
        // B tile i % 3 was last read by the MMAs of stage i - 3: every warp waited for them (stage
        // i - 2) before the barrier of stage i - 1, which this thread has passed
        unsigned char* const tile = btile + (i % 3) * S::kB;
        normalise<NP>(reinterpret_cast<const float*>(stage + S::kW), nw + s * kCols, inv, tile);
        fence_proxy_async();  // the MMAs read shared memory through the async proxy
        consumer_barrier();
        b = tile;
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk)  // 16 columns = 32 bytes along the swizzled rows
        wgmma_ss<NP>(acc, smem_desc(stage + kk * 32, 16, 1024), smem_desc(b + kk * 32, 16, 1024));
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
  // Paired: element e < kElems / 2 is block row i (the first half of a pair), e + kElems / 2 its
  // partner i + 32. Otherwise element e is finished alone.
  constexpr int kItems = paired(OUT) ? kElems / 2 : kElems, kHalf = kElems / 2;
  auto finish = [&](int e, float v, float partner) {
    const int l = e / (NP * kSkinnyTile), m = (e / kSkinnyTile) % NP, r = e % kSkinnyTile;
    if constexpr (paired(OUT)) {
      const int seg = n0 / (2 * P);
      if (m < M) finish_pair<OUT>(out, P, seg, n0 - seg * 2 * P + l * kSkinnyTile + r, m, v, partner);
    } else {
      const int tl = group * 4 + l;
      skinny::finish<OUT>(out, N, min(tl, tiles - 1), tiles, r, tl < tiles ? m : M, M, v);
    }
  };
  if (plan.splits == 1) {
    if (producer) return;
    consumer_barrier();
    for (int e = threadIdx.x; e < kItems; e += kConsumers) finish(e, red[e], paired(OUT) ? red[e + kHalf] : 0.0f);
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
    auto fold = [&](int e) {
      float v[kSkinnyWgmmaMaxSplits];
#pragma unroll
      for (int sp = 0; sp < kSkinnyWgmmaMaxSplits; ++sp) v[sp] = sp < plan.splits ? parts[sp][e] : 0.0f;
      float sum = v[0];
#pragma unroll
      for (int sp = 1; sp < kSkinnyWgmmaMaxSplits; ++sp)
        if (sp < plan.splits) sum += v[sp];
      return sum;
    };
    for (int e = split * kConsumers + threadIdx.x; e < kItems; e += kConsumers * plan.splits)
      finish(e, fold(e), paired(OUT) ? fold(e + kHalf) : 0.0f);
  }
  cluster.sync();  // no block reads another's shared memory after this: each may leave
}

template <SkinnyIn IN, SkinnyOut OUT, int NP>
void launch(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
            cudaStream_t stream) {
  using S = Stages<IN, NP>;
  static const bool sized = [] {
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(skinny_wgmma_kernel<IN, OUT, NP>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(S::bytes)));
    return true;
  }();
  (void)sized;
  const SkinnyWgmmaPlan plan = skinny_wgmma_plan(N, K);
  const int P = OUT == SkinnyOut::silu_mul ? N / 2 : OUT == SkinnyOut::rope_kv ? out.rope.head_dim / 2 : 0;
  const CUtensorMap wmap = tma_map_2d(w, N, K, K, paired(OUT) ? kRows / 2 : kRows, kCols),
                    xmap = tma_map_2d(in.x, M, K, in.ld, NP, kCols, S::kNorm ? TmaBox::fp32 : TmaBox::swizzled),
                    nmap = S::kNorm ? tma_map_2d(in.norm_weight, 1, K, K, 1, kCols, TmaBox::fp16) : wmap;
  // a dependent launch (launch_dependent()), in clusters of a group's K ranges
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(plan.groups * plan.splits);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = S::bytes;
  config.stream = stream;
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = plan.splits, attributes[0].val.clusterDim.y = 1, attributes[0].val.clusterDim.z = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attributes;
  config.numAttrs = 2;
  KVINFER_CUDA_CHECK(
      cudaLaunchKernelEx(&config, skinny_wgmma_kernel<IN, OUT, NP>, wmap, xmap, nmap, N, K, M, P, plan, in, out));
}

template <SkinnyIn IN, SkinnyOut OUT>
void launch_rows(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                 cudaStream_t stream) {
  if (M <= 8) return launch<IN, OUT, 8>(w, N, K, M, in, out, stream);
  if (M <= 16) return launch<IN, OUT, 16>(w, N, K, M, in, out, stream);
  if (M <= 32) return launch<IN, OUT, 32>(w, N, K, M, in, out, stream);
  launch<IN, OUT, 64>(w, N, K, M, in, out, stream);
}
}  // namespace

bool skinny_wgmma_runs() {
  int device = 0, major = 0, minor = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
}

bool skinny_wgmma_fuses_norm(const SkinnyInput& in, const SkinnyOutput& out) {
  return skinny_wgmma_fusions() && in.kind == SkinnyIn::rms_norm && in.norm_in_kernel && !in.rows && in.ld % 4 == 0 &&
         reinterpret_cast<uintptr_t>(in.x) % 16 == 0 && reinterpret_cast<uintptr_t>(in.norm_weight) % 16 == 0 &&
         (out.kind == SkinnyOut::half || out.kind == SkinnyOut::silu_mul || out.kind == SkinnyOut::rope_kv);
}

void skinny_gemm_wgmma(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                       cudaStream_t stream) {
  KVINFER_CHECK_ARG(in.kind == SkinnyIn::half || skinny_wgmma_fuses_norm(in, out),
                    "skinny_gemm_wgmma: fp16 input rows, or RMSNorm of whole fp32 rows into fp16 or paired outputs");
  KVINFER_CHECK_ARG(M >= 1 && M <= kSkinnyMaxRows, "skinny_gemm_wgmma: M=", M);
  // TMA reads rows that start on 16-byte boundaries
  KVINFER_CHECK_ARG(reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(in.x) % 16 == 0 &&
                        K % 8 == 0 && in.ld % 8 == 0,
                    "skinny_gemm_wgmma: weights and input rows must be 16-byte aligned (K=", K, ", ld=", in.ld, ")");
  if (in.kind == SkinnyIn::rms_norm) {
    switch (out.kind) {
      case SkinnyOut::half: return launch_rows<SkinnyIn::rms_norm, SkinnyOut::half>(w, N, K, M, in, out, stream);
      case SkinnyOut::silu_mul: return launch_rows<SkinnyIn::rms_norm, SkinnyOut::silu_mul>(w, N, K, M, in, out, stream);
      case SkinnyOut::rope_kv: return launch_rows<SkinnyIn::rms_norm, SkinnyOut::rope_kv>(w, N, K, M, in, out, stream);
      default: break;
    }
  }
  switch (out.kind) {
    case SkinnyOut::half: return launch_rows<SkinnyIn::half, SkinnyOut::half>(w, N, K, M, in, out, stream);
    case SkinnyOut::residual: return launch_rows<SkinnyIn::half, SkinnyOut::residual>(w, N, K, M, in, out, stream);
    case SkinnyOut::logits: return launch_rows<SkinnyIn::half, SkinnyOut::logits>(w, N, K, M, in, out, stream);
    case SkinnyOut::silu_mul: return launch_rows<SkinnyIn::half, SkinnyOut::silu_mul>(w, N, K, M, in, out, stream);
    case SkinnyOut::rope_kv: return launch_rows<SkinnyIn::half, SkinnyOut::rope_kv>(w, N, K, M, in, out, stream);
  }
}

}  // namespace kvinfer::cuda
