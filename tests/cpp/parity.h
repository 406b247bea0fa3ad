// Parity harness for CUDA ops against the CPU references (in the style of llama.cpp's
// test-backend-ops): device buffers surrounded by sentinel guard bands, NMSE comparison, NaN/Inf
// detection. Every case is named by its parameters so one can be rerun with --gtest_filter.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "device_memory.h"
#include "half.h"

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

}  // namespace kvinfer::test
