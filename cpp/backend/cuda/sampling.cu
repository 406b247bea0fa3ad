// Sampling kernel: one 1024-thread block per row. Repetition and presence penalties through a
// shared-memory bitmap of the history's token ids (each id penalised once), the frequency penalty
// by atomic subtraction per occurrence, block reductions for argmax and sums,
// 32-step bisections over order-preserving integer keys for the top-k and top-p thresholds, and a
// block-wide prefix sum to find the drawn token.
#include "backend/cuda/sampling.h"

#include <cuda_fp16.h>

#include "core/cuda_check.h"
#include "core/errors.h"
#include "backend/cuda/common.cuh"

namespace kvinfer::cuda {

namespace {
constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t key_of(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float float_of(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// (value, index) of the warp's best element; ties go to the lowest index.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

// The largest t (a value of x) with weight(x >= t) >= target (count, or sum of x when mass).
__device__ float threshold(const float* x, int n, float target, bool mass, float* scratch) {
  uint64_t lo = 0, hi = 0xffffffffu;  // 64-bit: hi - lo + 1 must not wrap
  while (lo < hi) {
    const uint32_t mid = static_cast<uint32_t>(lo + (hi - lo + 1) / 2);
    float w = 0.0f;
    for (int i = threadIdx.x; i < n; i += kThreads)
      if (key_of(x[i]) >= mid) w += mass ? x[i] : 1.0f;
    w = block_sum(w, scratch);
    if (w >= target) lo = mid;
    else hi = mid - 1;
  }
  return float_of(static_cast<uint32_t>(lo));
}
}  // namespace

static __global__ void __launch_bounds__(kThreads)
    sample_kernel(float* __restrict__ logits, int vocab, StepArrays step,
                  const int32_t* __restrict__ history, int64_t history_stride, const int2* __restrict__ argmax,
                  int argmax_tiles, int32_t* __restrict__ out) {
  extern __shared__ uint32_t seen[];  // [ceil(vocab / 32)] bitmap
  __shared__ float scratch[32];
  __shared__ float best_val[32];
  __shared__ int best_idx[32];
  __shared__ float seg_prefix[kThreads];
  pdl_wait();  // the logits come from the LM head before
  const int b = blockIdx.x, tid = threadIdx.x;
  float* x = logits + static_cast<int64_t>(b) * vocab;
  const SamplingArgs a = step.sampling[b];
  const bool plain_greedy =
      a.temperature <= 0.0f && a.repetition_penalty == 1.0f && a.bias_count == 0 && !a.penalises_output();

  if (a.repetition_penalty != 1.0f && history) {
    const int words = (vocab + 31) / 32;
    for (int i = tid; i < words; i += kThreads) seen[i] = 0;
    __syncthreads();
    const int row = step.logit_rows[b];
    const int32_t* h = history + step.kv_slots[step.token_seq[row]] * history_stride;
    for (int i = tid; i <= step.positions[row]; i += kThreads) atomicOr(&seen[h[i] >> 5], 1u << (h[i] & 31));
    __syncthreads();
    for (int i = tid; i < vocab; i += kThreads)
      if (seen[i >> 5] & (1u << (i & 31))) x[i] = x[i] < 0 ? x[i] * a.repetition_penalty : x[i] / a.repetition_penalty;
    __syncthreads();
  }
  if (a.penalises_output() && history) {
    const int row = step.logit_rows[b];
    const int32_t* h = history + step.kv_slots[step.token_seq[row]] * history_stride;
    const int n = step.positions[row] + 1;
    // every subtraction of one id is by the same amount, so the atomics' order cannot change the result
    if (a.frequency_penalty != 0.0f)
      for (int i = a.output_start + tid; i < n; i += kThreads) atomicAdd(&x[h[i]], -a.frequency_penalty);
    if (a.presence_penalty != 0.0f) {
      const int words = (vocab + 31) / 32;
      for (int i = tid; i < words; i += kThreads) seen[i] = 0;
      __syncthreads();
      for (int i = a.output_start + tid; i < n; i += kThreads) atomicOr(&seen[h[i] >> 5], 1u << (h[i] & 31));
      __syncthreads();
      for (int i = tid; i < vocab; i += kThreads)
        if (seen[i >> 5] & (1u << (i & 31))) x[i] -= a.presence_penalty;
    }
    __syncthreads();
  }
  if (a.bias_count > 0) {  // distinct ids (the runner checked): no two threads touch one logit
    for (int i = tid; i < a.bias_count; i += kThreads) {
      const LogitBias e = step.logit_bias[a.bias_start + i];
      x[e.token] += e.bias;
    }
    __syncthreads();
  }

  // argmax, lowest id on ties: over the LM head's per-tile maxima where they say it all
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  if (plain_greedy && argmax) {
    const int2* row = argmax + static_cast<int64_t>(b) * argmax_tiles;
    for (int i = tid; i < argmax_tiles; i += kThreads) {
      const int2 p = row[i];
      const float v = __int_as_float(p.x);
      if (v > bv || (v == bv && p.y < bi)) bv = v, bi = p.y;
    }
  } else {
    for (int i = tid; i < vocab; i += kThreads)
      if (x[i] > bv) {
        bv = x[i];
        bi = i;
      }
  }
  warp_argmax(bv, bi);
  if ((tid & 31) == 0) {
    best_val[tid >> 5] = bv;
    best_idx[tid >> 5] = bi;
  }
  __syncthreads();
  if (tid < 32) {
    bv = best_val[tid];
    bi = best_idx[tid];
    warp_argmax(bv, bi);
    if (tid == 0) {
      best_val[0] = bv;
      best_idx[0] = bi;
    }
  }
  __syncthreads();
  const int best = best_idx[0];
  if (a.temperature <= 0.0f) {
    if (tid == 0) out[b] = best;
    return;
  }
  for (int i = tid; i < vocab; i += kThreads) x[i] = x[i] / a.temperature;
  __syncthreads();
  const float mx = x[best];
  float kth = -INFINITY;
  if (a.top_k > 0 && a.top_k < vocab) kth = threshold(x, vocab, static_cast<float>(a.top_k), false, scratch);
  __syncthreads();
  float total = 0.0f;
  for (int i = tid; i < vocab; i += kThreads) {
    const float p = x[i] >= kth ? __expf(x[i] - mx) : 0.0f;
    x[i] = p;  // from here on x holds unnormalised probabilities
    total += p;
  }
  total = block_sum(total, scratch);
  float cut = 0.0f;
  if (a.top_p < 1.0f) cut = threshold(x, vocab, a.top_p * total, true, scratch);
  cut = fmaxf(cut, a.min_p);

  // contiguous segments per thread, prefix sums over the segments
  const int seg = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, tid * seg), hi = min(vocab, lo + seg);
  float mine = 0.0f;
  for (int i = lo; i < hi; ++i)
    if (x[i] >= cut) mine += x[i];
  seg_prefix[tid] = mine;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {  // inclusive Hillis-Steele scan
    const float v = tid >= off ? seg_prefix[tid - off] : 0.0f;
    __syncthreads();
    seg_prefix[tid] += v;
    __syncthreads();
  }
  const float kept = seg_prefix[kThreads - 1];
  const float target = sampling_uniform(a.seed, a.step) * kept;
  const float before = seg_prefix[tid] - mine;
  if (tid == 0) out[b] = best;  // fallback if rounding leaves target at the very end
  __syncthreads();
  if (mine > 0.0f && before <= target && target < seg_prefix[tid]) {
    float run = before;
    for (int i = lo; i < hi; ++i) {
      if (x[i] < cut) continue;
      run += x[i];
      if (run > target) {
        out[b] = i;
        break;
      }
    }
  }
}

void sample(float* logits, int R, int vocab, const StepArrays& step, const int32_t* history,
            int64_t history_stride, const int2* argmax, int argmax_tiles, int32_t* out_tokens,
            cudaStream_t stream) {
  if (R == 0) return;
  const size_t bitmap = static_cast<size_t>((vocab + 31) / 32) * 4;
  KVINFER_CHECK_ARG(bitmap <= 160 * 1024, "vocab=", vocab, " is too large for the sampling kernel");
  if (bitmap > 48 * 1024)
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(bitmap)));
  launch_dependent(sample_kernel, dim3(R), dim3(kThreads), bitmap, stream, logits, vocab, step, history,
                   history_stride, argmax, argmax_tiles, out_tokens);
}

}  // namespace kvinfer::cuda
