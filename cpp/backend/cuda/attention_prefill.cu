// Flash-style causal prefill attention with WMMA tensor-core tiles. Block = (64-row query tile of
// one sequence, query head), 4 warps, each owning 16 query rows. For each 64-key tile up to the
// tile's last position: S = Q K^T (fp16 x fp16 -> fp32), causal mask and online softmax per row
// (running max m, sum l; O rescaled by exp(m_old - m_new)), then O += P V. Tiles live in shared
// memory: Q, K, V [64][D+8] fp16 (padded against bank conflicts), S [64][68] fp32, P [64][72] fp16,
// O [64][D+4] fp32.
#include <cuda_fp16.h>
#include <mma.h>

#include "core/cuda_check.h"
#include "core/errors.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/common.cuh"

namespace kvinfer::cuda {

namespace {
constexpr int kRows = 64, kKeys = 64, kThreads = 128;
constexpr int kSld = kKeys + 4, kPld = kKeys + 8;

template <int D>
struct Smem {
  static constexpr int kLd = D + 8, kOld = D + 4;
  static constexpr size_t q = 0;
  static constexpr size_t k = q + kRows * kLd * 2;
  static constexpr size_t v = k + kKeys * kLd * 2;
  static constexpr size_t s = v + kKeys * kLd * 2;
  static constexpr size_t p = s + kRows * kSld * 4;
  static constexpr size_t o = p + kRows * kPld * 2;
  static constexpr size_t ml = o + kRows * kOld * 4;
  static constexpr size_t bytes = ml + kRows * 2 * 4;
  static_assert(k % 32 == 0 && v % 32 == 0 && s % 32 == 0 && p % 32 == 0 && o % 32 == 0, "alignment");
};

// rows [0, 64) of a [rows][D] fp16 matrix with row stride `stride` into smem [64][D+8]; rows at or
// beyond `valid` are zero.
template <int D>
__device__ void load_tile(__half* dst, const __half* src, int64_t stride, int valid) {
  constexpr int kVecs = D / 8;
  for (int e = threadIdx.x; e < kRows * kVecs; e += kThreads) {
    const int r = e / kVecs, c = (e % kVecs) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * stride + c);
    *reinterpret_cast<uint4*>(dst + r * (D + 8) + c) = v;
  }
}

// rows k0 .. k0 + 63 of KV head `head` of the sequence whose block table row is `table`, from the K
// and V pools into smem [64][D+8] each (one block lookup for both); rows at or beyond `valid` are zero.
template <int D>
__device__ void load_kv_tiles(__half* k_dst, __half* v_dst, const __half* k_pool, const __half* v_pool,
                              const KVLayout& layout, const int32_t* table, int head, int k0, int valid) {
  constexpr int kVecs = D / 8;
  for (int e = threadIdx.x; e < kRows * kVecs; e += kThreads) {
    const int r = e / kVecs, c = (e % kVecs) * 8;
    uint4 k = make_uint4(0, 0, 0, 0), v = k;
    if (r < valid) {
      const int64_t at = layout.at(table, head, k0 + r) + c;
      k = *reinterpret_cast<const uint4*>(k_pool + at);
      v = *reinterpret_cast<const uint4*>(v_pool + at);
    }
    *reinterpret_cast<uint4*>(k_dst + r * (D + 8) + c) = k;
    *reinterpret_cast<uint4*>(v_dst + r * (D + 8) + c) = v;
  }
}
}  // namespace

template <int D>
static __global__ void __launch_bounds__(kThreads)
    prefill_kernel(const __half* __restrict__ q, int64_t q_stride, const __half* __restrict__ k_cache,
                   const __half* __restrict__ v_cache, KVLayout layout, const int32_t* __restrict__ block_tables,
                   const int32_t* __restrict__ seq_starts, const int32_t* __restrict__ positions,
                   int num_heads, int num_kv_heads, float scale, __half* __restrict__ out, int64_t out_stride) {
  using namespace nvcuda;
  using L = Smem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* Qs = reinterpret_cast<__half*>(smem + L::q);
  __half* Ks = reinterpret_cast<__half*>(smem + L::k);
  __half* Vs = reinterpret_cast<__half*>(smem + L::v);
  float* S = reinterpret_cast<float*>(smem + L::s);
  __half* P = reinterpret_cast<__half*>(smem + L::p);
  float* O = reinterpret_cast<float*>(smem + L::o);
  float* M = reinterpret_cast<float*>(smem + L::ml);
  float* Lsum = M + kRows;

  const int b = blockIdx.z, head = blockIdx.y;
  const int start = seq_starts[b], n = seq_starts[b + 1] - start;
  const int r0 = blockIdx.x * kRows;
  if (r0 >= n) return;
  const int rows = min(kRows, n - r0);
  const int first_pos = positions[start + r0];  // rows of a sequence have consecutive positions
  const int last_pos = first_pos + rows - 1;
  const int kvh = head / (num_heads / num_kv_heads);
  const int32_t* table = block_tables + static_cast<int64_t>(b) * layout.table_stride;

  load_tile<D>(Qs, q + (start + r0) * q_stride + static_cast<int64_t>(head) * D, q_stride, rows);
  for (int e = threadIdx.x; e < kRows * L::kOld; e += kThreads) O[e] = 0.0f;
  for (int e = threadIdx.x; e < kRows; e += kThreads) {
    M[e] = -INFINITY;
    Lsum[e] = 0.0f;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = warp * 16;  // this warp's first row

  for (int k0 = 0; k0 <= last_pos; k0 += kKeys) {
    const int keys = min(kKeys, last_pos + 1 - k0);
    __syncthreads();  // previous tile fully consumed
    load_kv_tiles<D>(Ks, Vs, k_cache, v_cache, layout, table, kvh, k0, keys);
    __syncthreads();

    // S[wr:wr+16][0:64] = Q K^T
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kKeys / 16];
#pragma unroll
    for (int c = 0; c < kKeys / 16; ++c) wmma::fill_fragment(acc[c], 0.0f);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
      wmma::load_matrix_sync(a, Qs + wr * L::kLd + kk * 16, L::kLd);
#pragma unroll
      for (int c = 0; c < kKeys / 16; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bk;
        wmma::load_matrix_sync(bk, Ks + c * 16 * L::kLd + kk * 16, L::kLd);
        wmma::mma_sync(acc[c], a, bk, acc[c]);
      }
    }
#pragma unroll
    for (int c = 0; c < kKeys / 16; ++c)
      wmma::store_matrix_sync(S + wr * kSld + c * 16, acc[c], kSld, wmma::mem_row_major);
    __syncwarp();

    // online softmax: two lanes per row, 32 keys each
    {
      const int r = wr + (lane >> 1), half_id = lane & 1;
      const int pos = first_pos + min(r, rows - 1);
      float sv[32];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int c = half_id * 32 + i, key = k0 + c;
        sv[i] = (c < keys && key <= pos) ? S[r * kSld + c] * scale : -INFINITY;
        mx = fmaxf(mx, sv[i]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = M[r];
      const float m_new = fmaxf(m_old, mx);  // finite: key 0 <= every position
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const float p = sv[i] == -INFINITY ? 0.0f : __expf(sv[i] - m_new);
        sum += p;
        P[r * kPld + half_id * 32 + i] = __float2half_rn(p);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      const float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
      for (int d = half_id; d < D; d += 2) O[r * L::kOld + d] *= alpha;
      __syncwarp();
      if (half_id == 0) {
        M[r] = m_new;
        Lsum[r] = Lsum[r] * alpha + sum;
      }
    }
    __syncwarp();

    // O[wr:wr+16][:] += P V
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
      wmma::load_matrix_sync(o, O + wr * L::kOld + c * 16, L::kOld, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> bv;
        wmma::load_matrix_sync(a, P + wr * kPld + kk * 16, kPld);
        wmma::load_matrix_sync(bv, Vs + kk * 16 * L::kLd + c * 16, L::kLd);
        wmma::mma_sync(o, a, bv, o);
      }
      wmma::store_matrix_sync(O + wr * L::kOld + c * 16, o, L::kOld, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * D; e += kThreads) {
    const int r = e / D, d = e % D;
    out[(start + r0 + r) * out_stride + static_cast<int64_t>(head) * D + d] =
        __float2half_rn(O[r * L::kOld + d] / Lsum[r]);
  }
}

template <int D>
static void launch_prefill(const half_t* q, int64_t q_stride, const half_t* k_cache,
                           const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                           const int32_t* seq_starts, const int32_t* positions, int batch,
                           int max_seq_rows, int num_heads, int num_kv_heads, float scale,
                           half_t* out, int64_t out_stride, cudaStream_t stream) {
  constexpr size_t bytes = Smem<D>::bytes;
  // More than 48 KB of shared memory needs this opt-in, per device: cheap enough to repeat.
  KVINFER_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  const dim3 grid((max_seq_rows + kRows - 1) / kRows, num_heads, batch);
  prefill_kernel<D><<<grid, kThreads, bytes, stream>>>(
      reinterpret_cast<const __half*>(q), q_stride, reinterpret_cast<const __half*>(k_cache),
      reinterpret_cast<const __half*>(v_cache), layout, block_tables, seq_starts, positions, num_heads,
      num_kv_heads, scale, reinterpret_cast<__half*>(out), out_stride);
  KVINFER_CUDA_CHECK_LAUNCH();
}

void attention_prefill(const half_t* q, int64_t q_stride, const half_t* k_cache,
                       const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                       const int32_t* seq_starts, const int32_t* positions, int batch,
                       int max_seq_rows, int num_heads, int num_kv_heads, int head_dim, float scale,
                       half_t* out, int64_t out_stride, cudaStream_t stream) {
  if (batch == 0 || max_seq_rows == 0) return;
  KVINFER_CHECK_ARG(num_heads % num_kv_heads == 0, "num_heads=", num_heads,
                    " is not a multiple of num_kv_heads=", num_kv_heads);
  KVINFER_CHECK_ARG(q_stride % 8 == 0 && layout.head_dim % 8 == 0, "attention_prefill: q_stride=",
                    q_stride, " and the cache row stride must be multiples of 8 halves");
  switch (head_dim) {
#define KVINFER_PREFILL_CASE(D)                                                                \
  case D:                                                                                      \
    return launch_prefill<D>(q, q_stride, k_cache, v_cache, layout, block_tables, seq_starts,     \
                             positions, batch, max_seq_rows, num_heads, num_kv_heads, scale,   \
                             out, out_stride, stream);
    KVINFER_PREFILL_CASE(32)
    KVINFER_PREFILL_CASE(64)
    KVINFER_PREFILL_CASE(80)
    KVINFER_PREFILL_CASE(96)
    KVINFER_PREFILL_CASE(128)
#undef KVINFER_PREFILL_CASE
    default:
      throw std::invalid_argument(str("attention_prefill: head_dim=", head_dim,
                                      " is not supported (32, 64, 80, 96, 128)"));
  }
}

}  // namespace kvinfer::cuda
