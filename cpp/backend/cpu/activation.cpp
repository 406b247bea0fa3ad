// SwiGLU's silu(gate) * up, GPT-2's gelu_new (tanh approximation), Gemma's GeGLU and soft-capping.
#include <cmath>

#include "backend/cpu/cpu_ops.h"

namespace kvinfer::cpu {

void silu_mul(const float* gate_up, int64_t stride, float* out, int64_t out_stride, int T, int I) {
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(T) * I > 65536)
  for (int t = 0; t < T; ++t) {
    const float* g = gate_up + t * stride;
    const float* u = g + I;
    float* o = out + t * out_stride;
    for (int i = 0; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

namespace {
inline float gelu_tanh(float v) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
}
}  // namespace

void gelu_new(float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] = gelu_tanh(x[i]);
}

void gelu_mul(const float* gate_up, int64_t stride, float* out, int64_t out_stride, int T, int I) {
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(T) * I > 65536)
  for (int t = 0; t < T; ++t) {
    const float* g = gate_up + t * stride;
    const float* u = g + I;
    float* o = out + t * out_stride;
    for (int i = 0; i < I; ++i) o[i] = gelu_tanh(g[i]) * u[i];
  }
}

void softcap(float* x, int64_t n, float cap) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

}  // namespace kvinfer::cpu
