// Split-K decode attention. Block (split s, kv head g, sequence b), 4 warps sharing 64-key K/V
// tiles staged in shared memory. Every K and V row is read once for all GROUP query heads
// of the KV head (GQA), and each warp keeps its own online-softmax state (m, l, o) per head. The
// warps merge in shared memory and write the chunk's (m, l, o); merge_kernel combines the chunks
// of a sequence in order.
//
// Chunking (DecodeSplits): splits = min(max_splits, ceil(n / min_chunk)), chunk = ceil(n / splits)
// rounded up to 64; both depend only on n = position + 1, so a sequence's result is the same in
// any batch.
#include "cuda/attention.h"

#include <cuda_fp16.h>

#include "cpp/cuda_check.h"
#include "cpp/errors.h"
#include "cuda/common.cuh"

namespace kvinfer::cuda {

namespace {
constexpr int kWarps = 4;
constexpr int kRows = 64;  // keys per shared-memory tile

template <int D>
__host__ __device__ constexpr int tile_ld() { return D + 8; }  // padded row: conflict-free 16-byte reads
template <int D>
__host__ __device__ constexpr size_t tile_bytes() { return size_t{2} * 2 * kRows * tile_ld<D>() * sizeof(__half); }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}

__host__ __device__ inline void split_plan(int n, DecodeSplits plan, int& splits, int& chunk) {
  splits = (n + plan.min_chunk - 1) / plan.min_chunk;
  if (splits > plan.max_splits) splits = plan.max_splits;
  if (splits < 1) splits = 1;
  chunk = (n + splits - 1) / splits;
  chunk = (chunk + 63) / 64 * 64;
  splits = (n + chunk - 1) / chunk;
}

template <int VEC>
struct Vec;
template <>
struct Vec<1> {
  using type = __half;
  __device__ static void to_float(const type& v, float* f) { f[0] = __half2float(v); }
};
template <>
struct Vec<2> {
  using type = __half2;
  __device__ static void to_float(const type& v, float* f) {
    float2 a = __half22float2(v);
    f[0] = a.x;
    f[1] = a.y;
  }
};
template <>
struct Vec<4> {
  struct alignas(8) type {
    __half2 a, b;
  };
  __device__ static void to_float(const type& v, float* f) {
    float2 x = __half22float2(v.a), y = __half22float2(v.b);
    f[0] = x.x;
    f[1] = x.y;
    f[2] = y.x;
    f[3] = y.y;
  }
};
}  // namespace

// partial layout: o [batch][num_heads][kDecodeMaxSplits][head_dim] then ml [batch][num_heads][kDecodeMaxSplits][2]
template <int D, int VEC, int GROUP>
static __global__ void __launch_bounds__(kWarps * 32)
    decode_kernel(const __half* __restrict__ q, int64_t q_stride, const __half* __restrict__ k_cache,
                  const __half* __restrict__ v_cache, KVLayout layout, const int32_t* __restrict__ seq_slots,
                  const int32_t* __restrict__ positions, int num_heads, float scale, DecodeSplits plan,
                  float* __restrict__ part_o, float* __restrict__ part_ml) {
  constexpr int kLanesUsed = D / VEC;  // lanes holding V dims; the rest idle (D=80/96)
  static_assert(D % VEC == 0 && kLanesUsed <= 32 && D % 8 == 0, "head_dim per lane");
  using V = Vec<VEC>;
  constexpr int kLd = tile_ld<D>();
  static_assert(kWarps * GROUP * D * sizeof(float) <= tile_bytes<D>(), "merge area fits in the tiles");
  __shared__ __align__(16) float q_s[GROUP][D];
  const int s = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int n = positions[b] + 1;
  int splits, chunk;
  split_plan(n, plan, splits, chunk);
  if (s >= splits) return;
  const int begin = s * chunk, end = min(n, begin + chunk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int e = threadIdx.x; e < GROUP * D; e += blockDim.x)
    q_s[e / D][e % D] = __half2float(q[b * q_stride + static_cast<int64_t>(g * GROUP) * D + e]) * scale;
  __syncthreads();

  const bool active = lane < kLanesUsed;
  const int d0 = lane * VEC;
  const int64_t base = seq_slots[b] * layout.slot_stride + g * layout.head_stride;
  const __half* kbase = k_cache + base;

  float m[GROUP], l[GROUP], o[GROUP][VEC];
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[h][e] = 0.0f;
  }
  // 64-key tiles of K and V stream into shared memory with cp.async, two stages deep, so the next
  // tile is in flight while this one is used. Warp w takes rows 16w..16w+15 of a tile. QK^T: lanes
  // l and l+16 share key l & 15, each reading half of its row, q broadcast from shared memory, one
  // shuffle adds the halves. Softmax statistics: one warp reduction per tile and head. PV: lanes
  // over dims, each key's probability broadcast by a shuffle.
  extern __shared__ __align__(16) unsigned char tiles_raw[];
  __half* tiles = reinterpret_cast<__half*>(tiles_raw);  // [stage][K|V][kRows][kLd]
  const __half* vbase = v_cache + base;
  auto tile = [&](int stage, int which) { return tiles + (stage * 2 + which) * kRows * kLd; };
  auto issue = [&](int stage, int j0) {
    const int rows = min(kRows, end - j0);
    for (int e = threadIdx.x; e < kRows * (D / 8); e += blockDim.x) {
      const int r = e / (D / 8), c = (e % (D / 8)) * 8;
      if (r < rows) {
        const int64_t off = static_cast<int64_t>(j0 + r) * layout.pos_stride + c;
        cp_async16(tile(stage, 0) + r * kLd + c, kbase + off);
        cp_async16(tile(stage, 1) + r * kLd + c, vbase + off);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  constexpr int kChunks = D / 16;  // 16-byte chunks in half a row
  const int kl = lane & 15, half_id = lane >> 4;
  const int tiles_n = (end - begin + kRows - 1) / kRows;
  issue(0, begin);
  for (int t = 0; t < tiles_n; ++t) {
    const int j0 = begin + t * kRows;
    if (t + 1 < tiles_n) {
      issue((t + 1) & 1, j0 + kRows);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    const __half* Kt = tile(t & 1, 0) + warp * 16 * kLd;
    const __half* Vt = tile(t & 1, 1) + warp * 16 * kLd;
    const int keys = min(16, end - (j0 + warp * 16));  // this warp's rows of the tile (warp-uniform)
    if (keys > 0) {
      const bool valid = kl < keys;
      float sc[GROUP];
#pragma unroll
      for (int h = 0; h < GROUP; ++h) sc[h] = 0.0f;
      const __half* krow = Kt + kl * kLd + half_id * (D / 2);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const uint4 kv = *reinterpret_cast<const uint4*>(krow + c * 8);
        const __half2* k2 = reinterpret_cast<const __half2*>(&kv);
        float kf[8];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = __half22float2(k2[e]);
          kf[2 * e] = f.x;
          kf[2 * e + 1] = f.y;
        }
#pragma unroll
        for (int h = 0; h < GROUP; ++h) {
          const float* qh = &q_s[h][half_id * (D / 2) + c * 8];
          const float4 qa = *reinterpret_cast<const float4*>(qh);
          const float4 qb = *reinterpret_cast<const float4*>(qh + 4);
          sc[h] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                   qb.z * kf[6] + qb.w * kf[7];
        }
      }
      float p[GROUP];
#pragma unroll
      for (int h = 0; h < GROUP; ++h) {
        const float both = sc[h] + __shfl_xor_sync(0xffffffffu, sc[h], 16);  // every lane must shuffle
        const float sv = valid ? both : -INFINITY;
        const float m_new = fmaxf(m[h], warp_max(sv));
        const float corr = __expf(m[h] - m_new);  // 0 on the first tile (m = -inf)
        p[h] = valid ? __expf(sv - m_new) : 0.0f;
        l[h] = l[h] * corr + 0.5f * warp_sum(p[h]);  // every key sits in two lanes: exact halving
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[h][e] *= corr;
        m[h] = m_new;
      }
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        if (u >= keys) break;  // uniform across the warp
        float vf[VEC];
        if (active) V::to_float(*reinterpret_cast<const typename V::type*>(Vt + u * kLd + d0), vf);
#pragma unroll
        for (int h = 0; h < GROUP; ++h) {
          const float pj = __shfl_sync(0xffffffffu, p[h], u);
          if (active)
#pragma unroll
            for (int e = 0; e < VEC; ++e) o[h][e] += pj * vf[e];
        }
      }
    }
    __syncthreads();  // the next issue overwrites this stage
  }

  // merge the warps' states: warp 0 combines, in warp order
  __shared__ float sm[kWarps][GROUP][2];
  auto so = reinterpret_cast<float (*)[GROUP][D]>(tiles_raw);  // [kWarps][GROUP][D], reuses the tiles
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
    if (lane == 0) {
      sm[warp][h][0] = m[h];
      sm[warp][h][1] = l[h];
    }
    if (active)
#pragma unroll
      for (int e = 0; e < VEC; ++e) so[warp][h][d0 + e] = o[h][e];
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
    float mm = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, sm[w][h][0]);
    float ll = 0.0f, acc[VEC] = {};
    for (int w = 0; w < kWarps; ++w) {
      const float f = sm[w][h][0] == -INFINITY ? 0.0f : __expf(sm[w][h][0] - mm);
      ll += sm[w][h][1] * f;
      if (active)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] += so[w][h][d0 + e] * f;
    }
    const int head = g * GROUP + h;
    const int64_t slot = (static_cast<int64_t>(b) * num_heads + head) * kDecodeMaxSplits + s;
    if (active)
#pragma unroll
      for (int e = 0; e < VEC; ++e) part_o[slot * D + d0 + e] = acc[e];
    if (lane == 0) {
      part_ml[slot * 2] = mm;
      part_ml[slot * 2 + 1] = ll;
    }
  }
}

template <int D>
static __global__ void merge_kernel(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                    const int32_t* __restrict__ positions, int num_heads, DecodeSplits plan,
                                    __half* __restrict__ out, int64_t out_stride) {
  const int head = blockIdx.x, b = blockIdx.y;
  int splits, chunk;
  split_plan(positions[b] + 1, plan, splits, chunk);
  const int64_t first = (static_cast<int64_t>(b) * num_heads + head) * kDecodeMaxSplits;
  float mm = -INFINITY;
  for (int s = 0; s < splits; ++s) mm = fmaxf(mm, part_ml[(first + s) * 2]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float ll = 0.0f, acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float f = __expf(part_ml[(first + s) * 2] - mm);
      ll += part_ml[(first + s) * 2 + 1] * f;
      acc += part_o[(first + s) * D + d] * f;
    }
    out[b * out_stride + static_cast<int64_t>(head) * D + d] = __float2half_rn(acc / ll);
  }
}

size_t decode_workspace_bytes(int batch, int num_heads, int head_dim) {
  return static_cast<size_t>(batch) * num_heads * kDecodeMaxSplits * (head_dim + 2) * sizeof(float);
}

template <int D, int VEC>
static void launch_decode(const half_t* q, int64_t q_stride, const half_t* k_cache,
                          const half_t* v_cache, const KVLayout& layout, const int32_t* seq_slots,
                          const int32_t* positions, int batch, int num_heads, int num_kv_heads,
                          float scale, float* partial, half_t* out, int64_t out_stride,
                          cudaStream_t stream, DecodeSplits plan) {
  const int group = num_heads / num_kv_heads;
  float* part_o = partial;
  float* part_ml = partial + static_cast<size_t>(batch) * num_heads * kDecodeMaxSplits * D;
  const dim3 grid(plan.max_splits, num_kv_heads, batch);
  auto qh = reinterpret_cast<const __half*>(q);
  auto kc = reinterpret_cast<const __half*>(k_cache);
  auto vc = reinterpret_cast<const __half*>(v_cache);
#define KVINFER_DECODE_CASE(G)                                                                    \
  case G:                                                                                         \
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<D, VEC, G>,                             \
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,          \
                                            static_cast<int>(tile_bytes<D>())));                  \
    decode_kernel<D, VEC, G><<<grid, kWarps * 32, tile_bytes<D>(), stream>>>(                     \
        qh, q_stride, kc, vc, layout, seq_slots, positions, num_heads, scale, plan, part_o, part_ml); \
    break;
  switch (group) {
    KVINFER_DECODE_CASE(1)
    KVINFER_DECODE_CASE(2)
    KVINFER_DECODE_CASE(3)
    KVINFER_DECODE_CASE(4)
    KVINFER_DECODE_CASE(5)
    KVINFER_DECODE_CASE(6)
    KVINFER_DECODE_CASE(7)
    KVINFER_DECODE_CASE(8)
    default:
      throw std::invalid_argument(str("attention_decode: GQA group of ", group,
                                      " query heads per KV head is not supported (1..8)"));
  }
#undef KVINFER_DECODE_CASE
  KVINFER_CUDA_CHECK_LAUNCH();
  merge_kernel<D><<<dim3(num_heads, batch), D, 0, stream>>>(part_o, part_ml, positions, num_heads, plan,
                                                            reinterpret_cast<__half*>(out), out_stride);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void attention_decode(const half_t* q, int64_t q_stride, const half_t* k_cache,
                      const half_t* v_cache, const KVLayout& layout, const int32_t* seq_slots,
                      const int32_t* positions, int batch, int num_heads, int num_kv_heads,
                      int head_dim, float scale, float* partial, half_t* out, int64_t out_stride,
                      cudaStream_t stream, DecodeSplits plan) {
  if (batch == 0) return;
  KVINFER_CHECK_ARG(plan.min_chunk >= 64 && plan.max_splits >= 1 && plan.max_splits <= kDecodeMaxSplits,
                    "attention_decode: min_chunk=", plan.min_chunk, " max_splits=", plan.max_splits,
                    " (need min_chunk >= 64, 1 <= max_splits <= ", kDecodeMaxSplits, ")");
  KVINFER_CHECK_ARG(num_heads % num_kv_heads == 0, "num_heads=", num_heads,
                    " is not a multiple of num_kv_heads=", num_kv_heads);
  switch (head_dim) {
#define KVINFER_DECODE_DIM(D, VEC)                                                              \
  case D:                                                                                       \
    return launch_decode<D, VEC>(q, q_stride, k_cache, v_cache, layout, seq_slots, positions,   \
                                 batch, num_heads, num_kv_heads, scale, partial, out, out_stride, \
                                 stream, plan);
    KVINFER_DECODE_DIM(32, 1)
    KVINFER_DECODE_DIM(64, 2)
    KVINFER_DECODE_DIM(80, 4)
    KVINFER_DECODE_DIM(96, 4)
    KVINFER_DECODE_DIM(128, 4)
#undef KVINFER_DECODE_DIM
    default:
      throw std::invalid_argument(str("attention_decode: head_dim=", head_dim,
                                      " is not supported (32, 64, 80, 96, 128)"));
  }
}

}  // namespace kvinfer::cuda
