// Parity harness for CUDA ops against the CPU references (in the style of llama.cpp's
// test-backend-ops): device buffers surrounded by sentinel guard bands, NMSE comparison, NaN/Inf
// detection. Every case is named by its parameters so one can be rerun with --gtest_filter.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/device_memory.h"
#include "core/half.h"
#include "runtime/staging.h"
#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer::test {

constexpr size_t kGuardBytes = 4096;
constexpr uint8_t kSentinelByte = 0x5a;

// A device array of n T's with kGuardBytes of sentinel bytes before and after it.
template <class T>
class Guarded {
 public:
  explicit Guarded(size_t n, const std::vector<T>* init = nullptr)
      : n_(n), mem_(n * sizeof(T) + 2 * kGuardBytes, Device::cuda(0), "test", std::make_shared<VramTracker>(), false) {
    std::vector<uint8_t> fill(mem_.bytes(), kSentinelByte);
    if (init) std::memcpy(fill.data() + kGuardBytes, init->data(), n * sizeof(T));
    copy_bytes(mem_.data(), mem_.device(), fill.data(), Device::cpu(), fill.size());
  }
  T* get() const { return reinterpret_cast<T*>(mem_.as<uint8_t>() + kGuardBytes); }
  std::vector<T> read() const {
    std::vector<T> out(n_);
    copy_bytes(out.data(), Device::cpu(), get(), mem_.device(), n_ * sizeof(T));
    return out;
  }
  // The guard bands must be untouched by the op.
  testing::AssertionResult guards_intact() const {
    std::vector<uint8_t> all(mem_.bytes());
    copy_bytes(all.data(), Device::cpu(), mem_.data(), mem_.device(), all.size());
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (all[i] != kSentinelByte) return testing::AssertionFailure() << "guard before written at byte " << i;
      if (all[all.size() - 1 - i] != kSentinelByte)
        return testing::AssertionFailure() << "guard after written at byte -" << i;
    }
    return testing::AssertionSuccess();
  }

 private:
  size_t n_;
  DeviceMemory mem_;
};

inline std::vector<float> to_float(const std::vector<half_t>& h) {
  std::vector<float> out(h.size());
  for (size_t i = 0; i < h.size(); ++i) out[i] = half_to_float(h[i]);
  return out;
}

inline std::vector<half_t> to_half(const std::vector<float>& f) {
  std::vector<half_t> out(f.size());
  for (size_t i = 0; i < f.size(); ++i) out[i] = float_to_half(f[i]);
  return out;
}

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (auto& v : out) v = dist(rng);
  return out;
}

// Normalised mean squared error sum((a - ref)^2) / sum(ref^2); fails on shape mismatch or any
// non-finite value, and when above `limit`.
inline testing::AssertionResult nmse_below(const std::vector<float>& got, const std::vector<float>& ref,
                                           double limit) {
  if (got.size() != ref.size())
    return testing::AssertionFailure() << "size " << got.size() << " != reference " << ref.size();
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return testing::AssertionFailure() << "non-finite value at " << i;
    err += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  const double nmse = norm > 0 ? err / norm : err;
  if (nmse > limit) return testing::AssertionFailure() << "NMSE " << nmse << " > " << limit;
  return testing::AssertionSuccess() << "NMSE " << nmse;
}

// A step's fields as the ops read them, from per-sequence lists, staged the way the runner stages
// them: `host` for the CPU ops; device() copies them up for the CUDA ops. Sequence b has
// rows[b] new tokens after cached[b] cached ones in KV slot slots[b]; logits rows default to each
// sequence's last token.
struct TestStep {
  // A KV layout of one block of 2^16 tokens per slot, for steps whose ops touch no cache.
  static constexpr KVLayout kOneBlockPerSlot{1, 1, 1, 16, 1};

  std::vector<int32_t> tokens, query_starts, cached, slots, logit_rows, tables;
  std::vector<SamplingArgs> sampling;
  std::vector<LogitBias> biases;
  std::vector<uint64_t> region;  // 8-byte aligned staging
  StepLayout layout{};
  StepArrays host{};

  // `tables`: [B][kv.table_stride] block tables, or empty: each slot's own blocks.
  TestStep(std::vector<int32_t> tokens_, const std::vector<int>& rows, std::vector<int32_t> cached_,
           std::vector<int32_t> slots_, std::vector<int32_t> logit_rows_ = {},
           std::vector<SamplingArgs> sampling_ = {}, const KVLayout& kv = kOneBlockPerSlot,
           std::vector<int32_t> tables_ = {}, std::vector<LogitBias> biases_ = {})
      : tokens(std::move(tokens_)), cached(std::move(cached_)), slots(std::move(slots_)),
        logit_rows(std::move(logit_rows_)), tables(std::move(tables_)), sampling(std::move(sampling_)),
        biases(std::move(biases_)) {
    query_starts.assign(1, 0);
    for (int n : rows) query_starts.push_back(query_starts.back() + n);
    if (tokens.empty()) tokens.assign(query_starts.back(), 0);
    if (logit_rows.empty())
      for (size_t b = 0; b < rows.size(); ++b) logit_rows.push_back(query_starts[b + 1] - 1);
    StepBatch batch;
    batch.num_tokens = static_cast<int>(tokens.size());
    batch.num_seqs = static_cast<int>(rows.size());
    batch.num_logit_rows = static_cast<int>(logit_rows.size());
    batch.tokens = tokens.data();
    batch.query_starts = query_starts.data();
    batch.cached_lengths = cached.data();
    batch.kv_slots = slots.data();
    batch.logit_rows = logit_rows.data();
    batch.sampling = sampling.empty() ? nullptr : sampling.data();
    batch.block_tables = tables.empty() ? nullptr : tables.data();
    batch.block_table_width = kv.table_stride;
    batch.logit_bias = biases.data();
    batch.num_logit_bias = static_cast<int>(biases.size());
    region.assign(step_layout(batch.num_tokens, batch.num_seqs, batch.num_logit_rows, kv.table_stride,
                              batch.num_logit_bias).bytes / 8 + 1,
                  0);
    layout = stage_step(batch, kv, StepPadding{}, region.data());
    host = layout.at(region.data());
  }
  int num_tokens() const { return static_cast<int>(tokens.size()); }
  // The same fields in device memory (kept in `mem`).
  StepArrays device(std::unique_ptr<Guarded<uint8_t>>& mem) const {
    std::vector<uint8_t> bytes(layout.bytes);
    std::memcpy(bytes.data(), region.data(), layout.bytes);
    mem = std::make_unique<Guarded<uint8_t>>(bytes.size(), &bytes);
    return layout.at(mem->get());
  }
};

// Paged caches in a scrambled order: perm is a seeded shuffle of [0, num_blocks); sequence b (of
// slot slots[b]) gets blocks perm[slots[b] * W + i] ([B][W] tables, W = kv.table_stride), and
// move_blocks() puts block i of a pool at perm[i], so a cache read through the scrambled tables
// holds what the unscrambled one holds through its slots' own blocks.
inline std::vector<int32_t> block_shuffle(int num_blocks, uint32_t seed) {
  std::vector<int32_t> perm(num_blocks);
  for (int i = 0; i < num_blocks; ++i) perm[i] = i;
  std::mt19937 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}
inline std::vector<int32_t> scrambled_tables(const std::vector<int32_t>& slots, const KVLayout& kv,
                                             const std::vector<int32_t>& perm) {
  std::vector<int32_t> tables;
  for (int32_t slot : slots)
    for (int i = 0; i < kv.table_stride; ++i) tables.push_back(perm[size_t(slot) * kv.table_stride + i]);
  return tables;
}
template <typename T>
std::vector<T> move_blocks(const std::vector<T>& pool, const std::vector<int32_t>& perm, int64_t block_stride) {
  std::vector<T> out(pool.size());
  for (size_t i = 0; i < perm.size(); ++i)
    std::copy_n(pool.begin() + i * block_stride, block_stride, out.begin() + size_t(perm[i]) * block_stride);
  return out;
}

}  // namespace kvinfer::test
