// What the Hopper skinny kernel fuses (skinny_gemm.h, sm90/skinny_gemm_wgmma.cu) against what it
// replaces, bit for bit: the RMSNorm of whole fp32 rows in its consumers against the normed-rows
// kernel first; the paired epilogues (SkinnyOut::silu_mul, SkinnyOut::rope_kv) against the same
// projection with fp16 output followed by the op of its own (silu_mul, rope_kv_write): q rows,
// every element of the K and V caches, guard bands untouched. Row counts across the kernel's
// instruction widths, K split and not, with and without bias, rotation and norm. Planted bugs
// (gate and up swapped, no rotation) must not pass. Skipped without a GPU that runs the kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/device_memory.h"
#include "parity.h"
#include "runtime/kv_cache.h"
#include "test_util.h"

#if KVINFER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "backend/cuda/elementwise.h"
#include "backend/cuda/kv_write.h"
#include "backend/cuda/skinny_gemm.h"
#endif

namespace kvinfer {
namespace {

#if KVINFER_WITH_CUDA
using cuda::SkinnyIn;
using cuda::SkinnyKernel;
using cuda::SkinnyOut;
using test::Guarded;

bool paired_runs() {
  cuda::SkinnyOutput probe{SkinnyOut::silu_mul, nullptr, 64};
  return cuda_device_count() > 0 && cuda::skinny_paired_supported(128, probe);
}

// Input rows [M][K] seeded per row, so that a row is the same in batches of any size: fp16 rows, or
// (norm) fp32 residual rows with their 16-column sums of squares and norm weights.
struct Rows {
  std::vector<half_t> x16, norm;
  std::vector<float> x32, ss;
  Guarded<half_t> d_x16, d_norm;
  Guarded<float> d_x32, d_ss;
  Guarded<int32_t> d_rows;
  bool rms;
  Rows(int M, int K, bool rms_norm) : d_x16(1), d_norm(1), d_x32(1), d_ss(1), d_rows(1), rms(rms_norm) {
    for (int m = 0; m < M; ++m) {
      const auto row = test::random_floats(K, 100 + m, -2.0f, 2.0f);
      const auto h = test::to_half(row);
      x16.insert(x16.end(), h.begin(), h.end());
      x32.insert(x32.end(), row.begin(), row.end());
      for (int g = 0; g < K / 16; ++g) {
        float s = 0.0f;
        for (int i = 0; i < 16; ++i) s += row[16 * g + i] * row[16 * g + i];
        ss.push_back(s);
      }
    }
    norm = test::to_half(test::random_floats(K, 9, 0.5f, 1.5f));
    std::vector<int32_t> rows(M);
    for (int m = 0; m < M; ++m) rows[m] = m;
    d_x16 = Guarded<half_t>(x16.size(), &x16), d_norm = Guarded<half_t>(norm.size(), &norm);
    d_x32 = Guarded<float>(x32.size(), &x32), d_ss = Guarded<float>(ss.size(), &ss);
    d_rows = Guarded<int32_t>(rows.size(), &rows);
  }
  // The kernel's input; `normed_first`: the same rows through a row list, which the kernel does not
  // normalise itself (the normed-rows kernel runs first: the reference for the fused norm).
  cuda::SkinnyInput input(int K, bool normed_first = false) const {
    if (!rms) return cuda::SkinnyInput{SkinnyIn::half, d_x16.get(), K};
    cuda::SkinnyInput in{SkinnyIn::rms_norm, d_x32.get(), K};
    in.ss = d_ss.get(), in.norm_weight = d_norm.get(), in.eps = 1e-5f;
    if (normed_first) in.rows = d_rows.get();
    return in;
  }
};

// The RMSNorm in the kernel's consumers gives the normed-rows kernel's bits.
TEST(SkinnyFusions, NormInTheKernelEqualsNormedRowsFirst) {
  if (!paired_runs()) GTEST_SKIP() << "no GPU that runs the Hopper skinny kernel";
  for (const auto& [N, K] : {std::pair{960, 576}, std::pair{3072, 2048}, std::pair{256, 4096}, std::pair{100, 64}}) {
    const auto w = test::to_half(test::random_floats(size_t(N) * K, 7, -0.1f, 0.1f));
    for (int M : {1, 5, 9, 16, 17, 33, 64}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M));
      const Rows x(M, K, true);
      Guarded<half_t> d_w(w.size(), &w), d_fused(size_t(M) * N), d_plain(size_t(M) * N), d_normed(size_t(M) * K);
      Guarded<float> d_part(std::max<size_t>(cuda::skinny_partial_floats(N, K), 1));
      const std::vector<int32_t> zeros(std::max(cuda::skinny_counters(N, K), 1), 0);
      Guarded<int32_t> d_counters(zeros.size(), &zeros);
      const cuda::SkinnyWorkspace ws{d_part.get(), d_counters.get(), d_normed.get()};
      cuda::skinny_gemm(d_w.get(), N, K, M, x.input(K), {SkinnyOut::half, d_fused.get(), N}, ws, nullptr,
                        SkinnyKernel::wgmma);
      cuda::skinny_gemm(d_w.get(), N, K, M, x.input(K, /*normed_first=*/true), {SkinnyOut::half, d_plain.get(), N}, ws,
                        nullptr, SkinnyKernel::wgmma);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_TRUE(test::rows_equal(d_plain.read(), d_fused.read()));
      EXPECT_TRUE(d_fused.guards_intact() && d_plain.guards_intact());
    }
  }
}

struct SiluCase {
  int I, K;  // N = 2 I (gate rows, then up rows)
  bool bias, rms;
};

TEST(SkinnyFusions, SiluMulEqualsProjectionThenActivation) {
  if (!paired_runs()) GTEST_SKIP() << "no GPU that runs the Hopper skinny kernel";
  // SmolLM2-135M's gate/up (K split in 2, K tail), a Llama-like one cut down, a deep K split
  for (const SiluCase& c : {SiluCase{1536, 576, false, true}, SiluCase{2048, 2048, true, false},
                            SiluCase{2048, 2048, false, true}, SiluCase{256, 4096, true, true}}) {
    const int N = 2 * c.I;
    const auto w = test::to_half(test::random_floats(size_t(N) * c.K, 7, -0.1f, 0.1f));
    const auto bias = test::to_half(test::random_floats(N, 8));
    for (int M : {1, 5, 9, 16, 17, 33, 64}) {
      SCOPED_TRACE("I=" + std::to_string(c.I) + " K=" + std::to_string(c.K) + (c.rms ? " rms" : "") +
                   " M=" + std::to_string(M));
      const Rows x(M, c.K, c.rms);
      Guarded<half_t> d_w(w.size(), &w), d_bias(bias.size(), &bias), d_normed(size_t(M) * c.K);
      Guarded<half_t> d_plain(size_t(M) * N), d_act(size_t(M) * c.I), d_fused(size_t(M) * N);
      Guarded<float> d_part(std::max<size_t>(cuda::skinny_partial_floats(N, c.K), 1));
      const std::vector<int32_t> zeros(std::max(cuda::skinny_counters(N, c.K), 1), 0);
      Guarded<int32_t> d_counters(zeros.size(), &zeros);
      const cuda::SkinnyWorkspace ws{d_part.get(), d_counters.get(), d_normed.get()};
      const half_t* b = c.bias ? d_bias.get() : nullptr;
      cuda::skinny_gemm(d_w.get(), N, c.K, M, x.input(c.K, /*normed_first=*/true), {SkinnyOut::half, d_plain.get(), N, b},
                        ws, nullptr, SkinnyKernel::wgmma);
      cuda::silu_mul(d_plain.get(), N, d_act.get(), c.I, M, c.I, nullptr);
      // the fused output lands in the first I columns of rows of N (the mlp buffer's layout)
      cuda::skinny_gemm(d_w.get(), N, c.K, M, x.input(c.K), {SkinnyOut::silu_mul, d_fused.get(), N, b}, ws, nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const auto plain = d_plain.read(), act = d_act.read(), fused = d_fused.read();
      size_t differ = 0, differ_swapped = 0;
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < c.I; ++j) {
          const half_t got = fused[size_t(m) * N + j];
          differ += got != act[size_t(m) * c.I + j];
          // planted bug: silu(up) * gate
          const float g = half_to_float(plain[size_t(m) * N + j]), u = half_to_float(plain[size_t(m) * N + c.I + j]);
          differ_swapped += got != float_to_half(u / (1.0f + std::exp(-u)) * g);
        }
      EXPECT_EQ(differ, 0u);
      EXPECT_GT(differ_swapped, size_t(M) * c.I / 2);
      for (bool ok : {d_w.guards_intact(), d_plain.guards_intact(), d_fused.guards_intact(), d_normed.guards_intact()})
        EXPECT_TRUE(ok);
    }
  }
}

struct RopeCase {
  int heads, kv_heads, head_dim, K;
  std::vector<int> tokens, cached;  // per sequence: new tokens, tokens already cached
  bool rope, bias, rms;
  std::string name() const {
    return "h" + std::to_string(heads) + "_" + std::to_string(kv_heads) + "_d" + std::to_string(head_dim) + "_K" +
           std::to_string(K) + "_b" + std::to_string(tokens.size()) + (rope ? "_rope" : "") + (bias ? "_bias" : "") +
           (rms ? "_rms" : "");
  }
};

class SkinnyRopeKV : public testing::TestWithParam<RopeCase> {};

TEST_P(SkinnyRopeKV, EqualsProjectionThenRopeKVWrite) {
  if (!paired_runs()) GTEST_SKIP() << "no GPU that runs the Hopper skinny kernel";
  const RopeCase& c = GetParam();
  const int B = static_cast<int>(c.tokens.size()), d = c.head_dim;
  const int N = (c.heads + 2 * c.kv_heads) * d, q_dim = c.heads * d;
  int max_context = 0;
  for (int b = 0; b < B; ++b) max_context = std::max(max_context, c.cached[b] + c.tokens[b]);
  // a paged cache of 16-token blocks whose tables scramble the blocks of the sequences
  KVCacheConfig cfg{1, max_context, c.kv_heads, d, B, 16};
  const KVLayout layout = KVCache::layout(cfg);
  const size_t block = static_cast<size_t>(layout.block_stride) * cfg.pool_blocks();
  std::vector<int32_t> slots(B), cached(c.cached.begin(), c.cached.end());
  for (int b = 0; b < B; ++b) slots[b] = B - 1 - b;
  test::TestStep step({}, c.tokens, cached, slots, {}, {}, layout,
                      test::scrambled_tables(slots, layout, test::block_shuffle(cfg.pool_blocks(), 3)));
  const int M = step.num_tokens();
  ASSERT_LE(M, cuda::kSkinnyMaxRows);
  std::vector<float> inv(d / 2);
  cpu::rope_inv_freq(inv.data(), d, 500000.0f, RopeScaling{});

  const auto w = test::to_half(test::random_floats(size_t(N) * c.K, 7, -0.1f, 0.1f));
  const auto bias = test::to_half(test::random_floats(N, 8));
  const Rows x(M, c.K, c.rms);
  const auto cache_init = test::random_halves(2 * block, 11);  // rows the step does not write keep these
  Guarded<half_t> d_w(w.size(), &w), d_bias(bias.size(), &bias), d_normed(size_t(M) * c.K);
  Guarded<half_t> d_qkv(size_t(M) * N), d_q(size_t(M) * N);
  Guarded<half_t> d_cache_plain(2 * block, &cache_init), d_cache_fused(2 * block, &cache_init);
  Guarded<float> d_inv(inv.size(), &inv);
  Guarded<float> d_part(std::max<size_t>(cuda::skinny_partial_floats(N, c.K), 1));
  const std::vector<int32_t> zeros(std::max(cuda::skinny_counters(N, c.K), 1), 0);
  Guarded<int32_t> d_counters(zeros.size(), &zeros);
  std::unique_ptr<Guarded<uint8_t>> d_step;
  const StepArrays arrays = step.device(d_step);
  const cuda::SkinnyWorkspace ws{d_part.get(), d_counters.get(), d_normed.get()};
  const cuda::SkinnyInput in = x.input(c.K), plain_in = x.input(c.K, /*normed_first=*/true);
  const half_t* b = c.bias ? d_bias.get() : nullptr;
  const float* inv_freq = c.rope ? d_inv.get() : nullptr;

  half_t* plain_cache = d_cache_plain.get();
  cuda::skinny_gemm(d_w.get(), N, c.K, M, plain_in, {SkinnyOut::half, d_qkv.get(), N, b}, ws, nullptr,
                    SkinnyKernel::wgmma);
  cuda::rope_kv_write(d_qkv.get(), N, c.heads, c.kv_heads, d, inv_freq, plain_cache, plain_cache + block, layout,
                      arrays, M, nullptr);
  cuda::SkinnyOutput o{SkinnyOut::rope_kv, d_q.get(), N, b};
  half_t* fused_cache = d_cache_fused.get();
  o.rope = cuda::SkinnyRopeKV{c.heads, c.kv_heads, d, inv_freq, fused_cache, fused_cache + block, layout, arrays};
  ASSERT_TRUE(cuda::skinny_paired_supported(N, o));
  cuda::skinny_gemm(d_w.get(), N, c.K, M, in, o, ws, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  const auto qkv = d_qkv.read(), q = d_q.read(), plain = d_cache_plain.read(), fused = d_cache_fused.read();
  size_t q_differ = 0, q_unrotated = 0;
  for (int m = 0; m < M; ++m)
    for (int i = 0; i < q_dim; ++i) q_differ += q[size_t(m) * N + i] != qkv[size_t(m) * N + i];
  EXPECT_EQ(q_differ, 0u) << "q rows";
  EXPECT_TRUE(test::rows_equal(plain, fused)) << "K and V caches";
  size_t written = 0;
  for (size_t i = 0; i < plain.size(); ++i) written += plain[i] != cache_init[i];
  EXPECT_GT(written, size_t(M) * 2 * c.kv_heads * d / 2);  // the step wrote its rows (most values change)
  if (c.rope) {  // planted bug: q left unrotated (the projection's rows before rope_kv_write) must not pass
    Guarded<half_t> d_raw(size_t(M) * N);
    cuda::skinny_gemm(d_w.get(), N, c.K, M, plain_in, {SkinnyOut::half, d_raw.get(), N, b}, ws, nullptr,
                      SkinnyKernel::wgmma);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto raw = d_raw.read();
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < q_dim; ++i) q_unrotated += q[size_t(m) * N + i] != raw[size_t(m) * N + i];
    EXPECT_GT(q_unrotated, size_t(M) * q_dim / 4);
  }
  for (bool ok : {d_w.guards_intact(), d_q.guards_intact(), d_cache_plain.guards_intact(),
                  d_cache_fused.guards_intact(), d_normed.guards_intact()})
    EXPECT_TRUE(ok);
}

std::vector<RopeCase> rope_cases() {
  std::vector<RopeCase> out;
  // decode: 19 sequences of one token at different lengths; Llama-3.2-1B's heads, K split in 4
  RopeCase decode{32, 8, 64, 2048, {}, {}, true, false, true};
  for (int b = 0; b < 19; ++b) decode.tokens.push_back(1), decode.cached.push_back((b * 37) % 300);
  out.push_back(decode);
  decode.rms = false;
  out.push_back(decode);
  out.push_back({4, 2, 128, 576, {1, 1, 1}, {0, 15, 16}, true, true, true});    // head_dim 128: two blocks a head
  out.push_back({6, 2, 64, 256, {17, 1, 46}, {0, 5, 1023}, true, true, false});  // chunks across block boundaries
  out.push_back({2, 1, 64, 128, {64}, {0}, false, true, true});                  // learned positions: no rotation
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SkinnyRopeKV, testing::ValuesIn(rope_cases()),
                         [](const testing::TestParamInfo<RopeCase>& i) { return i.param.name(); });

// The paired epilogues on a kernel that does not have them are an argument error, never a crash.
TEST(SkinnyFusions, PairedOnOtherKernelsThrows) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int N = 128, K = 64, M = 2;
  Guarded<half_t> d_w(size_t(N) * K), d_x(size_t(M) * K), d_y(size_t(M) * N);
  const cuda::SkinnyInput in{SkinnyIn::half, d_x.get(), K};
  const cuda::SkinnyOutput o{SkinnyOut::silu_mul, d_y.get(), N};
  EXPECT_THROW(cuda::skinny_gemm(d_w.get(), N, K, M, in, o, {}, nullptr, SkinnyKernel::narrow), std::invalid_argument);
  if (!paired_runs())
    EXPECT_THROW(cuda::skinny_gemm(d_w.get(), N, K, M, in, o, {}, nullptr), std::invalid_argument);
  // pairs not a multiple of 32 rows apart (N / 2 = 48)
  EXPECT_FALSE(cuda::skinny_paired_supported(96, o));
}
#endif

}  // namespace
}  // namespace kvinfer
