// Every CUDA op against its CPU reference: random inputs, NMSE bounds stated next to the numbers,
// NaN/Inf fail, guard bands around every output must stay untouched. Skipped without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "runtime/kv_cache.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/sampling.h"
#include "parity.h"
#include "test_util.h"

#if KVINFER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "core/cublas_loader.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/elementwise.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/sampling.h"
#endif

namespace kvinfer {
namespace {

using test::Guarded;
using test::nmse_below;
using test::random_floats;
using test::to_float;
using test::to_half;

// fp16 outputs carry a relative rounding error of at most 2^-11, i.e. an NMSE near 1e-7 for
// uniform data; 1e-5 leaves room for fp16 intermediates (attention probabilities, GEMM inputs)
// while a wrong index, mask or scale gives NMSE > 1e-2.
constexpr double kHalfNmse = 1e-5;
constexpr double kFloatNmse = 1e-10;  // fp32 outputs of the same fp32 arithmetic

#define SKIP_WITHOUT_CUDA()                                                \
  do {                                                                     \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";        \
  } while (0)

#if KVINFER_WITH_CUDA
void sync() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

TEST(CudaOps, Embedding) {
  SKIP_WITHOUT_CUDA();
  for (int T : {1, 17}) {
    for (int H : {64, 576}) {
      for (bool learned : {false, true}) {
        SCOPED_TRACE("T=" + std::to_string(T) + " H=" + std::to_string(H) + " learned=" + std::to_string(learned));
        const int V = 100, ctx = 40, slots = 3;
        auto table = to_half(random_floats(size_t(V) * H, 1));
        auto pos_table = to_half(random_floats(size_t(ctx) * H, 2));
        // one sequence per slot, its tokens after (t * 7) % 13 cached ones
        std::vector<int32_t> tokens(T), cached(slots), slot_ids(slots);
        std::vector<int> rows(slots, 0);
        for (int t = 0; t < T; ++t) tokens[t] = (t * 37 + 11) % V, rows[t % slots] += 1;
        for (int b = 0; b < slots; ++b) cached[b] = (b * 7) % 13, slot_ids[b] = slots - 1 - b;
        std::vector<int> used;
        std::vector<int32_t> used_cached, used_slots;
        for (int b = 0; b < slots; ++b)
          if (rows[b] > 0) used.push_back(rows[b]), used_cached.push_back(cached[b]), used_slots.push_back(slot_ids[b]);
        test::TestStep step(tokens, used, used_cached, used_slots);
        // the second token (if any) comes from the previous step's samples
        std::vector<int32_t> sampled = {V - 1, V - 2};
        if (T > 1) step.host.prev_sample_row[1] = 1;
        std::vector<float> ref(size_t(T) * H);
        std::vector<int32_t> ref_hist(size_t(slots) * ctx, -1);
        std::unique_ptr<Guarded<uint8_t>> d_step;
        const StepArrays dev = step.device(d_step);
        if (T > 1) step.host.tokens[1] = sampled[1];  // what the CUDA op resolves on the device
        cpu::embedding(step.host, T, table.data(), learned ? pos_table.data() : nullptr, ref_hist.data(), ctx,
                       ref.data(), H);
        Guarded<half_t> d_table(table.size(), &table), d_pos(pos_table.size(), &pos_table);
        std::vector<int32_t> hist(size_t(slots) * ctx, -1);
        Guarded<int32_t> d_hist(hist.size(), &hist), d_sampled(sampled.size(), &sampled);
        Guarded<float> d_out(ref.size()), d_ss(size_t(T) * (H / 16));
        cuda::embedding(dev, T, d_sampled.get(), d_table.get(), learned ? d_pos.get() : nullptr, d_hist.get(), ctx,
                        d_out.get(), H, d_ss.get(), nullptr);
        sync();
        EXPECT_TRUE(nmse_below(d_out.read(), ref, kFloatNmse));
        EXPECT_EQ(d_hist.read(), ref_hist);
        std::vector<float> ss(size_t(T) * (H / 16));  // sums of squares of 16-column groups
        for (size_t i = 0; i < ref.size(); ++i) ss[i / 16] += ref[i] * ref[i];
        EXPECT_TRUE(nmse_below(d_ss.read(), ss, 1e-10));
        EXPECT_TRUE(d_ss.guards_intact());
        EXPECT_TRUE(d_out.guards_intact());
        EXPECT_TRUE(d_hist.guards_intact());
      }
    }
  }
}

TEST(CudaOps, Norms) {
  SKIP_WITHOUT_CUDA();
  for (int rows : {1, 3, 19}) {
    for (int H : {64, 67, 576, 2048}) {  // 67: the path without 16-byte loads
      for (bool layer : {false, true}) {
        for (bool indexed : {false, true}) {
          SCOPED_TRACE("rows=" + std::to_string(rows) + " H=" + std::to_string(H) +
                       (layer ? " layer_norm" : " rms_norm") + (indexed ? " indexed" : ""));
          const int src_rows = rows + 5;
          auto x = random_floats(size_t(src_rows) * H, 3, -3.0f, 3.0f);
          auto w = to_half(random_floats(H, 4, 0.5f, 1.5f)), b = to_half(random_floats(H, 5));
          std::vector<int32_t> index(rows);
          for (int r = 0; r < rows; ++r) index[r] = indexed ? (r * 3 + 2) % src_rows : r;
          std::vector<float> gathered, ref(size_t(rows) * H);
          for (int r = 0; r < rows; ++r) gathered.insert(gathered.end(), x.begin() + size_t(index[r]) * H, x.begin() + size_t(index[r] + 1) * H);
          if (layer) cpu::layer_norm(gathered.data(), w.data(), b.data(), ref.data(), rows, H, 1e-5f);
          else cpu::rms_norm(gathered.data(), w.data(), ref.data(), rows, H, 1e-5f);
          Guarded<float> d_x(x.size(), &x);
          Guarded<half_t> d_w(H, &w), d_b(H, &b), d_y(ref.size());
          Guarded<int32_t> d_i(rows, &index);
          if (layer)
            cuda::layer_norm(d_x.get(), indexed ? d_i.get() : nullptr, d_w.get(), d_b.get(), d_y.get(), rows, H, 1e-5f, nullptr);
          else
            cuda::rms_norm(d_x.get(), indexed ? d_i.get() : nullptr, d_w.get(), d_y.get(), rows, H, 1e-5f, nullptr);
          sync();
          EXPECT_TRUE(nmse_below(to_float(d_y.read()), ref, kHalfNmse));
          EXPECT_TRUE(d_y.guards_intact());
        }
      }
    }
  }
}

TEST(CudaOps, ActivationsAndBias) {
  SKIP_WITHOUT_CUDA();
  for (int T : {1, 3, 19})
  for (int I : {1536, 13}) {  // 13: the paths without 16-byte loads
    SCOPED_TRACE("T=" + std::to_string(T) + " I=" + std::to_string(I));
    auto gu = to_float(to_half(random_floats(size_t(T) * 2 * I, 7, -4.0f, 4.0f)));
    std::vector<float> ref(gu);
    cpu::silu_mul(gu.data(), 2 * I, ref.data(), 2 * I, T, I);
    auto h = to_half(gu);
    Guarded<half_t> d(h.size(), &h);
    cuda::silu_mul(d.get(), 2 * I, d.get(), 2 * I, T, I, nullptr);
    auto gelu_ref = gu;
    cpu::gelu_new(gelu_ref.data(), gelu_ref.size());
    Guarded<half_t> g(h.size(), &h);
    cuda::gelu_new(g.get(), h.size(), nullptr);
    auto bias = to_half(random_floats(2 * I, 8));
    std::vector<float> bias_ref(gu);
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < 2 * I; ++n) bias_ref[size_t(t) * 2 * I + n] += half_to_float(bias[n]);
    Guarded<half_t> bh(h.size(), &h), d_bias(bias.size(), &bias);
    Guarded<float> bf(gu.size(), &gu);
    cuda::bias_add(bh.get(), 2 * I, d_bias.get(), T, 2 * I, nullptr);
    cuda::bias_add(bf.get(), 2 * I, d_bias.get(), T, 2 * I, nullptr);
    sync();
    auto got = to_float(d.read());
    std::vector<float> got_first, ref_first;  // silu_mul writes the first half of each row
    for (int t = 0; t < T; ++t) {
      got_first.insert(got_first.end(), got.begin() + size_t(t) * 2 * I, got.begin() + size_t(t) * 2 * I + I);
      ref_first.insert(ref_first.end(), ref.begin() + size_t(t) * 2 * I, ref.begin() + size_t(t) * 2 * I + I);
    }
    EXPECT_TRUE(nmse_below(got_first, ref_first, kHalfNmse));
    EXPECT_TRUE(nmse_below(to_float(g.read()), gelu_ref, kHalfNmse));
    EXPECT_TRUE(nmse_below(to_float(bh.read()), bias_ref, kHalfNmse));
    EXPECT_TRUE(nmse_below(bf.read(), bias_ref, kFloatNmse));
    EXPECT_TRUE(d.guards_intact() && g.guards_intact() && bh.guards_intact() && bf.guards_intact());
  }
}

// q/k-norm (Qwen3) in place on fp16 rows: each q and k head normed with its weight, the v heads
// and the padding after them untouched; a q/k weight mix-up must fail the comparison.
TEST(CudaOps, HeadNorms) {
  SKIP_WITHOUT_CUDA();
  const int q_heads = 4, k_heads = 2, v_heads = 2;
  for (int T : {1, 5, 33}) {
    for (int d : {64, 80, 96, 128, 256}) {
      SCOPED_TRACE("T=" + std::to_string(T) + " head_dim=" + std::to_string(d));
      const int qk = (q_heads + k_heads) * d;
      const int64_t stride = int64_t(q_heads + k_heads + v_heads) * d + 8;
      const auto rows = to_half(random_floats(size_t(T) * stride, 21, -4.0f, 4.0f));
      const auto qw = to_half(random_floats(d, 22, 0.5f, 1.5f)), kw = to_half(random_floats(d, 23, 0.5f, 1.5f));
      auto ref = to_float(rows), swapped = ref;
      cpu::head_rms_norm(ref.data(), stride, T, q_heads, d, qw.data(), 1e-6f);
      cpu::head_rms_norm(ref.data() + int64_t(q_heads) * d, stride, T, k_heads, d, kw.data(), 1e-6f);
      cpu::head_rms_norm(swapped.data(), stride, T, q_heads, d, kw.data(), 1e-6f);
      cpu::head_rms_norm(swapped.data() + int64_t(q_heads) * d, stride, T, k_heads, d, qw.data(), 1e-6f);
      Guarded<half_t> d_rows(rows.size(), &rows), d_qw(d, &qw), d_kw(d, &kw);
      cuda::head_rms_norm(d_rows.get(), stride, T, q_heads, k_heads, d, d_qw.get(), d_kw.get(), 1e-6f, nullptr);
      sync();
      const auto got = d_rows.read();
      std::vector<float> got_qk, ref_qk, swapped_qk;
      for (int t = 0; t < T; ++t) {
        const size_t at = size_t(t) * stride;
        got_qk.insert(got_qk.end(), got.begin() + at, got.begin() + at + qk);
        ref_qk.insert(ref_qk.end(), ref.begin() + at, ref.begin() + at + qk);
        swapped_qk.insert(swapped_qk.end(), swapped.begin() + at, swapped.begin() + at + qk);
        EXPECT_TRUE(test::rows_equal(std::vector<half_t>(got.begin() + at + qk, got.begin() + at + stride),
                                     std::vector<half_t>(rows.begin() + at + qk, rows.begin() + at + stride)))
            << "the v heads of row " << t << " changed";
      }
      EXPECT_TRUE(nmse_below(got_qk, ref_qk, kHalfNmse));
      EXPECT_FALSE(nmse_below(got_qk, swapped_qk, kHalfNmse)) << "q and k weights swapped pass";
      EXPECT_TRUE(d_rows.guards_intact());
    }
  }
}

// The rows a prompt step keeps for its last layer (DecoderOps::keep_logit_rows): exact copies, in
// the order asked, a row asked twice given twice (a padded graph's rows), nothing written past R.
TEST(CudaOps, GatherRows) {
  SKIP_WITHOUT_CUDA();
  const int T = 37, H = 200, A = 136;
  const std::vector<int32_t> rows = {3, 17, 36, 36, 0};
  const int R = static_cast<int>(rows.size());
  const auto x = random_floats(size_t(T) * H, 11);
  const auto attn = to_half(random_floats(size_t(T) * A, 12));
  Guarded<float> d_x(x.size(), &x), d_x_out(size_t(R) * H);
  Guarded<half_t> d_attn(attn.size(), &attn), d_attn_out(size_t(R) * A);
  Guarded<int32_t> d_rows(rows.size(), &rows);
  cuda::gather_rows(d_x.get(), d_attn.get(), A, d_rows.get(), R, H, d_x_out.get(), d_attn_out.get(), nullptr);
  sync();
  const auto x_out = d_x_out.read();
  const auto attn_out = d_attn_out.read();
  for (int r = 0; r < R; ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    EXPECT_TRUE(std::equal(x_out.begin() + size_t(r) * H, x_out.begin() + size_t(r + 1) * H,
                           x.begin() + size_t(rows[r]) * H));
    EXPECT_TRUE(test::rows_equal(std::vector<half_t>(attn_out.begin() + size_t(r) * A, attn_out.begin() + size_t(r + 1) * A),
                                 std::vector<half_t>(attn.begin() + size_t(rows[r]) * A, attn.begin() + size_t(rows[r] + 1) * A)));
  }
  EXPECT_TRUE(d_x_out.guards_intact() && d_attn_out.guards_intact() && d_x.guards_intact() && d_attn.guards_intact());
}

TEST(CudaOps, Gemm) {
  SKIP_WITHOUT_CUDA();
  cublasHandle_t handle;
  ASSERT_EQ(cublas::api().create(&handle), CUBLAS_STATUS_SUCCESS);
  for (int T : {1, 3, 19, 128}) {
    for (auto [N, K] : {std::pair{64, 64}, std::pair{576, 1536}, std::pair{1000, 576}}) {
      for (bool f32 : {false, true}) {
        SCOPED_TRACE("T=" + std::to_string(T) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                     (f32 ? " y=fp32 beta=1" : " y=fp16"));
        auto x = to_half(random_floats(size_t(T) * K, 9)), w = to_half(random_floats(size_t(N) * K, 10));
        auto y0 = random_floats(size_t(T) * N, 11);
        std::vector<float> ref = f32 ? y0 : std::vector<float>(size_t(T) * N);
        auto xf = to_float(x);
        cpu::matmul(xf.data(), K, w.data(), nullptr, ref.data(), N, T, N, K, f32);
        Guarded<half_t> d_x(x.size(), &x), d_w(w.size(), &w), d_yh(size_t(T) * N);
        Guarded<float> d_yf(y0.size(), &y0);
        if (f32) cuda::gemm(handle, d_x.get(), K, d_w.get(), d_yf.get(), true, N, T, N, K, 1.0f);
        else cuda::gemm(handle, d_x.get(), K, d_w.get(), d_yh.get(), false, N, T, N, K, 0.0f);
        sync();
        // fp32 accumulation in a different order: NMSE ~1e-12 for fp32 out
        EXPECT_TRUE(f32 ? nmse_below(d_yf.read(), ref, 1e-9) : nmse_below(to_float(d_yh.read()), ref, kHalfNmse));
        EXPECT_TRUE(d_yf.guards_intact() && d_yh.guards_intact());
      }
    }
  }
  cublas::api().destroy(handle);
}

// Attention: a KV cache with `slots`, sequences of (slot, cached length, new rows); CPU reference
// on the same fp16 cache and fp16-rounded queries.
struct AttnCase {
  int heads, kv_heads, d;
  std::vector<int> slots, cached, rows;
  std::string name() const {
    std::string s = "H" + std::to_string(heads) + "_KV" + std::to_string(kv_heads) + "_d" + std::to_string(d);
    for (size_t i = 0; i < slots.size(); ++i) s += "_" + std::to_string(cached[i]) + "p" + std::to_string(rows[i]);
    return s;
  }
};

// `bits`: where given, receives the output (the same inputs every call: they are seeded).
void run_attention(const AttnCase& c, bool decode, cuda::PrefillKernel kernel = cuda::PrefillKernel::mma,
                   std::vector<half_t>* bits = nullptr) {
  SCOPED_TRACE(c.name());
  const int batch = c.slots.size();
  int max_ctx = 0, total = 0, max_rows = 0;
  for (int b = 0; b < batch; ++b) {
    max_ctx = std::max(max_ctx, c.cached[b] + c.rows[b]);
    total += c.rows[b];
    max_rows = std::max(max_rows, c.rows[b]);
  }
  const int n_slots = *std::max_element(c.slots.begin(), c.slots.end()) + 1;
  // Paged, 16-token blocks: each slot's own blocks in order, and the same K/V with the blocks
  // scrambled (the scrambled tables must give the same bits, on the CPU and on the GPU).
  // (one position more than the steps use: the planted-bug reference below reads it)
  KVCacheConfig cfg{1, max_ctx + 1, c.kv_heads, c.d, n_slots, 16};
  const KVLayout layout = KVCache::layout(cfg);
  const size_t block = size_t(layout.block_stride) * cfg.pool_blocks();
  auto kc = to_half(random_floats(block, 12)), vc = to_half(random_floats(block, 13));
  const std::vector<int32_t> perm = test::block_shuffle(cfg.pool_blocks(), 21);
  const auto kc_scrambled = test::move_blocks(kc, perm, layout.block_stride);
  const auto vc_scrambled = test::move_blocks(vc, perm, layout.block_stride);
  const int q_stride = c.heads * c.d + 8;  // padded rows: strides are honoured
  auto q = to_half(random_floats(size_t(total) * q_stride, 14, -2.0f, 2.0f));
  const std::vector<int32_t> cached(c.cached.begin(), c.cached.end()), slots(c.slots.begin(), c.slots.end());
  test::TestStep step({}, c.rows, cached, slots, {}, {}, layout);
  test::TestStep scrambled({}, c.rows, cached, slots, {}, {}, layout, test::scrambled_tables(slots, layout, perm));
  const float scale = 1.0f / std::sqrt(float(c.d));
  std::vector<float> ref(size_t(total) * c.heads * c.d), ref_scrambled(ref.size());
  auto qf = to_float(q);
  cpu::attention(qf.data(), q_stride, kc.data(), vc.data(), layout, step.host, total, c.heads, c.kv_heads, c.d,
                 scale, ref.data(), c.heads * c.d);
  cpu::attention(qf.data(), q_stride, kc_scrambled.data(), vc_scrambled.data(), layout, scrambled.host, total,
                 c.heads, c.kv_heads, c.d, scale, ref_scrambled.data(), c.heads * c.d);
  EXPECT_TRUE(ref == ref_scrambled) << "CPU attention through scrambled blocks differs";
  Guarded<half_t> d_k(kc.size(), &kc), d_v(vc.size(), &vc), d_q(q.size(), &q), d_out(ref.size());
  std::unique_ptr<Guarded<uint8_t>> d_step;
  const StepArrays dev = step.device(d_step);
  if (decode) {
    // Zeroed once; every call leaves its counters at zero again, so the second call must give the
    // bits of the first. The output is poisoned (NaN) in between: a row the second call failed to
    // finish cannot pass on the first call's values. The second call is told the lengths, which
    // picks one block per row where there are many short rows, or a block per chunk with a deeper
    // copy pipeline where there are no more chunks than SMs: the same bits again. Chunked as the
    // engine chunks the model (fewer than 8 KV heads: shorter chunks).
    const std::vector<float> zeros(cuda::decode_workspace_bytes(batch, c.heads, c.d) / 4);
    Guarded<float> part(zeros.size(), &zeros);
    cuda::DecodeLengths lengths;
    for (int b = 0; b < batch; ++b) {
      lengths.max_keys = std::max(lengths.max_keys, c.cached[b] + 1);
      lengths.total_keys += c.cached[b] + 1;
    }
    std::vector<half_t> first;
    for (int call = 0; call < 2; ++call) {
      if (call == 1) ASSERT_EQ(cudaMemset(d_out.get(), 0xFF, ref.size() * sizeof(half_t)), cudaSuccess);
      cuda::attention_decode(d_q.get(), q_stride, d_k.get(), d_v.get(), layout, dev.block_tables, dev.positions,
                             batch, c.heads, c.kv_heads, c.d, scale, part.get(), d_out.get(), c.heads * c.d,
                             nullptr, cuda::decode_splits(c.kv_heads), call == 1 ? lengths : cuda::DecodeLengths{});
      sync();
      if (call == 0) first = d_out.read();
    }
    EXPECT_TRUE(test::rows_equal(first, d_out.read()));
    EXPECT_TRUE(part.guards_intact());
  } else {
    cuda::attention_prefill(d_q.get(), q_stride, d_k.get(), d_v.get(), layout, dev.block_tables, dev.query_starts,
                            dev.positions, batch, max_rows, c.heads, c.kv_heads, c.d, scale, d_out.get(),
                            c.heads * c.d, nullptr, kernel);
    sync();
  }
  EXPECT_TRUE(nmse_below(to_float(d_out.read()), ref, kHalfNmse));
  EXPECT_TRUE(d_out.guards_intact());
  if (!decode) {
    // A planted off-by-one in the causal mask (every row also sees the key after its own) must not
    // pass: the reference of the same queries one position later.
    std::vector<int32_t> later(cached);
    for (auto& n : later) ++n;
    test::TestStep planted({}, c.rows, later, slots, {}, {}, layout);
    std::vector<float> ref_planted(ref.size());
    cpu::attention(qf.data(), q_stride, kc.data(), vc.data(), layout, planted.host, total, c.heads, c.kv_heads, c.d,
                   scale, ref_planted.data(), c.heads * c.d);
    EXPECT_FALSE(nmse_below(to_float(d_out.read()), ref_planted, kHalfNmse)) << "a mask one key too wide passes";
  }
  // the scrambled cache through its tables: the same bits
  const std::vector<half_t> plain = d_out.read();
  if (bits) *bits = plain;
  Guarded<half_t> d_ks(kc.size(), &kc_scrambled), d_vs(vc.size(), &vc_scrambled);
  std::unique_ptr<Guarded<uint8_t>> d_step2;
  const StepArrays dev2 = scrambled.device(d_step2);
  ASSERT_EQ(cudaMemset(d_out.get(), 0xFF, ref.size() * sizeof(half_t)), cudaSuccess);
  if (decode) {
    const std::vector<float> zeros(cuda::decode_workspace_bytes(batch, c.heads, c.d) / 4);
    Guarded<float> part(zeros.size(), &zeros);
    cuda::attention_decode(d_q.get(), q_stride, d_ks.get(), d_vs.get(), layout, dev2.block_tables, dev2.positions,
                           batch, c.heads, c.kv_heads, c.d, scale, part.get(), d_out.get(), c.heads * c.d, nullptr,
                           cuda::decode_splits(c.kv_heads));
  } else {
    cuda::attention_prefill(d_q.get(), q_stride, d_ks.get(), d_vs.get(), layout, dev2.block_tables,
                            dev2.query_starts, dev2.positions, batch, max_rows, c.heads, c.kv_heads, c.d, scale,
                            d_out.get(), c.heads * c.d, nullptr, kernel);
  }
  sync();
  EXPECT_TRUE(test::rows_equal(plain, d_out.read())) << "GPU attention through scrambled blocks differs";
}

class CudaPrefill : public testing::TestWithParam<AttnCase> {};
TEST_P(CudaPrefill, MatchesCpu) {
  SKIP_WITHOUT_CUDA();
  run_attention(GetParam(), false, cuda::PrefillKernel::mma);
}
// The warp-specialised Hopper kernel (TMA producer, ping-pong consumers) on the same cases.
TEST_P(CudaPrefill, WarpSpecialisedMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  KVCacheConfig cfg{1, 64, GetParam().kv_heads, GetParam().d, 1, 16};
  if (!cuda::prefill_ws_available(GetParam().d, KVCache::layout(cfg)))
    GTEST_SKIP() << "no warp-specialised kernel for this head_dim or GPU";
  run_attention(GetParam(), false, cuda::PrefillKernel::ws);
}
// ... with the intra-warpgroup overlap (softmax under the warpgroup's own P V): the same
// arithmetic in the same order, so the same bits as without it.
TEST_P(CudaPrefill, OverlappedMatchesCpuAndWarpSpecialisedBits) {
  SKIP_WITHOUT_CUDA();
  KVCacheConfig cfg{1, 64, GetParam().kv_heads, GetParam().d, 1, 16};
  if (!cuda::prefill_ws_available(GetParam().d, KVCache::layout(cfg)))
    GTEST_SKIP() << "no warp-specialised kernel for this head_dim or GPU";
  std::vector<half_t> ws, overlapped;
  run_attention(GetParam(), false, cuda::PrefillKernel::ws, &ws);
  run_attention(GetParam(), false, cuda::PrefillKernel::ws_overlap, &overlapped);
  ASSERT_EQ(ws.size(), overlapped.size());
  EXPECT_TRUE(test::rows_equal(ws, overlapped)) << "the overlapped kernel's bits differ from the warp-specialised one's";
  if (GetParam().d == 64) {  // three consumer warpgroups, 192-row tiles: a row's tiles and order are the same
    std::vector<half_t> wide;
    run_attention(GetParam(), false, cuda::PrefillKernel::ws_overlap_192, &wide);
    ASSERT_EQ(ws.size(), wide.size());
    EXPECT_TRUE(test::rows_equal(ws, wide)) << "the 192-row kernel's bits differ from the 128-row one's";
  }
}
// Asking for the Hopper kernel where it cannot run is an error, not a silent fallback.
TEST(CudaPrefillKernel, HopperWhereUnavailableThrows) {
  SKIP_WITHOUT_CUDA();
  KVLayout layout{};
  layout.head_dim = 80, layout.block_shift = 4, layout.table_stride = 1, layout.num_blocks = 4;
  EXPECT_FALSE(cuda::prefill_ws_available(80, layout));
  EXPECT_THROW(cuda::attention_prefill(nullptr, 80, nullptr, nullptr, layout, nullptr, nullptr, nullptr, 1, 1, 1, 1, 80,
                                       1.0f, nullptr, 80, nullptr, cuda::PrefillKernel::ws),
               std::invalid_argument);
  layout.head_dim = 64, layout.block_shift = 3, layout.num_blocks = 4;  // blocks of 8 positions
  EXPECT_FALSE(cuda::prefill_ws_available(64, layout));
}
// A mixed step sends its one-token rows through the decode kernel only where that kernel runs the
// model's heads; the answer must agree with what attention_decode accepts.
TEST(CudaDecodeKernel, SupportsExactlyWhatItRuns) {
  EXPECT_TRUE(cuda::attention_decode_supports(64, 32, 8));
  EXPECT_TRUE(cuda::attention_decode_supports(128, 16, 1));
  EXPECT_FALSE(cuda::attention_decode_supports(256, 8, 8));  // Gemma's head_dim: prefill only
  EXPECT_FALSE(cuda::attention_decode_supports(64, 17, 1));  // a GQA group of 17
  EXPECT_FALSE(cuda::attention_decode_supports(64, 12, 5));  // not a multiple
  SKIP_WITHOUT_CUDA();
  KVLayout layout{};
  layout.head_dim = 256, layout.block_shift = 4, layout.table_stride = 1, layout.num_blocks = 4;
  EXPECT_THROW(cuda::attention_decode(nullptr, 256, nullptr, nullptr, layout, nullptr, nullptr, 1, 8, 8, 256, 1.0f,
                                      nullptr, nullptr, 256, nullptr),
               std::invalid_argument);
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaPrefill, testing::Values(
    AttnCase{4, 4, 64, {0}, {0}, {1}},                      // one token, no cache
    AttnCase{6, 2, 64, {0}, {0}, {17}},                     // GQA 3, partial tile
    AttnCase{8, 2, 128, {1, 0, 2}, {0, 5, 30}, {100, 1, 64}},  // chunks after cached tokens, GQA 4
    AttnCase{8, 1, 80, {0}, {0}, {1000}},                   // GQA 8, head_dim 80
    AttnCase{4, 4, 96, {0, 1}, {3000, 0}, {1097, 5}},       // context 4097
    AttnCase{9, 3, 64, {2, 0, 1}, {0, 0, 0}, {19, 3, 1}},   // SmolLM2 heads, batch 3
    AttnCase{4, 2, 32, {0, 1}, {7, 0}, {70, 129}},          // GQA 2, head_dim 32
    AttnCase{8, 2, 256, {0, 1}, {0, 17}, {70, 33}},         // head_dim 256 (Q re-read from shared memory)
    AttnCase{8, 8, 128, {0}, {1023}, {200}},                // a chunk after 1023 cached tokens, MHA
    AttnCase{2, 1, 64, {2, 0, 1}, {1, 0, 1023}, {1, 4097, 65}},  // ragged: after 1, 4097 from 0, after 1023
    AttnCase{12, 3, 96, {0, 1}, {1, 63}, {127, 66}},        // tiles that straddle the diagonal at odd offsets
    AttnCase{4, 2, 128, {0, 1}, {1, 127}, {255, 129}},      // 128-row tiles straddling the diagonal, head_dim 128
    AttnCase{32, 8, 64, {0}, {0}, {1000}}),                 // Llama-3.2-1B heads, 1000 rows
    [](const testing::TestParamInfo<AttnCase>& i) { return i.param.name(); });

class CudaDecode : public testing::TestWithParam<AttnCase> {};
TEST_P(CudaDecode, MatchesCpu) {
  SKIP_WITHOUT_CUDA();
  run_attention(GetParam(), true);
}
AttnCase decode_case(int heads, int kv, int d, std::vector<int> lengths) {
  AttnCase c{heads, kv, d, {}, {}, {}};
  for (size_t b = 0; b < lengths.size(); ++b) {
    c.slots.push_back(int(lengths.size() - 1 - b));
    c.cached.push_back(lengths[b] - 1);
    c.rows.push_back(1);
  }
  return c;
}
// Pseudo-random value in [0, n) for index b (multiplicative hash): spreads sequence lengths.
int spread(int b, int n) { return int((uint64_t(b) * 2654435761u) % uint64_t(n)); }
// `batch` sequences of lengths spread over [1, max_len].
AttnCase spread_case(int heads, int kv, int d, int batch, int max_len) {
  std::vector<int> lengths(batch);
  for (int b = 0; b < batch; ++b) lengths[b] = 1 + spread(b, max_len);
  return decode_case(heads, kv, d, lengths);
}
// `batch` sequences of lengths spread over [min_len, max_len].
AttnCase uniform_case(int heads, int kv, int d, int batch, int min_len, int max_len) {
  std::vector<int> lengths(batch);
  for (int b = 0; b < batch; ++b) lengths[b] = min_len + spread(b, max_len - min_len + 1);
  return decode_case(heads, kv, d, lengths);
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaDecode, testing::Values(
    decode_case(4, 4, 64, {1}),
    decode_case(9, 3, 64, {17, 1, 1000}),
    decode_case(32, 8, 128, {4097, 256, 257, 1}),
    decode_case(8, 1, 80, {1000}),
    decode_case(12, 4, 96, {33}),
    decode_case(4, 2, 32, {1, 130, 999}),
    decode_case(6, 2, 128, {1, 2, 3, 17, 64, 65, 100, 255, 256, 300, 511, 512, 513, 1000, 2000, 3000, 4000, 4097, 8200}),
    decode_case(16, 1, 64, {300, 5, 1}),   // GQA 16: all 16 rows of the tensor-core tile are heads
    decode_case(24, 2, 128, {700}),        // GQA 12
    decode_case(8, 1, 128, {33000, 20000}),  // GQA 8, 32 and 25 chunks: the post-loop fold takes the heads in two batches
    spread_case(32, 8, 128, 80, 3000),     // more chunks than resident blocks: blocks take several items
    spread_case(9, 3, 64, 300, 200),       // past the 128 sequences read up front; blocks hold several rows
    uniform_case(32, 8, 128, 40, 900, 1000),  // 320 rows of similar length: one block per row when told
    uniform_case(9, 3, 64, 64, 1500, 2048),
    uniform_case(24, 2, 128, 80, 600, 700),   // GQA 12
    uniform_case(9, 3, 64, 8, 1500, 2048),    // 24 rows: pieces of rows when told
    uniform_case(24, 2, 128, 10, 2500, 3000)),
    [](const testing::TestParamInfo<AttnCase>& i) { return std::to_string(i.index) + "_" + i.param.name().substr(0, 40); });

TEST(CudaOps, DecodeRejectsBadChunking) {
  // The arguments are checked before anything touches the device, so this runs without a GPU too.
  const KVLayout layout{1, 1, 1, 0, 1};
  auto call = [&](cuda::DecodeSplits plan) {
    cuda::attention_decode(nullptr, 64, nullptr, nullptr, layout, nullptr, nullptr, 1, 4, 4, 64, 0.125f, nullptr,
                           nullptr, 256, nullptr, plan);
  };
  EXPECT_THROW(call({32, 32, 32}), std::invalid_argument);                      // min_chunk < 64
  EXPECT_THROW(call({256, 0, 32}), std::invalid_argument);                      // no splits
  EXPECT_THROW(call({256, cuda::kDecodeMaxSplits + 1, 32}), std::invalid_argument);
  EXPECT_THROW(call({256, 32, -1}), std::invalid_argument);                     // growth_keys < 0
  EXPECT_THROW(call({256, 32, (1 << 20) + 1}), std::invalid_argument);          // the bit search would overflow
  EXPECT_THROW(cuda::attention_decode(nullptr, 64, nullptr, nullptr, layout, nullptr, nullptr, 1, 4, 4, 64, 0.125f,
                                      nullptr, nullptr, 256, nullptr, {}, {-1, 0}),
               std::invalid_argument);  // a negative lengths hint
}

TEST(CudaOps, DecodeLaunchRule) {
  // Host code: runs without a GPU. With the lengths unknown, always the persistent grid.
  const int sms = 132;
  auto launch = [&](int batch, int kv, int d, int max_keys, int64_t total) {
    return cuda::decode_launch(batch, 4 * kv, kv, d, sms, {}, {max_keys, total});  // GQA 4
  };
  auto pieces = [&](int batch, int kv, int d, int max_keys) {  // (pieces per row, chunks per piece)
    const auto l = launch(batch, kv, d, max_keys, int64_t(batch) * max_keys);
    return std::make_pair(l.row_pieces, l.piece_chunks);
  };
  auto stages = [&](int batch, int kv, int d, int max_keys) {
    return launch(batch, kv, d, max_keys, int64_t(batch) * max_keys).stages;
  };
  auto deep = [&](int batch, int kv, int max_keys) { return stages(batch, kv, 128, max_keys) == 4; };
  using P = std::pair<int, int>;
  // whole rows: at least one row per SM; beyond 4K keys only at head_dim > 64 and 1.2 rows per SM
  EXPECT_EQ(pieces(64, 8, 128, 1024), P(1, 4));
  EXPECT_EQ(pieces(17, 8, 128, 4096), P(1, 11));     // 136 rows
  EXPECT_EQ(pieces(64, 8, 128, 8192), P(1, 16));
  EXPECT_EQ(pieces(64, 8, 128, 32768), P(1, 32));
  EXPECT_EQ(pieces(20, 8, 128, 8192), P(1, 16));     // 160 rows: 1.21 per SM
  EXPECT_EQ(pieces(17, 8, 128, 8192), P(0, 0));      // 136 rows: the persistent grid
  EXPECT_EQ(pieces(64, 3, 64, 2048), P(1, 8));       // 192 rows
  EXPECT_EQ(pieces(64, 3, 64, 4096), P(1, 11));
  EXPECT_EQ(pieces(64, 3, 64, 8192), P(0, 0));       // head_dim 64, 8K: the persistent grid
  // pieces: about one block per SM (head_dim 128: 16 chunks of 512 at 8K; 4 of 256 at 1K)
  EXPECT_EQ(pieces(8, 8, 128, 8192), P(2, 8));
  EXPECT_EQ(pieces(8, 8, 128, 1024), P(2, 2));
  EXPECT_EQ(pieces(16, 8, 128, 8192), P(1, 16));     // 128 rows: whole rows, even at 8K
  EXPECT_EQ(pieces(16, 3, 64, 2048), P(8, 1));       // head_dim 64: about three blocks per SM
  EXPECT_EQ(pieces(1, 8, 128, 32768), P(0, 0));      // 8 rows: too few to cut into pieces
  // the mean at least half the longest
  EXPECT_EQ(launch(64, 8, 128, 4096, 64 * 2048).row_pieces, 1);
  EXPECT_EQ(launch(64, 8, 128, 4096, 64 * 2048 - 1).row_pieces, 0);
  EXPECT_EQ(launch(64, 8, 128, 0, 0).row_pieces, 0);  // lengths unknown
  // the deep pipeline: no more chunks than SMs
  EXPECT_TRUE(deep(1, 8, 1024));                  // 8 rows x 4 chunks
  EXPECT_TRUE(deep(1, 8, 8192));                  // 8 x 16 = 128
  EXPECT_FALSE(deep(1, 8, 32768));                // 8 x 32
  EXPECT_FALSE(deep(8, 8, 1024));                 // 64 x 4
  EXPECT_FALSE(deep(1, 8, 0));                    // lengths unknown
  // 2 stages with a row per SM at head_dim > 64, whole rows or not; 3 otherwise
  EXPECT_EQ(stages(64, 8, 128, 1024), 2);
  EXPECT_EQ(stages(64, 8, 128, 8192), 2);
  EXPECT_EQ(stages(17, 8, 128, 8192), 2);         // the persistent grid
  EXPECT_EQ(stages(64, 8, 96, 1024), 2);
  EXPECT_EQ(stages(64, 3, 64, 2048), 3);
  EXPECT_EQ(stages(8, 8, 128, 8192), 3);          // pieces
  EXPECT_EQ(stages(64, 8, 128, 0), 3);            // lengths unknown
  EXPECT_EQ(cuda::decode_launch(80, 32, 2, 128, sms, {}, {1024, 80 * 1024}).stages, 3);  // GQA 16: one block per SM
  // no more chunks than SMs: a block per chunk
  EXPECT_EQ(pieces(1, 8, 128, 1024), P(4, 1));
  EXPECT_EQ(pieces(1, 8, 128, 8192), P(16, 1));
  EXPECT_EQ(pieces(4, 8, 128, 1024), P(4, 1));       // 128 chunks
  EXPECT_EQ(pieces(1, 8, 128, 200), P(1, 1));        // one chunk per row
}

TEST(CudaOps, DecodeSplitsOfAModel) {
  // Host code. The chunk count shows in the launch: a whole-row block holds all of its row's chunks,
  // a block per chunk where there are no more chunks than SMs.
  const int sms = 132;
  using P = std::pair<int, int>;
  auto pieces = [&](int batch, int heads, int kv, int d, int max_keys) {
    const auto l = cuda::decode_launch(batch, heads, kv, d, sms, cuda::decode_splits(kv),
                                       {max_keys, int64_t(batch) * max_keys});
    return P(l.row_pieces, l.piece_chunks);
  };
  // 8 KV heads and more: the defaults
  const cuda::DecodeSplits def{}, eight = cuda::decode_splits(8), many = cuda::decode_splits(32);
  for (const auto& p : {eight, many})
    EXPECT_TRUE(p.min_chunk == def.min_chunk && p.max_splits == def.max_splits &&
                p.growth_keys == def.growth_keys && p.min_splits == def.min_splits);
  EXPECT_EQ(pieces(64, 32, 8, 128, 1024), P(1, 4));   // 4 chunks of 256
  EXPECT_EQ(pieces(64, 32, 8, 64, 2048), P(1, 8));    // 8 of 256
  // fewer: 128-key chunks up to 2K keys, at least 16 up to 8K, then the square root
  EXPECT_EQ(pieces(64, 9, 3, 64, 512), P(1, 4));      // 4 of 128
  EXPECT_EQ(pieces(64, 9, 3, 64, 2048), P(1, 16));    // 16 of 128
  EXPECT_EQ(pieces(64, 9, 3, 64, 4096), P(1, 16));    // 16 of 256 (the defaults: 11 of 384)
  EXPECT_EQ(pieces(1, 9, 3, 64, 8192), P(16, 1));     // 16 of 512, as the defaults
  EXPECT_EQ(pieces(1, 9, 3, 64, 32768), P(32, 1));    // 32 of 1024, as the defaults
  EXPECT_EQ(pieces(66, 12, 2, 128, 1000), P(1, 8));   // 132 rows: 7 of 128 and one of 104
  EXPECT_EQ(pieces(1, 4, 1, 64, 100), P(1, 1));       // one chunk
}

int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 0;
  return sms;
}

// A decode batch on the device for the bit-identity tests: one slot per sequence, random K/V and
// queries (16 heads over 4 KV heads, head_dim 128), a workspace zeroed once.
struct DecodeBatch {
  static constexpr int kHeads = 16, kKv = 4, kD = 128;
  static constexpr size_t kRow = size_t(kHeads) * kD;
  DecodeBatch(std::vector<int32_t> slots, std::vector<int32_t> positions, int ctx, uint32_t seed)
      : batch(int(slots.size())),
        layout(KVCache::layout(KVCacheConfig{1, ctx, kKv, kD, batch})),
        k(pool(), ptr(to_half(random_floats(pool(), seed)))),
        v(pool(), ptr(to_half(random_floats(pool(), seed + 1)))),
        q(batch * kRow, ptr(to_half(random_floats(batch * kRow, seed + 2)))),
        d_tables(size_t(batch) * layout.table_stride, ptr(own_blocks(slots, layout))),
        d_pos(batch, &positions),
        part(cuda::decode_workspace_bytes(batch, kHeads, kD) / 4,
             ptr(std::vector<float>(cuda::decode_workspace_bytes(batch, kHeads, kD) / 4))) {}
  // Decodes sequences [first, first + n); their outputs, [n][kRow].
  std::vector<half_t> run(int first, int n, cuda::DecodeLengths hint = {}) {
    Guarded<half_t> out(size_t(n) * kRow);
    cuda::attention_decode(q.get() + first * kRow, kRow, k.get(), v.get(), layout,
                           d_tables.get() + size_t(first) * layout.table_stride,
                           d_pos.get() + first, n, kHeads, kKv, kD, 0.088f, part.get(), out.get(), kRow, nullptr,
                           {}, hint);
    sync();
    EXPECT_TRUE(out.guards_intact());
    return out.read();
  }
  template <typename T>
  static const std::vector<T>* ptr(const std::vector<T>& v) { return &v; }  // alive for the full expression
  size_t pool() const { return size_t(layout.block_stride) * layout.table_stride * batch; }
  static std::vector<int32_t> own_blocks(const std::vector<int32_t>& slots, const KVLayout& kv) {
    std::vector<int32_t> t;
    for (int32_t s : slots)
      for (int i = 0; i < kv.table_stride; ++i) t.push_back(s * kv.table_stride + i);
    return t;
  }
  int batch;
  KVLayout layout;
  Guarded<half_t> k, v, q;
  Guarded<int32_t> d_tables, d_pos;
  Guarded<float> part;
};

TEST(CudaOps, DecodeRowPiecesGiveTheSameBits) {
  SKIP_WITHOUT_CUDA();
  // Told the lengths, the launch is one block per row or per piece of a row (asserted first), whole
  // rows with a 2-stage pipeline; untold, the persistent grid with 3. Every output bit must agree.
  const int sms = sm_count(), heads = DecodeBatch::kHeads, kv = DecodeBatch::kKv, d = DecodeBatch::kD;
  auto check = [&](int batch, int lo, int hi, bool whole_rows) {
    SCOPED_TRACE("batch " + std::to_string(batch) + " lengths " + std::to_string(lo) + ".." + std::to_string(hi));
    std::vector<int32_t> slots(batch), pos(batch);
    cuda::DecodeLengths lengths;
    for (int b = 0; b < batch; ++b) {
      slots[b] = (b * 7) % batch, pos[b] = lo - 1 + spread(b, hi - lo + 1);
      lengths.max_keys = std::max(lengths.max_keys, pos[b] + 1);
      lengths.total_keys += pos[b] + 1;
    }
    const auto l = cuda::decode_launch(batch, heads, kv, d, sms, {}, lengths);
    if (whole_rows) {
      ASSERT_EQ(l.row_pieces, 1);
      ASSERT_EQ(l.stages, 2);  // against the persistent grid's 3
    } else {
      ASSERT_GT(l.row_pieces, 1);
    }
    ASSERT_EQ(cuda::decode_launch(batch, heads, kv, d, sms, {}, {}).row_pieces, 0);
    DecodeBatch db(slots, pos, hi, 23);
    const auto persistent = db.run(0, batch), pieces = db.run(0, batch, lengths);
    ASSERT_EQ(pieces.size(), persistent.size());
    EXPECT_TRUE(test::rows_equal(pieces, persistent));
    // A hint of two thirds of the lengths: the pieces are cut for shorter rows, and the last piece
    // of each row must take the chunks past them.
    const cuda::DecodeLengths short_hint{lengths.max_keys * 2 / 3, lengths.total_keys * 2 / 3};
    ASSERT_GT(cuda::decode_launch(batch, heads, kv, d, sms, {}, short_hint).row_pieces, 0);
    EXPECT_TRUE(test::rows_equal(db.run(0, batch, short_hint), persistent));
  };
  check(sms / kv + 5, 700, 1024, true);
  check(8, 2500, 3000, false);  // 32 rows of 10 chunks: on 132 SMs, 4 pieces of 3, 3, 3 and 1 chunks
}

TEST(CudaOps, DecodeDoesNotDependOnBatchComposition) {
  SKIP_WITHOUT_CUDA();
  // One sequence (length 777, 4 chunks) alone and inside batches of 5 and of 120: bit-identical
  // output. Alone, each chunk gets a block of its own and the block that completes the row folds the
  // states read back from the workspace; in the batch of 120 blocks take several items, so the
  // sequence's chunks are folded in registers or across blocks: the two fold paths must agree.
  const int ctx = 1024, big = 120, at = 37;
  std::vector<int32_t> slots(big), pos(big);
  for (int b = 0; b < big; ++b) slots[b] = (b * 7) % big, pos[b] = spread(b, ctx);
  pos[at] = 776;
  DecodeBatch db(slots, pos, ctx, 20);
  const size_t row = DecodeBatch::kRow;
  auto seq_at = [&](int first, int n, cuda::DecodeLengths hint = {}) {
    const auto all = db.run(first, n, hint);
    const size_t k = size_t(at - first) * row;
    return std::vector<half_t>(all.begin() + k, all.begin() + k + row);
  };
  const auto alone = seq_at(at, 1);
  EXPECT_TRUE(test::rows_equal(seq_at(at - 2, 5), alone));
  EXPECT_TRUE(test::rows_equal(seq_at(0, big), alone));
  // Told its length, the lone sequence (4 KV heads x 4 chunks, fewer than the SMs) runs a block per
  // chunk with the deep pipeline. Told a shorter length (3 chunks), the row's last block takes 2
  // chunks; told a longer one (8 chunks), half of the row's blocks have none.
  auto launch = [&](cuda::DecodeLengths hint) {
    return cuda::decode_launch(1, DecodeBatch::kHeads, DecodeBatch::kKv, DecodeBatch::kD, sm_count(), {}, hint);
  };
  const cuda::DecodeLengths told{777, 777}, short_hint{600, 600}, long_hint{2000, 2000};
  ASSERT_EQ(launch(told).stages, 4);
  ASSERT_EQ(launch(told).row_pieces, 4);
  ASSERT_EQ(launch(told).piece_chunks, 1);
  ASSERT_EQ(launch(short_hint).row_pieces, 3);
  ASSERT_EQ(launch(long_hint).row_pieces, 8);
  EXPECT_TRUE(test::rows_equal(seq_at(at, 1, told), alone));
  EXPECT_TRUE(test::rows_equal(seq_at(at, 1, short_hint), alone));
  EXPECT_TRUE(test::rows_equal(seq_at(at, 1, long_hint), alone));
  EXPECT_TRUE(test::rows_equal(seq_at(at - 2, 5, {1024, 5 * 1024}), alone));  // 5 x 4 x 4 blocks
}

TEST(CudaOps, SamplingMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const int V = 5000, B = 10, ctx = 16;
  // Well-separated logits so the CPU's double sums and the GPU's float sums pick the same token.
  std::vector<float> logits(size_t(B) * V);
  std::mt19937 rng(30);
  for (auto& v : logits) v = std::round(std::normal_distribution<float>(0.0f, 3.0f)(rng) * 4.0f) / 4.0f;
  // sequence b: one token at position 2 + b of slot B - 1 - b (a history of 3 + b ids)
  std::vector<int32_t> history(size_t(B) * ctx), slots(B), cached(B);
  for (size_t i = 0; i < history.size(); ++i) history[i] = (i * 131) % V;
  for (size_t i = 0; i < history.size(); ++i)  // generated ids repeat: frequency counts up to 3
    if (i % ctx >= 8) history[i] = history[i - 2 - (i % 3)];
  for (int b = 0; b < B; ++b) slots[b] = B - 1 - b, cached[b] = 2 + b;
  std::vector<SamplingArgs> cases = {
      {0.0f, 0, 1.0f, 0.0f, 1.0f, 1, 0},      // greedy
      {0.0f, 0, 1.0f, 0.0f, 1.3f, 1, 0},      // greedy with repetition penalty
      {1.0f, 0, 1.0f, 0.0f, 1.0f, 7, 3},      // plain sampling
      {0.7f, 40, 1.0f, 0.0f, 1.0f, 8, 0},     // top-k
      {1.2f, 0, 0.9f, 0.0f, 1.1f, 9, 5},      // top-p + penalty
      {0.9f, 50, 0.8f, 0.05f, 1.0f, 10, 1},   // everything
      {0.0f, 0, 1.0f, 0.0f, 1.0f, 1, 0, 0, 3},   // greedy with logit biases
      {0.8f, 30, 1.0f, 0.0f, 1.2f, 11, 2, 3, 2},  // sampling with a penalty and biases (one bans)
      {0.0f, 0, 1.0f, 0.0f, 1.0f, 1, 0, 0, 0, 0.6f, 0.9f, 4},      // greedy, presence + frequency
      {1.1f, 0, 0.95f, 0.0f, 1.1f, 12, 4, 0, 0, -0.5f, 1.7f, 2}};  // sampling, all three penalties
  // row 6: ids 17, 4000 and 3 raised, row 7: 17 raised, 2500 banned
  const std::vector<LogitBias> biases = {{17, 9.0f}, {4000, 12.5f}, {3, -2.0f}, {17, 6.0f},
                                         {2500, -std::numeric_limits<float>::infinity()}};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::vector<SamplingArgs> args(cases);
    for (auto& a : args) a.seed += seed * 1000;
    test::TestStep step({}, std::vector<int>(B, 1), cached, slots, {}, args, test::TestStep::kOneBlockPerSlot, {},
                        biases);
    std::vector<float> cpu_logits(logits);
    std::vector<int32_t> want(B);
    cpu::sample(cpu_logits.data(), B, V, step.host, history.data(), ctx, want.data());
    Guarded<float> d_logits(logits.size(), &logits);
    Guarded<int32_t> d_hist(history.size(), &history), d_out(B);
    std::unique_ptr<Guarded<uint8_t>> d_step;
    const StepArrays dev = step.device(d_step);
    cuda::sample(d_logits.get(), B, V, dev, d_hist.get(), ctx, nullptr, 0, d_out.get(), nullptr);
    sync();
    EXPECT_EQ(d_out.read(), want) << "seed " << seed;
    EXPECT_TRUE(d_out.guards_intact() && d_logits.guards_intact());
    // The skinny LM head's per-tile maxima (16 logits each): greedy rows without a penalty fold
    // those; every other row ignores them.
    const int tiles = (V + 15) / 16;
    std::vector<int2> maxima(size_t(B) * tiles);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < tiles; ++t) {
        int best = t * 16;
        for (int n = t * 16; n < std::min(V, t * 16 + 16); ++n)
          if (logits[size_t(b) * V + n] > logits[size_t(b) * V + best]) best = n;
        maxima[size_t(b) * tiles + t] = int2{*reinterpret_cast<const int*>(&logits[size_t(b) * V + best]), best};
      }
    Guarded<float> d_logits2(logits.size(), &logits);
    Guarded<int2> d_max(maxima.size(), &maxima);
    cuda::sample(d_logits2.get(), B, V, dev, d_hist.get(), ctx, d_max.get(), tiles, d_out.get(), nullptr);
    sync();
    EXPECT_EQ(d_out.read(), want) << "seed " << seed << ", from the per-tile maxima";
  }
}
#endif  // KVINFER_WITH_CUDA

// CPU-only checks of the sampler: greedy, top-k/top-p/min-p support, frequencies near the
// probabilities, and a planted bug (a wrong threshold) that the frequency check catches.
TEST(Sampling, CpuSupportAndFrequencies) {
  const int V = 8;
  std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, 3.0f, 2.9f, -3.0f};
  auto draw = [&](SamplingArgs a, int n) {
    std::vector<int> counts(V);
    for (int i = 0; i < n; ++i) {
      std::vector<float> x(logits);
      int32_t tok;
      a.step = i;
      test::TestStep step({}, {1}, {0}, {0}, {}, {a});
      cpu::sample(x.data(), 1, V, step.host, nullptr, 0, &tok);
      counts[tok]++;
    }
    return counts;
  };
  auto greedy = draw({0.0f, 0, 1.0f, 0.0f, 1.0f, 1, 0}, 10);
  EXPECT_EQ(greedy[5], 10);
  auto topk = draw({1.0f, 2, 1.0f, 0.0f, 1.0f, 1, 0}, 4000);
  EXPECT_EQ(topk[5] + topk[6], 4000);  // only the two largest
  // softmax over {3.0, 2.9}: p(5) = 1 / (1 + e^-0.1) = 0.525
  EXPECT_NEAR(topk[5] / 4000.0, 0.525, 0.03);
  auto topp = draw({1.0f, 0, 0.5f, 0.0f, 1.0f, 2, 0}, 2000);
  // p sorted: 3.0 (0.38), 2.9 (0.35): the first alone is < 0.5, so both are kept
  EXPECT_EQ(topp[5] + topp[6], 2000);
  auto minp = draw({1.0f, 0, 1.0f, 0.3f, 1.0f, 3, 0}, 2000);  // keeps p >= 0.3 * max: ids 0, 5, 6
  EXPECT_EQ(minp[0] + minp[5] + minp[6], 2000);
  EXPECT_GT(minp[0], 0);
  // planted bug: frequencies of plain sampling must not match a distribution at temperature 2
  auto plain = draw({1.0f, 0, 1.0f, 0.0f, 1.0f, 4, 0}, 8000);
  double z = 0;
  for (float l : logits) z += std::exp(l);
  double chi = 0, chi_wrong = 0, z2 = 0;
  for (float l : logits) z2 += std::exp(l / 2);
  for (int i = 0; i < V; ++i) {
    const double e = 8000 * std::exp(logits[i]) / z, e2 = 8000 * std::exp(logits[i] / 2) / z2;
    chi += (plain[i] - e) * (plain[i] - e) / e;
    chi_wrong += (plain[i] - e2) * (plain[i] - e2) / e2;
  }
  EXPECT_LT(chi, 30.0);         // 7 degrees of freedom: p < 1e-4 beyond 30
  EXPECT_GT(chi_wrong, 300.0);  // a wrong temperature is caught
}

// Presence and frequency penalties read only the generated part of the history (from
// output_start): x -= frequency * count, then presence once per id.
TEST(Sampling, PresenceAndFrequencyPenalties) {
  std::vector<float> x = {2.0f, -1.0f, 1.0f, 0.5f};
  std::vector<int32_t> history = {2, 0, 0, 1, 0};  // the prompt is {2}; generated: 0, 0, 1, 0
  int32_t tok;
  SamplingArgs a{0.0f, 0, 1.0f, 0.0f, 1.0f, 0, 0, 0, 0, 0.25f, 0.5f, 1};
  test::TestStep step({}, {1}, {4}, {0}, {}, {a});  // position 4: a history of 5 ids
  cpu::sample(x.data(), 1, 4, step.host, history.data(), 5, &tok);
  EXPECT_FLOAT_EQ(x[0], 2.0f - 3 * 0.5f - 0.25f);  // three times, present
  EXPECT_FLOAT_EQ(x[1], -1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(x[2], 1.0f);  // only in the prompt: untouched
  EXPECT_FLOAT_EQ(x[3], 0.5f);
  EXPECT_EQ(tok, 2);
}

TEST(Sampling, RepetitionPenaltyOncePerId) {
  std::vector<float> x = {2.0f, -1.0f, 1.0f};
  std::vector<int32_t> history = {0, 0, 1, 0};
  int32_t tok;
  SamplingArgs a{0.0f, 0, 1.0f, 0.0f, 2.0f, 0, 0};
  test::TestStep step({}, {1}, {3}, {0}, {}, {a});  // position 3: a history of 4 ids
  cpu::sample(x.data(), 1, 3, step.host, history.data(), 4, &tok);
  EXPECT_FLOAT_EQ(x[0], 1.0f);   // 2 / 2, once despite three occurrences
  EXPECT_FLOAT_EQ(x[1], -2.0f);  // -1 * 2
  EXPECT_FLOAT_EQ(x[2], 1.0f);   // untouched
  EXPECT_EQ(tok, 0);             // ties go to the lowest id
}

}  // namespace
}  // namespace kvinfer
