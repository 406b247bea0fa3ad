// How one row of logits becomes a token id: the arguments of the sampler that the CPU reference
// (backend/cpu/sampling.h) and the CUDA kernel (backend/cuda/sampling.h) share, and the counter-based
// uniform both draw from. The algorithm, in the order HF's generate applies it:
//   1. repetition penalty over the sequence's token history (x < 0 ? x * r : x / r, once per id);
//      then presence/frequency penalties over the generated part of the history (positions
//      output_start ..): x -= frequency * count, then x -= presence once per id; then the row's
//      logit biases (x[id] += bias; -inf bans an id)
//   2. temperature 0: argmax (lowest id on ties) - done
//   3. x / temperature; top-k keeps x >= the k-th largest value (ties kept, as HF does)
//   4. p = exp(x - max); top-p keeps the largest threshold t with sum(p >= t) >= top_p * sum(p);
//      min-p keeps p >= min_p (p is already relative to the max)
//   5. draw: u = uniform(seed, step) in [0, 1); the first id whose running sum of kept p exceeds
//      u * total.
// The uniform is a hash of (seed, step): a sequence draws the same numbers alone or in a batch.
#pragma once

#include <cstdint>

namespace kvinfer {

struct SamplingArgs {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  uint64_t step = 0;  // tokens this sequence has generated so far
  // The row's logit biases: entries [bias_start, bias_start + bias_count) of the step's
  // logit_bias array, distinct ids.
  int32_t bias_start = 0;
  int32_t bias_count = 0;
  float presence_penalty = 0.0f;   // OpenAI's: 0 is off
  float frequency_penalty = 0.0f;  // OpenAI's: 0 is off
  int32_t output_start = 0;        // the history position of the sequence's first generated token

#if defined(__CUDACC__)
  __host__ __device__
#endif
  bool penalises_output() const { return presence_penalty != 0.0f || frequency_penalty != 0.0f; }
};

// One logit bias: x[token] += bias (finite, or -inf to ban the id).
struct LogitBias {
  int32_t token = 0;
  float bias = 0.0f;
};
// Entries one row may have (OpenAI's logit_bias, plus the stop ids min_tokens bans).
constexpr int kMaxLogitBiasPerRow = 320;

// Uniform in [0, 1) from (seed, step); identical on host and device.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float sampling_uniform(uint64_t seed, uint64_t step) {
  auto mix = [](uint64_t z) {  // splitmix64 finaliser
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  return static_cast<float>(mix(seed ^ mix(step)) >> 40) * (1.0f / 16777216.0f);  // 24 bits
}

}  // namespace kvinfer
