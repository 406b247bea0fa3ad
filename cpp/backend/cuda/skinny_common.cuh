// What the skinny GEMM's kernels share (skinny_gemm.cu, the narrow one; skinny_gemm_wide.cu, the
// wide one): the fused inputs (load, then transform into the B fragment of a
// 32-column slice), the epilogues, and 1 / rms. Both kernels run the same instructions on the same
// fragments, so a row's result is the same bits whichever kernel its step takes.
#pragma once

#include <cuda_fp16.h>

#include "backend/cuda/common.cuh"
#include "backend/cuda/skinny_gemm.h"

namespace kvinfer::cuda::skinny {

__device__ __forceinline__ uint32_t pack(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ float2 unpack(uint32_t u) { return __half22float2(*reinterpret_cast<const __half2*>(&u)); }

__device__ __forceinline__ float silu_mul(float g, float u) { return silu_times(g, u); }
__device__ __forceinline__ float gelu_new(float v) {
  return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

// Columns k .. k + 7 of input row m, as loaded (zeros past K or M: their products add nothing).
// Loads of every slice in flight are issued before any is transformed (transform()), so a slice's
// norm or activation never waits on its own load while the others' could be on the way.
template <SkinnyIn IN>
struct Raw {
  uint4 v = make_uint4(0, 0, 0, 0);  // fp16 values (half, gelu; silu_mul: gate), or the norm weights
  uint4 u = make_uint4(0, 0, 0, 0);  // silu_mul: up
  float4 a = make_float4(0, 0, 0, 0), b = make_float4(0, 0, 0, 0);  // rms_norm: the fp32 columns
};

template <SkinnyIn IN>
__device__ __forceinline__ Raw<IN> load_raw(const SkinnyInput& in, int m, int k, int K) {
  Raw<IN> r;
  if (k >= K) return r;
  if constexpr (IN == SkinnyIn::rms_norm) {
    const int row = in.rows ? in.rows[m] : m;
    const float4* x = reinterpret_cast<const float4*>(static_cast<const float*>(in.x) + row * in.ld + k);
    r.a = x[0], r.b = x[1];
    r.v = *reinterpret_cast<const uint4*>(in.norm_weight + k);
  } else {
    const __half* x = static_cast<const __half*>(in.x) + m * in.ld + k;
    r.v = *reinterpret_cast<const uint4*>(x);
    if constexpr (IN == SkinnyIn::silu_mul) r.u = *reinterpret_cast<const uint4*>(x + in.up_offset);
  }
  return r;
}

// The B fragment of loaded columns: four fp16 pairs after the norm (inv = 1 / rms) or activation.
template <SkinnyIn IN>
__device__ __forceinline__ uint4 transform(const Raw<IN>& r, float inv) {
  if constexpr (IN == SkinnyIn::rms_norm) {
    const float2 w0 = unpack(r.v.x), w1 = unpack(r.v.y), w2 = unpack(r.v.z), w3 = unpack(r.v.w);
    return make_uint4(pack(r.a.x * inv * w0.x, r.a.y * inv * w0.y), pack(r.a.z * inv * w1.x, r.a.w * inv * w1.y),
                      pack(r.b.x * inv * w2.x, r.b.y * inv * w2.y), pack(r.b.z * inv * w3.x, r.b.w * inv * w3.y));
  } else if constexpr (IN == SkinnyIn::half) {
    return r.v;
  } else {
    uint32_t o[4];
    const uint32_t vg[4] = {r.v.x, r.v.y, r.v.z, r.v.w}, vu[4] = {r.u.x, r.u.y, r.u.z, r.u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 g = unpack(vg[i]);
      if constexpr (IN == SkinnyIn::silu_mul) {
        const float2 up = unpack(vu[i]);
        o[i] = pack(silu_mul(g.x, up.x), silu_mul(g.y, up.y));
      } else {
        o[i] = pack(gelu_new(g.x), gelu_new(g.y));
      }
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
  }
}

// The epilogue of element (r, m) of a tile, run by 16 consecutive threads per token (r = thread % 16).
template <SkinnyOut OUT>
__device__ __forceinline__ void finish(const SkinnyOutput& out, int N, int tile, int tiles, int r, int m, int M,
                                       float v) {
  const int n = tile * kSkinnyTile + r;
  const bool in = m < M && n < N;
  if (in && out.bias) v += __half2float(reinterpret_cast<const __half*>(out.bias)[n]);
  if constexpr (OUT == SkinnyOut::half) {
    if (in) static_cast<__half*>(out.y)[m * out.ld + n] = __float2half_rn(v);
  } else if constexpr (OUT == SkinnyOut::residual) {
    float x = 0.0f;
    if (in) {
      float* dst = static_cast<float*>(out.y) + m * out.ld + n;
      x = *dst + v;
      *dst = x;
    }
    float sq = x * x;  // sums of squares of the tile's 16 columns, for the next RMSNorm
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    if (out.ss && r == 0 && m < M) out.ss[m * (N / kSkinnyTile) + tile] = sq;
  } else {
    if (in) static_cast<float*>(out.y)[m * out.ld + n] = v;
    float best = in ? v : -INFINITY;
    int index = in ? n : 0x7fffffff;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {  // largest, lowest index on ties
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, index, o);
      if (ov > best || (ov == best && oi < index)) best = ov, index = oi;
    }
    if (out.argmax && r == 0 && m < M) out.argmax[m * tiles + tile] = make_int2(__float_as_int(best), index);
  }
}

// 1 / rms of token m from the producers' sums of squares of 16-column groups, by one warp: lane l
// adds groups l, l + 32, ... in order, then a fixed butterfly. The same instructions wherever it is
// computed (fused, or in rms_rows_kernel), so the normed rows are the same bits.
__device__ __forceinline__ float inv_rms_of(const SkinnyInput& in, int m, int K, int lane) {
  const float* ss = in.ss + (in.rows ? in.rows[m] : m) * (K / kSkinnyTile);
  float s = 0.0f;
  for (int p = lane; p < K / kSkinnyTile; p += 32) s += ss[p];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return rsqrtf(s / K + in.eps);
}

// The wide kernel (skinny_gemm_wide.cu), 1 to kSkinnyMaxRows rows; inputs half, silu_mul or gelu.
void skinny_gemm_wide(const half_t* w, int N, int K, int M, const SkinnyInput& in, const SkinnyOutput& out,
                      const SkinnyWorkspace& ws, cudaStream_t stream);

}  // namespace kvinfer::cuda::skinny
