// Rotary position embedding, rotate_half convention (HF Llama/Qwen2/Mistral), with the frequency
// table of HF's rope initialisers (default, linear, llama3).
#include <cmath>

#include "backend/cpu/cpu_ops.h"

namespace kvinfer::cpu {

void rope_inv_freq(float* inv_freq, int head_dim, float theta, const RopeScaling& s) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    // fp32 like torch: base ** (arange(0, d, 2).float() / d)
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
  if (s.type == "linear") {
    for (int i = 0; i < half; ++i) inv_freq[i] /= s.factor;
  } else if (s.type == "llama3") {
    const float old_len = static_cast<float>(s.original_max_positions);
    const float low_wavelen = old_len / s.low_freq_factor;
    const float high_wavelen = old_len / s.high_freq_factor;
    for (int i = 0; i < half; ++i) {
      const float f = inv_freq[i];
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      float scaled = wavelen > low_wavelen ? f / s.factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const float smooth =
            (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        scaled = (1.0f - smooth) * scaled / s.factor + smooth * scaled;
      }
      inv_freq[i] = scaled;
    }
  }
}

static void rotate(float* x, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

void rope(float* q, float* k, int64_t stride, const int32_t* positions, int T, int num_heads,
          int num_kv_heads, int head_dim, const float* inv_freq) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int t = 0; t < T; ++t) {
    float cos[512], sin[512];  // head_dim / 2 <= 512
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < head_dim / 2; ++i) {
      const float angle = pos * inv_freq[i];
      cos[i] = std::cos(angle);
      sin[i] = std::sin(angle);
    }
    for (int h = 0; h < num_heads; ++h)
      rotate(q + t * stride + static_cast<int64_t>(h) * head_dim, head_dim, cos, sin);
    for (int h = 0; h < num_kv_heads; ++h)
      rotate(k + t * stride + static_cast<int64_t>(h) * head_dim, head_dim, cos, sin);
  }
}

}  // namespace kvinfer::cpu
