// CUDA prompt_mlp_gate_up (the gate/up projection with silu(gate) * up in its epilogue) against the
// CPU reference: cpu::matmul, the projection rounded to fp16 as the GEMM stores it, then
// cpu::silu_mul. Awkward row counts (tiles of 128 rows cut short), padded row strides, guard bands
// around the output, NaN/Inf fail; the reference with gate and up swapped must not pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "parity.h"
#include "test_util.h"

#if KVINFER_WITH_CUDA
#include "backend/cuda/prompt_mlp.h"
#endif

namespace kvinfer {
namespace {

struct MlpCase {
  int M, I, K, x_pad, out_pad;  // rows, outputs, inputs; extra elements at the end of x's and out's rows
  std::string name() const {
    return "m" + std::to_string(M) + "_i" + std::to_string(I) + "_k" + std::to_string(K) + "_pad" +
           std::to_string(x_pad) + "_" + std::to_string(out_pad);
  }
};

class PromptMlpCuda : public testing::TestWithParam<MlpCase> {};

TEST_P(PromptMlpCuda, MatchesCpuReferenceAndKeepsGuards) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
#if KVINFER_WITH_CUDA
  const MlpCase& c = GetParam();
  if (!cuda::prompt_mlp_gate_up_supported(c.I, c.K)) GTEST_SKIP() << "no Hopper kernel on this device or build";
  const int64_t ldx = c.K + c.x_pad, ldo = c.I + c.out_pad;
  auto x16 = test::random_halves(size_t(c.M) * ldx, 11);
  auto w16 = test::random_halves(size_t(2) * c.I * c.K, 12);
  for (auto& h : w16) h = float_to_half(half_to_float(h) / 64.0f);  // sums of K terms stay in fp16's range
  // reference: the projection in fp32, rounded to fp16 as stored, then silu(gate) * up
  const auto x = test::to_float(x16);
  std::vector<float> gate_up(size_t(c.M) * 2 * c.I), ref(size_t(c.M) * c.I), swapped(ref.size());
  cpu::matmul(x.data(), ldx, w16.data(), nullptr, gate_up.data(), 2 * c.I, c.M, 2 * c.I, c.K, false);
  gate_up = test::to_float(test::to_half(gate_up));
  cpu::silu_mul(gate_up.data(), 2 * c.I, ref.data(), c.I, c.M, c.I);
  std::vector<float> up_gate(gate_up.size());  // a planted bug: gate and up swapped
  for (int m = 0; m < c.M; ++m)
    for (int i = 0; i < c.I; ++i) {
      up_gate[size_t(m) * 2 * c.I + i] = gate_up[size_t(m) * 2 * c.I + c.I + i];
      up_gate[size_t(m) * 2 * c.I + c.I + i] = gate_up[size_t(m) * 2 * c.I + i];
    }
  cpu::silu_mul(up_gate.data(), 2 * c.I, swapped.data(), c.I, c.M, c.I);

  test::Guarded<half_t> d_x(x16.size(), &x16), d_w(w16.size(), &w16);
  const std::vector<half_t> sentinel(size_t(c.M) * ldo, float_to_half(1234.0f));
  test::Guarded<half_t> d_out(sentinel.size(), &sentinel);
  cuda::prompt_mlp_gate_up(d_x.get(), ldx, d_w.get(), c.I, c.K, c.M, d_out.get(), ldo, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(d_out.guards_intact() && d_x.guards_intact() && d_w.guards_intact());
  const auto out = d_out.read();
  std::vector<float> got(ref.size());
  for (int m = 0; m < c.M; ++m) {
    for (int i = 0; i < c.I; ++i) got[size_t(m) * c.I + i] = half_to_float(out[size_t(m) * ldo + i]);
    for (int i = c.I; i < ldo; ++i)  // the row's padding is not written
      ASSERT_EQ(out[size_t(m) * ldo + i], sentinel[0]) << "row " << m << " padding column " << i;
  }
  EXPECT_TRUE(test::nmse_below(got, ref, 1e-5));
  for (int m = 0; m < c.M; ++m) {  // and no row far off (a rare race would hide in one NMSE)
    double err = 0, mag = 1e-3;
    for (int i = 0; i < c.I; ++i)
      err = std::max(err, double(std::fabs(got[size_t(m) * c.I + i] - ref[size_t(m) * c.I + i]))),
      mag = std::max(mag, double(std::fabs(ref[size_t(m) * c.I + i])));
    ASSERT_LT(err / mag, 2e-2) << "row " << m;
  }
  EXPECT_FALSE(test::nmse_below(got, swapped, 1e-5));
#endif
}

INSTANTIATE_TEST_SUITE_P(Shapes, PromptMlpCuda,
                         testing::Values(MlpCase{1, 128, 64, 0, 0},       // one row of one tile
                                         MlpCase{130, 256, 192, 8, 2},    // a second tile of 2 rows, padded rows
                                         MlpCase{1000, 384, 128, 0, 0},   // 8 tiles of rows, the last cut short
                                         MlpCase{1536, 2048, 512, 0, 0},  // more tiles than SMs: blocks walk on
                                         // blocks walk 2-3 tiles whose k-steps (3, 1, 5) do not fill
                                         // the 4 stages evenly: stages and phases carry across tiles
                                         MlpCase{4096, 1280, 192, 0, 0}, MlpCase{2048, 2048, 64, 0, 0},
                                         MlpCase{2048, 2048, 320, 8, 0},
                                         MlpCase{300, 128, 2048, 0, 6}),  // a long K loop
                         [](const testing::TestParamInfo<MlpCase>& i) { return i.param.name(); });

}  // namespace
}  // namespace kvinfer
