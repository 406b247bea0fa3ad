// y = x W^T (+ bias) with fp16 W [N][K] and fp32 x [T][K], fp32 accumulation.
//
// Every output is summed the same way whatever T is: K in chunks of 512, each chunk one vector
// dot product (dot_f16_f32 and dot_f32 on converted rows are bit-identical), chunks added in
// order, then the bias, then the old y when accumulating. So a row's result does not depend on the
// batch it is in or on how a prompt is split into steps: batched, chunked and single runs agree
// bit for bit.
//
// Few rows (decode): dot products straight from the fp16 rows; threads split N, so each weight
// byte is read once per step. Many rows (prefill): a thread converts 4 weight rows x 512 columns
// to fp32 once per group of 64 input rows and reuses them, so the conversion is amortised; the
// products of those 4 rows with 2 tokens at a time come from one register block (each weight and
// input vector loaded once per 8 products, not once per product), each equal to its dot_f32.
#include <algorithm>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace kvinfer::cpu {

namespace {
constexpr int kRowBlock = 4;
constexpr int kColBlock = 512;
constexpr int kTokenGroup = 64;

inline void store(float* dst, float sum, const half_t* bias, int n, bool accumulate) {
  const float v = bias ? sum + half_to_float(bias[n]) : sum;
  *dst = accumulate ? *dst + v : v;
}
}  // namespace

void matmul(const float* x, int64_t x_stride, const half_t* w, const half_t* bias, float* y,
            int64_t y_stride, int T, int N, int K, bool accumulate) {
  if (T <= 2) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
      const half_t* wr = w + static_cast<int64_t>(n) * K;
      for (int t = 0; t < T; ++t) {
        float sum = 0.0f;
        for (int k0 = 0; k0 < K; k0 += kColBlock)
          sum += simd::dot_f16_f32(wr + k0, x + t * x_stride + k0, std::min(kColBlock, K - k0));
        store(y + t * y_stride + n, sum, bias, n, accumulate);
      }
    }
    return;
  }
  const int blocks = (N + kRowBlock - 1) / kRowBlock;
  const int groups = (T + kTokenGroup - 1) / kTokenGroup;
#pragma omp parallel for collapse(2) schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    for (int g = 0; g < groups; ++g) {
      const int n0 = blk * kRowBlock, rows = std::min(kRowBlock, N - n0);
      const int t0 = g * kTokenGroup, tokens = std::min(kTokenGroup, T - t0);
      float wf[kRowBlock][kColBlock];
      float sum[kTokenGroup][kRowBlock] = {};
      for (int k0 = 0; k0 < K; k0 += kColBlock) {
        const int cols = std::min(kColBlock, K - k0);
        for (int r = 0; r < rows; ++r)
          simd::f16_to_f32(w + static_cast<int64_t>(n0 + r) * K + k0, wf[r], cols);
        for (int t = 0; t < tokens; t += 2) {  // a block of 4 weight rows x 2 tokens at a time
          float part[kRowBlock][2];
          const int pair = std::min(2, tokens - t);
          simd::dot_block_f32(wf[0], kColBlock, rows, x + (t0 + t) * x_stride + k0, x_stride, pair, cols, &part[0][0], 2);
          for (int u = 0; u < pair; ++u)
            for (int r = 0; r < rows; ++r) sum[t + u][r] += part[r][u];
        }
      }
      for (int t = 0; t < tokens; ++t)
        for (int r = 0; r < rows; ++r)
          store(y + (t0 + t) * y_stride + n0 + r, sum[t][r], bias, n0 + r, accumulate);
    }
  }
}

}  // namespace kvinfer::cpu
