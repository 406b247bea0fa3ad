// Helpers shared by the GoogleTest suites: device parameters, random fp16 data, row comparison.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/half.h"

namespace kvinfer::test {

// Every suite runs on the CPU and on cuda:0; CUDA cases skip when no device is usable.
inline std::vector<Device> all_devices() { return {Device::cpu(), Device::cuda(0)}; }

inline std::string device_name(const testing::TestParamInfo<Device>& info) {
  return info.param.is_cuda() ? "cuda" : "cpu";
}

#define KVINFER_SKIP_WITHOUT(device)                                              \
  do {                                                                            \
    if ((device).is_cuda() && ::kvinfer::cuda_device_count() == 0)                \
      GTEST_SKIP() << "no CUDA device";                                           \
  } while (0)

// Random fp16 values in [-4, 4) that are never zero, so an unwritten (zero) output cannot pass.
inline std::vector<half_t> random_halves(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<half_t> out(n);
  for (auto& h : out) {
    float f = dist(rng);
    if (f > -1e-3f && f < 1e-3f) f = 0.5f;
    h = float_to_half(f);
  }
  return out;
}

// Bit-exact comparison that checks sizes first: a comparison over the wrong shape must fail.
inline testing::AssertionResult rows_equal(const std::vector<half_t>& expected,
                                           const std::vector<half_t>& got) {
  if (expected.size() != got.size())
    return testing::AssertionFailure()
           << "size " << got.size() << " != expected " << expected.size();
  for (size_t i = 0; i < expected.size(); ++i)
    if (expected[i] != got[i])
      return testing::AssertionFailure() << "element " << i << ": got 0x" << std::hex << got[i]
                                         << " expected 0x" << expected[i];
  return testing::AssertionSuccess();
}

}  // namespace kvinfer::test
