#include "backend/cpu/sampling.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace kvinfer::cpu {

namespace {

// Order-preserving map of floats to unsigned integers (larger float -> larger key).
inline uint32_t key_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float float_of(uint32_t k) {
  uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The largest threshold t (a value of x) such that weight(x >= t) >= target, where weight counts
// elements (mass=false) or sums them (mass=true).
float threshold(const float* x, int n, double target, bool mass) {
  uint64_t lo = 0, hi = 0xffffffffu;  // weight(>= float_of(lo)) >= target; 64-bit so hi - lo + 1 never wraps
  while (lo < hi) {
    const uint32_t mid = static_cast<uint32_t>(lo + (hi - lo + 1) / 2);
    double w = 0;
    for (int i = 0; i < n; ++i)
      if (key_of(x[i]) >= mid) w += mass ? x[i] : 1.0;
    if (w >= target) lo = mid;
    else hi = mid - 1;
  }
  return float_of(static_cast<uint32_t>(lo));
}

}  // namespace

void sample(float* logits, int R, int vocab, const StepArrays& step, const int32_t* history,
            int64_t history_stride, int32_t* out_tokens) {
  thread_local std::vector<float> p, orig;  // grow once; no allocation per decode step after that
  thread_local std::vector<char> seen;
  p.resize(vocab);
  for (int b = 0; b < R; ++b) {
    float* x = logits + static_cast<int64_t>(b) * vocab;
    const SamplingArgs& a = step.sampling[b];
    if (a.repetition_penalty != 1.0f && history) {
      const int row = step.logit_rows[b];
      const int32_t* h = history + step.kv_slots[step.token_seq[row]] * history_stride;
      const int n = step.positions[row] + 1;
      orig.resize(n);
      for (int i = 0; i < n; ++i) orig[i] = x[h[i]];
      for (int i = 0; i < n; ++i)
        x[h[i]] = orig[i] < 0 ? orig[i] * a.repetition_penalty : orig[i] / a.repetition_penalty;
    }
    if (a.penalises_output() && history) {
      const int row = step.logit_rows[b];
      const int32_t* h = history + step.kv_slots[step.token_seq[row]] * history_stride;
      const int n = step.positions[row] + 1;
      if (a.frequency_penalty != 0.0f)
        for (int i = a.output_start; i < n; ++i) x[h[i]] -= a.frequency_penalty;
      if (a.presence_penalty != 0.0f) {
        seen.assign(vocab, 0);
        for (int i = a.output_start; i < n; ++i) seen[h[i]] = 1;
        for (int i = 0; i < vocab; ++i)
          if (seen[i]) x[i] -= a.presence_penalty;
      }
    }
    for (int i = a.bias_start; i < a.bias_start + a.bias_count; ++i) x[step.logit_bias[i].token] += step.logit_bias[i].bias;
    int best = 0;
    for (int i = 1; i < vocab; ++i)
      if (x[i] > x[best]) best = i;
    if (a.temperature <= 0.0f) {
      out_tokens[b] = best;
      continue;
    }
    for (int i = 0; i < vocab; ++i) x[i] /= a.temperature;
    const float mx = x[best];
    float kth = -std::numeric_limits<float>::infinity();
    if (a.top_k > 0 && a.top_k < vocab) kth = threshold(x, vocab, a.top_k, false);
    for (int i = 0; i < vocab; ++i) p[i] = x[i] >= kth ? std::exp(x[i] - mx) : 0.0f;
    float cut = 0.0f;
    if (a.top_p < 1.0f) {
      double total = 0;
      for (int i = 0; i < vocab; ++i) total += p[i];
      cut = threshold(p.data(), vocab, a.top_p * total, true);
    }
    cut = std::max(cut, a.min_p);
    double kept = 0;
    for (int i = 0; i < vocab; ++i) {
      if (p[i] < cut) p[i] = 0.0f;
      kept += p[i];
    }
    const double target = sampling_uniform(a.seed, a.step) * kept;
    double run = 0;
    int token = best;
    for (int i = 0; i < vocab; ++i) {
      if (p[i] == 0.0f) continue;
      run += p[i];
      if (run > target) {
        token = i;
        break;
      }
    }
    out_tokens[b] = token;
  }
}

}  // namespace kvinfer::cpu
