// The skinny GEMM (backend/cuda/skinny_gemm.h) against a CPU reference for every input and epilogue
// it is built with, at row counts on both sides of each tile-count step, with K tails, N tails and
// split K: NMSE bounds, guard bands, NaN/Inf fail. Then its promise: a row's output is the same bits
// whatever M is. Skipped without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "parity.h"
#include "test_util.h"

#if KVINFER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "backend/cuda/skinny_gemm.h"
#endif

namespace kvinfer {
namespace {

#if KVINFER_WITH_CUDA
using cuda::SkinnyIn;
using cuda::SkinnyOut;
using test::Guarded;
using test::nmse_below;
using test::random_floats;
using test::to_float;
using test::to_half;

const char* name_of(SkinnyIn in) {
  switch (in) {
    case SkinnyIn::half: return "half";
    case SkinnyIn::rms_norm: return "rms_norm";
    case SkinnyIn::silu_mul: return "silu_mul";
    case SkinnyIn::gelu: return "gelu";
  }
  return "?";
}
const char* name_of(SkinnyOut out) {
  switch (out) {
    case SkinnyOut::half: return "half";
    case SkinnyOut::residual: return "residual";
    case SkinnyOut::logits: return "logits";
  }
  return "?";
}

struct Case {
  SkinnyIn in;
  SkinnyOut out;
  int N, K;
  bool bias;
};

struct Result {
  std::vector<float> y;          // [M][N] (fp16 outputs widened)
  std::vector<float> ss;         // residual: [M][N / 16]
  std::vector<int32_t> argmax;   // logits: [M][tiles][2]
};

// Inputs of row m depend on m only (seeded by it), so the same row can sit in batches of any M.
struct Inputs {
  std::vector<half_t> w, bias;
  std::vector<float> x32;    // rms_norm: [M][K]; residual: the old rows [M][N]
  std::vector<half_t> x16;   // half / gelu: [M][K]; silu_mul: [M][2K]
  std::vector<half_t> norm;  // [K]
  std::vector<float> ss;     // rms_norm: [M][K / 16]
  std::vector<float> old;    // residual: [M][N]
  Inputs(const Case& c, int M) {
    w = to_half(random_floats(size_t(c.N) * c.K, 7, -0.1f, 0.1f));
    bias = to_half(random_floats(c.N, 8));
    norm = to_half(random_floats(c.K, 9, 0.5f, 1.5f));
    const int width = c.in == SkinnyIn::silu_mul ? 2 * c.K : c.K;
    for (int m = 0; m < M; ++m) {
      auto row = random_floats(width, 100 + m, -2.0f, 2.0f);
      if (c.in == SkinnyIn::rms_norm) {
        x32.insert(x32.end(), row.begin(), row.end());
        for (int g = 0; g < c.K / 16; ++g) {
          float s = 0.0f;
          for (int i = 0; i < 16; ++i) s += row[16 * g + i] * row[16 * g + i];
          ss.push_back(s);
        }
      } else {
        auto h = to_half(row);
        x16.insert(x16.end(), h.begin(), h.end());
      }
      auto o = random_floats(c.N, 500 + m);
      old.insert(old.end(), o.begin(), o.end());
    }
  }
  // What the kernel multiplies by W: the fp16 input row after norm or activation.
  std::vector<float> effective(const Case& c, int M, bool planted_bug = false) const {
    std::vector<float> out(size_t(M) * c.K);
    for (int m = 0; m < M; ++m)
      for (int k = 0; k < c.K; ++k) {
        float v = 0.0f;
        if (c.in == SkinnyIn::rms_norm) {
          double s = 0;
          for (int g = 0; g < c.K / 16; ++g) s += ss[size_t(m) * (c.K / 16) + g];
          const float inv = float(1.0 / std::sqrt(s / c.K + 1e-5));
          v = x32[size_t(m) * c.K + k] * inv * (planted_bug ? 1.0f : half_to_float(norm[k]));
        } else if (c.in == SkinnyIn::silu_mul) {
          const float g = half_to_float(x16[size_t(m) * 2 * c.K + k]), u = half_to_float(x16[size_t(m) * 2 * c.K + c.K + k]);
          v = (planted_bug ? u / (1.0f + std::exp(-u)) * g : g / (1.0f + std::exp(-g)) * u);
        } else if (c.in == SkinnyIn::gelu) {
          const float x = half_to_float(x16[size_t(m) * c.K + k]);
          v = 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
          if (planted_bug) v = x;
        } else {
          v = half_to_float(x16[size_t(m) * c.K + k]);
          if (planted_bug && k % 32 == 8) v = half_to_float(x16[size_t(m) * c.K + k - 8]);  // a wrong column
        }
        out[size_t(m) * c.K + k] = half_to_float(float_to_half(v));
      }
    return out;
  }
  std::vector<float> reference(const Case& c, int M, bool planted_bug = false) const {
    const auto h = effective(c, M, planted_bug);
    std::vector<float> y(size_t(M) * c.N);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < c.N; ++n) {
        double acc = 0;
        for (int k = 0; k < c.K; ++k) acc += double(h[size_t(m) * c.K + k]) * half_to_float(w[size_t(n) * c.K + k]);
        if (c.bias) acc += half_to_float(bias[n]);
        if (c.out == SkinnyOut::residual) acc += old[size_t(m) * c.N + n];
        y[size_t(m) * c.N + n] = float(acc);
      }
    return y;
  }
};

Result run(const Case& c, const Inputs& in, int M, cuda::SkinnyKernel which = cuda::SkinnyKernel::automatic) {
  Guarded<half_t> d_w(in.w.size(), &in.w), d_bias(in.bias.size(), &in.bias), d_norm(in.norm.size(), &in.norm);
  Guarded<float> d_x32(std::max<size_t>(in.x32.size(), 1), in.x32.empty() ? nullptr : &in.x32);
  Guarded<half_t> d_x16(std::max<size_t>(in.x16.size(), 1), in.x16.empty() ? nullptr : &in.x16);
  Guarded<float> d_ss_in(std::max<size_t>(in.ss.size(), 1), in.ss.empty() ? nullptr : &in.ss);
  const int tiles = (c.N + 15) / 16;
  Guarded<float> d_y32(size_t(M) * c.N, c.out == SkinnyOut::residual ? &in.old : nullptr);
  Guarded<half_t> d_y16(size_t(M) * c.N);
  Guarded<float> d_ss(size_t(M) * (c.N / 16 + 1));
  Guarded<int2> d_argmax(size_t(M) * tiles);
  const size_t partials = std::max<size_t>(cuda::skinny_partial_floats(c.N, c.K), 1);
  Guarded<float> d_part(partials);
  Guarded<half_t> d_normed(size_t(M) * c.K);
  const std::vector<int32_t> zeros(std::max(cuda::skinny_counters(c.N, c.K), 1), 0);
  Guarded<int32_t> d_counters(zeros.size(), &zeros);

  cuda::SkinnyInput i{c.in};
  if (c.in == SkinnyIn::rms_norm) {
    i.x = d_x32.get(), i.ld = c.K, i.ss = d_ss_in.get(), i.norm_weight = d_norm.get(), i.eps = 1e-5f;
  } else {
    i.x = d_x16.get(), i.ld = c.in == SkinnyIn::silu_mul ? 2 * c.K : c.K, i.up_offset = c.K;
  }
  cuda::SkinnyOutput o{c.out};
  o.ld = c.N;
  o.bias = c.bias ? d_bias.get() : nullptr;
  if (c.out == SkinnyOut::half) o.y = d_y16.get();
  else o.y = d_y32.get();
  if (c.out == SkinnyOut::residual && c.N % 16 == 0) o.ss = d_ss.get();
  if (c.out == SkinnyOut::logits) o.argmax = d_argmax.get();
  cuda::skinny_gemm(d_w.get(), c.N, c.K, M, i, o, {d_part.get(), d_counters.get(), d_normed.get()}, nullptr, which);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (bool ok : {d_w.guards_intact(), d_x32.guards_intact(), d_x16.guards_intact(), d_y32.guards_intact(),
                  d_y16.guards_intact(), d_ss.guards_intact(), d_argmax.guards_intact(), d_part.guards_intact(),
                  d_counters.guards_intact(), d_normed.guards_intact()})
    EXPECT_TRUE(ok);
  EXPECT_EQ(d_counters.read(), zeros);  // every call leaves the counters at zero
  Result r;
  r.y = c.out == SkinnyOut::half ? to_float(d_y16.read()) : d_y32.read();
  if (o.ss) {
    auto ss = d_ss.read();
    r.ss.assign(ss.begin(), ss.begin() + size_t(M) * (c.N / 16));
  }
  if (o.argmax)
    for (const int2& p : d_argmax.read()) r.argmax.push_back(p.x), r.argmax.push_back(p.y);
  return r;
}

std::string name(const Case& c) {
  return std::string(name_of(c.in)) + "_" + name_of(c.out) + "_N" + std::to_string(c.N) + "_K" + std::to_string(c.K);
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {SkinnyIn::rms_norm, SkinnyOut::half, 960, 576, true},     // SmolLM2 qkv: split K in 2, K tail
      {SkinnyIn::rms_norm, SkinnyOut::half, 3072, 2048, false},  // Llama-3.2-1B qkv
      {SkinnyIn::rms_norm, SkinnyOut::logits, 1000, 576, false}, // an LM head with a tile tail
      {SkinnyIn::half, SkinnyOut::half, 100, 72, true},          // N and K tails
      {SkinnyIn::half, SkinnyOut::residual, 576, 576, true},     // SmolLM2 o
      {SkinnyIn::half, SkinnyOut::logits, 384, 128, false},
      {SkinnyIn::silu_mul, SkinnyOut::residual, 576, 1536, false},  // SmolLM2 down: K split in 4
      {SkinnyIn::silu_mul, SkinnyOut::residual, 1024, 4096, true},
      {SkinnyIn::gelu, SkinnyOut::residual, 128, 512, true},
      // enough tiles that the wide kernel's blocks take whole K ranges (skinny_wide_quarters false)
      {SkinnyIn::rms_norm, SkinnyOut::logits, 16400, 256, false},  // an LM head with a tile tail
      {SkinnyIn::half, SkinnyOut::half, 16384, 264, true},         // K tail: 9 slices, the last quarter empty
      {SkinnyIn::silu_mul, SkinnyOut::residual, 16384, 128, false},
  };
  return all;
}

class SkinnyGemm : public testing::TestWithParam<Case> {};

// The kernels this case runs on: the automatic choice, the narrow kernel (the automatic one on
// other GPUs), and the Hopper kernel where it runs the input.
std::vector<cuda::SkinnyKernel> kernels_for(const Case& c) {
  std::vector<cuda::SkinnyKernel> k{cuda::SkinnyKernel::automatic, cuda::SkinnyKernel::narrow};
  if (cuda::skinny_wgmma_available() && (c.in == SkinnyIn::half || c.in == SkinnyIn::rms_norm))
    k.push_back(cuda::SkinnyKernel::wgmma);
  return k;
}
const char* name_of(cuda::SkinnyKernel k) {
  switch (k) {
    case cuda::SkinnyKernel::automatic: return "automatic";
    case cuda::SkinnyKernel::narrow: return "narrow";
    case cuda::SkinnyKernel::wide: return "wide";
    case cuda::SkinnyKernel::wgmma: return "wgmma";
  }
  return "?";
}

void expect_matches_cpu(const Case& c, const Inputs& in, int M, const Result& got) {
  const auto ref = in.reference(c, M);
  ASSERT_EQ(got.y.size(), ref.size());
  // fp16 outputs: one rounding (NMSE ~1e-7); fp32 outputs: fp32 sums of fp16 products in another
  // order than the double reference (~1e-12). A wrong column, norm or activation is far above.
  const double bound = c.out == SkinnyOut::half ? 1e-5 : 1e-9;
  EXPECT_TRUE(nmse_below(got.y, ref, bound));
  if (M == 17) EXPECT_FALSE(nmse_below(got.y, in.reference(c, M, /*planted_bug=*/true), bound));
  if (!got.ss.empty()) {  // the sums of squares of the new rows, for the next norm
    std::vector<float> want(got.ss.size());
    for (int m = 0; m < M; ++m)
      for (int g = 0; g < c.N / 16; ++g) {
        double s = 0;
        for (int i = 0; i < 16; ++i) s += double(got.y[size_t(m) * c.N + 16 * g + i]) * got.y[size_t(m) * c.N + 16 * g + i];
        want[size_t(m) * (c.N / 16) + g] = float(s);
      }
    EXPECT_TRUE(nmse_below(got.ss, want, 1e-10));
  }
  if (!got.argmax.empty()) {  // each tile's largest logit and its lowest index, exactly
    const int tiles = (c.N + 15) / 16;
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < tiles; ++t) {
        int best = t * 16;
        for (int n = t * 16; n < std::min(c.N, t * 16 + 16); ++n)
          if (got.y[size_t(m) * c.N + n] > got.y[size_t(m) * c.N + best]) best = n;
        const size_t at = (size_t(m) * tiles + t) * 2;
        ASSERT_EQ(got.argmax[at + 1], best) << "row " << m << " tile " << t;
        float v;
        std::memcpy(&v, &got.argmax[at], 4);
        ASSERT_EQ(v, got.y[size_t(m) * c.N + best]);
      }
  }
}

TEST_P(SkinnyGemm, MatchesCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Case& c = GetParam();
  for (const auto kernel : kernels_for(c))
    for (int M : {1, 5, 8, 9, 16, 17, 33, 64}) {
      SCOPED_TRACE(std::string(name_of(kernel)) + " M=" + std::to_string(M));
      const Inputs in(c, M);
      expect_matches_cpu(c, in, M, run(c, in, M, kernel));
    }
}

TEST_P(SkinnyGemm, RowsDoNotDependOnTheBatch) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Case& c = GetParam();
  const Inputs all(c, 64);
  for (const auto kernel : kernels_for(c)) {
    SCOPED_TRACE(name_of(kernel));
    const Result full = run(c, all, 64, kernel);
    for (int M : {1, 3, 8, 9, 16, 31, 33}) {
      const Result part = run(c, Inputs(c, M), M, kernel);
      ASSERT_EQ(part.y.size(), size_t(M) * c.N);
      EXPECT_TRUE(std::equal(part.y.begin(), part.y.end(), full.y.begin())) << "M=" << M;
      EXPECT_TRUE(std::equal(part.ss.begin(), part.ss.end(), full.ss.begin())) << "M=" << M;
      EXPECT_TRUE(std::equal(part.argmax.begin(), part.argmax.end(), full.argmax.begin())) << "M=" << M;
    }
  }
}

// The Hopper kernel where it cannot run (another GPU, a build without sm_90a, an activation input)
// is an argument error, never a crash or a silent fallback.
TEST_P(SkinnyGemm, WgmmaWhereUnavailableThrows) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Case& c = GetParam();
  const auto k = kernels_for(c);
  if (std::find(k.begin(), k.end(), cuda::SkinnyKernel::wgmma) != k.end()) GTEST_SKIP() << "the wgmma kernel runs this";
  EXPECT_THROW(run(c, Inputs(c, 3), 3, cuda::SkinnyKernel::wgmma), std::invalid_argument);
}

// The two kernels (a block per 16-row tile, or per 128 rows with the input staged in shared
// memory) are the same arithmetic: the same bits at every row count either can run.
TEST_P(SkinnyGemm, NarrowAndWideKernelsAgree) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Case& c = GetParam();
  for (int M : {1, 5, 9, 16, 24, 40, 64}) {
    const Inputs in(c, M);
    const Result narrow = run(c, in, M, cuda::SkinnyKernel::narrow), wide = run(c, in, M, cuda::SkinnyKernel::wide);
    ASSERT_EQ(narrow.y.size(), size_t(M) * c.N);
    EXPECT_TRUE(narrow.y == wide.y) << "M=" << M;
    EXPECT_TRUE(narrow.ss == wide.ss) << "M=" << M;
    EXPECT_TRUE(narrow.argmax == wide.argmax) << "M=" << M;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SkinnyGemm, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& i) { return name(i.param); });
#endif

TEST(SkinnyPlan, DependsOnNAndKOnly) {
#if KVINFER_WITH_CUDA
  // Llama-3.2-1B: qkv, o, gate_up, down, LM head; SmolLM2: qkv and down
  auto plan = [](int N, int K) { const auto p = cuda::skinny_plan(N, K); return std::vector<int>{p.tiles, p.splits, p.k_per_split}; };
  EXPECT_EQ(plan(3072, 2048), (std::vector<int>{192, 2, 1024}));
  EXPECT_EQ(plan(2048, 2048), (std::vector<int>{128, 2, 1024}));
  EXPECT_EQ(plan(16384, 2048), (std::vector<int>{1024, 1, 2048}));
  EXPECT_EQ(plan(2048, 8192), (std::vector<int>{128, 2, 4096}));
  EXPECT_EQ(plan(128256, 2048), (std::vector<int>{8016, 1, 2048}));
  EXPECT_EQ(plan(960, 576), (std::vector<int>{60, 2, 288}));
  EXPECT_EQ(plan(576, 1536), (std::vector<int>{36, 4, 384}));
  EXPECT_EQ(plan(100, 72), (std::vector<int>{7, 1, 96}));
  EXPECT_EQ(cuda::skinny_partial_floats(960, 576), size_t(60) * 2 * 16 * 64);
  EXPECT_EQ(cuda::skinny_counters(16384, 2048), 0);
  EXPECT_EQ(cuda::skinny_counters(960, 576), 60);
  EXPECT_EQ(cuda::skinny_counters(48, 1024), 4);  // 3 tiles, K split in 4: four quarter shares of one group
  // wide kernel: a block per quarter where whole ranges make few blocks (Llama's qkv, o, down)
  EXPECT_TRUE(cuda::skinny_wide_quarters(3072, 2048));
  EXPECT_TRUE(cuda::skinny_wide_quarters(2048, 2048));
  EXPECT_TRUE(cuda::skinny_wide_quarters(2048, 8192));
  EXPECT_FALSE(cuda::skinny_wide_quarters(16384, 2048));
  EXPECT_FALSE(cuda::skinny_wide_quarters(128256, 2048));
  EXPECT_FALSE(cuda::skinny_wide_quarters(16400, 256));
  EXPECT_EQ(cuda::skinny_plan(16400, 256).splits, 1);
  // the Hopper kernel: blocks of 64 rows, K split (at most 8: a cluster) while ranges keep >= 4 stages of 64 columns
  auto wplan = [](int N, int K) {
    const auto p = cuda::skinny_wgmma_plan(N, K);
    return std::vector<int>{p.groups, p.splits, p.k_per_split};
  };
  EXPECT_EQ(wplan(3072, 2048), (std::vector<int>{48, 4, 512}));
  EXPECT_EQ(wplan(2048, 2048), (std::vector<int>{32, 8, 256}));
  EXPECT_EQ(wplan(16384, 2048), (std::vector<int>{256, 1, 2048}));
  EXPECT_EQ(wplan(2048, 8192), (std::vector<int>{32, 8, 1024}));
  EXPECT_EQ(wplan(128256, 2048), (std::vector<int>{2004, 1, 2048}));
  EXPECT_EQ(wplan(960, 576), (std::vector<int>{15, 2, 320}));
  EXPECT_EQ(wplan(100, 72), (std::vector<int>{2, 1, 128}));
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
}  // namespace kvinfer
