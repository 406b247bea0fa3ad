// Decode attention: the fold of a row's chunk states, in chunk order, by the block that completes
// the row (the merge of split partials): the same instructions as the fold in registers, so a row
// folded across blocks gets the bits of one folded in a block.
#pragma once

#include "backend/cuda/decode_common.cuh"

namespace kvinfer::cuda::decode {

// (M, L, O) <- (M, L, O) (+) one chunk state, four dims of a head: the fold of finish_row and
// finish_row_staged.
__device__ __forceinline__ void fold_chunk4(float& M, float& L, float4& O, float2 ml, float4 o) {
  float x, y;
  fold_weights(M, ml.x, x, y);
  L = fold_acc(L, x, ml.y, y);
  O = make_float4(fold_acc(O.x, x, o.x, y), fold_acc(O.y, x, o.y, y), fold_acc(O.z, x, o.z, y),
                  fold_acc(O.w, x, o.w, y));
}

// out[b, qh, d .. d + 3] = O / L.
template <int D>
__device__ __forceinline__ void store_out4(const DecodeArgs& a, int b, int qh, int d, float4 O, float L) {
  __half2* dst = reinterpret_cast<__half2*>(a.out + b * a.out_stride + static_cast<int64_t>(qh) * D + d);
  dst[0] = __floats2half2_rn(__fdiv_rn(O.x, L), __fdiv_rn(O.y, L));
  dst[1] = __floats2half2_rn(__fdiv_rn(O.z, L), __fdiv_rn(O.w, L));
}

// Row (b, g) is complete in the workspace: fold its chunk states in chunk order, starting from the
// prefix state in slot first - 1 (the fold of register-held chunks 0..first-1 gives the same bits),
// and write the output. The states come from other blocks, through L2; a thread takes 4 dims and
// issues the loads of kBatch chunks before it folds them: one round trip through L2 per batch.
// Inside the tile loop, where the loop's state is live, the batch is small: 8 chunks, 4 at head_dim
// 64, which keeps that kernel within 128 registers. After the loop, rows of up to 8 chunks come here
// too (one round trip, no barrier); longer ones go through finish_row_staged.
template <int D, int kBatch>
__device__ void finish_row(const DecodeArgs& a, int b, int g, int splits, int first) {
  for (int e = threadIdx.x; e < a.group * (D / 4); e += kThreads) {
    const int qh = g * a.group + e / (D / 4), d = 4 * (e % (D / 4));
    const float2* ml = reinterpret_cast<const float2*>(a.chunk_ml(b, qh, 0));
    const float* o = a.chunk_o(b, qh, 0) + d;
    float M = 0.0f, L = 0.0f;
    float4 O = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s0 = first - 1; s0 < splits; s0 += kBatch) {  // slot first - 1 seeds the fold
      float2 mls[kBatch];
      float4 os[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int s = min(s0 + j, splits - 1);  // past the end: a valid slot, not folded
        mls[j] = __ldcg(ml + s);
        os[j] = __ldcg(reinterpret_cast<const float4*>(o + s * D));
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (s0 + j >= splits) break;
        if (s0 + j == first - 1) {
          M = mls[j].x;
          L = mls[j].y;
          O = os[j];
          continue;
        }
        fold_chunk4(M, L, O, mls[j], os[j]);
      }
    }
    store_out4<D>(a, b, qh, d, O, L);
  }
}

// The fold of finish_row after the tile loop, through shared memory (the tile stages are free by
// then): the row's chunk states from slot first - 1 on are copied in with cp.async, as many heads at
// a time as fit, then each thread folds its elements in chunk order with the same instructions as
// finish_row, so the bits are the same. The loops stay rolled: this runs once, at the end of the
// critical path of a small batch, from a cold instruction cache (a 32-chunk fold unrolled in
// registers was a fifth of the kernel's code); one round trip per batch of heads.
template <int D>
__device__ void finish_row_staged(const DecodeArgs& a, int b, int g, int splits, int first, float* buf,
                                  int buf_floats) {
  const int s0 = first - 1, nb = splits - s0;  // chunk slots s0 .. splits - 1
  const int ml0 = s0 & ~1, ml_units = (splits - ml0 + 1) / 2;  // (m, l) pairs from an even slot: 16 bytes
  const int hb = min(a.group, buf_floats / (nb * D + 4 * ml_units));
#pragma unroll 1
  for (int h0 = 0; h0 < a.group; h0 += hb) {
    const int nh = min(hb, a.group - h0);
    float* so = buf;                  // [nh][nb][D]
    float* sml = buf + nh * nb * D;   // [nh][2 ml_units]: (m, l) of slots ml0 ..
#pragma unroll 1
    for (int hh = 0; hh < nh; ++hh) {
      const int qh = g * a.group + h0 + hh;
      const float* o = a.chunk_o(b, qh, s0);
      for (int u = threadIdx.x; u < nb * (D / 4); u += kThreads) cp_async16(so + hh * nb * D + 4 * u, o + 4 * u, 16);
      const float* ml = a.chunk_ml(b, qh, ml0);
      for (int u = threadIdx.x; u < ml_units; u += kThreads) cp_async16(sml + hh * 4 * ml_units + 4 * u, ml + 4 * u, 16);
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
#pragma unroll 1
    for (int e = threadIdx.x; e < nh * (D / 4); e += kThreads) {
      const int hh = e / (D / 4), d = 4 * (e % (D / 4));
      const float2* ml = reinterpret_cast<const float2*>(sml + hh * 4 * ml_units) + (s0 - ml0);
      const float4* o = reinterpret_cast<const float4*>(so + hh * nb * D + d);
      float M = ml[0].x, L = ml[0].y;  // slot first - 1 seeds the fold
      float4 O = o[0];
#pragma unroll 4
      for (int j = 1; j < nb; ++j) fold_chunk4(M, L, O, ml[j], o[j * (D / 4)]);
      store_out4<D>(a, b, g * a.group + h0 + hh, d, O, L);
    }
    __syncthreads();  // the next batch of heads reuses the buffer
  }
}

}  // namespace kvinfer::cuda::decode
