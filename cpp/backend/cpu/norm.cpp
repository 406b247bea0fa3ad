// RMSNorm (Llama family) and LayerNorm (GPT-2) over the last dimension, statistics in double.
#include <cmath>

#include "backend/cpu/cpu_ops.h"

namespace kvinfer::cpu {

void rms_norm(const float* x, const half_t* weight, float* y, int T, int H, float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int t = 0; t < T; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * H;
    float* yr = y + static_cast<int64_t>(t) * H;
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / H + eps));
    for (int i = 0; i < H; ++i) yr[i] = half_to_float(weight[i]) * (xr[i] * inv);
  }
}

void head_rms_norm(float* x, int64_t stride, int T, int heads, int head_dim, const half_t* weight, float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < heads; ++h) {
      float* v = x + t * stride + static_cast<int64_t>(h) * head_dim;
      rms_norm(v, weight, v, 1, head_dim, eps);  // (in place: each element is read before it is written)
    }
}

void layer_norm(const float* x, const half_t* weight, const half_t* bias, float* y, int T, int H,
                float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int t = 0; t < T; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * H;
    float* yr = y + static_cast<int64_t>(t) * H;
    double mean = 0, var = 0;
    for (int i = 0; i < H; ++i) mean += xr[i];
    mean /= H;
    for (int i = 0; i < H; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    var /= H;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int i = 0; i < H; ++i) {
      float v = static_cast<float>((xr[i] - mean) * inv) * half_to_float(weight[i]);
      yr[i] = bias ? v + half_to_float(bias[i]) : v;
    }
  }
}

}  // namespace kvinfer::cpu
