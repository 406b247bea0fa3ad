// SwiGLU's silu(gate) * up and GPT-2's gelu_new (tanh approximation).
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

void gelu_new(float* x, int64_t n) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
  }
}

}  // namespace kvinfer::cpu
