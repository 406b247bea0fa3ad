// CUDA rope_kv_write against the CPU reference (cpu::rope, then cpu::kv_write): q rows rotated in
// place, rotated k and v in the cache at each token's position, through scrambled block tables. Without RoPE the cache
// must equal the reference bit for bit; with it within the fp16 bound (sincosf against std::sin).
// Sentinel guard bands before and after the cache blocks must stay untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/device_memory.h"
#include "parity.h"
#include "runtime/kv_cache.h"
#include "test_util.h"

#if KVINFER_WITH_CUDA
#include "backend/cuda/kv_write.h"
#endif

namespace kvinfer {
namespace {

constexpr half_t kSentinel = 0x7bcd;  // a finite value no random input produces exactly by chance
constexpr size_t kGuard = 1024;       // halves before and after the layer blocks

struct WriteCase {
  int max_batch, max_context, heads, kv_heads, head_dim;
  std::vector<int> slots, tokens, lengths;  // per sequence: slot, new tokens; per slot: length
  const char* rope;  // "none" (learned positions: no rotation), "default", "llama3"
  std::string name() const {
    return "b" + std::to_string(slots.size()) + "_ctx" + std::to_string(max_context) + "_h" +
           std::to_string(heads) + "_" + std::to_string(kv_heads) + "_d" + std::to_string(head_dim) + "_" + rope;
  }
};

class KVWriteCuda : public testing::TestWithParam<WriteCase> {};

TEST_P(KVWriteCuda, MatchesCpuReferenceAndKeepsGuards) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
#if KVINFER_WITH_CUDA
  const WriteCase& c = GetParam();
  // a paged cache of 8-token blocks whose tables scramble the blocks of the sequences
  KVCacheConfig cfg{1, c.max_context, c.kv_heads, c.head_dim, c.max_batch, 8};
  const KVLayout layout = KVCache::layout(cfg);
  const size_t block = static_cast<size_t>(layout.block_stride) * cfg.pool_blocks();
  const int batch = static_cast<int>(c.slots.size());
  for (int b = 0; b < batch; ++b)  // the case itself must respect capacity (the runner checks it)
    ASSERT_LE(c.lengths[c.slots[b]] + c.tokens[b], c.max_context) << "sequence " << b;
  std::vector<int32_t> cached(batch);
  for (int b = 0; b < batch; ++b) cached[b] = c.lengths[c.slots[b]];
  const std::vector<int32_t> slots(c.slots.begin(), c.slots.end());
  test::TestStep step({}, c.tokens, cached, slots, {}, {}, layout,
                      test::scrambled_tables(slots, layout, test::block_shuffle(cfg.pool_blocks(), 5)));
  const int T = step.num_tokens(), d = c.head_dim, q_dim = c.heads * d, kv_dim = c.kv_heads * d;
  const int stride = q_dim + 2 * kv_dim;
  const auto qkv16 = test::random_halves(size_t(T) * stride, 3);
  const bool rope = std::string(c.rope) != "none";
  std::vector<float> inv(d / 2);
  RopeScaling scaling;
  scaling.type = std::string(c.rope) == "llama3" ? "llama3" : "none";
  scaling.factor = 8.0f, scaling.original_max_positions = 64;
  cpu::rope_inv_freq(inv.data(), d, 500000.0f, scaling);

  // Host reference: rotate (fp32, then fp16 as the GPU stores it), then write [guard][K][V][guard].
  auto qkv = test::to_float(qkv16);
  if (rope) cpu::rope(qkv.data(), qkv.data() + q_dim, stride, step.host.positions, T, c.heads, c.kv_heads, d, inv.data());
  const auto rotated16 = test::to_half(qkv);
  std::vector<half_t> kv16(size_t(T) * 2 * kv_dim);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < 2 * kv_dim; ++i) kv16[size_t(t) * 2 * kv_dim + i] = rotated16[size_t(t) * stride + q_dim + i];
  std::vector<half_t> ref(2 * block + 2 * kGuard, kSentinel);
  cpu::kv_write(ref.data() + kGuard, ref.data() + kGuard + block, layout, c.kv_heads, d, kv16.data(),
                kv16.data() + kv_dim, 2 * kv_dim, step.host, T);

  test::Guarded<half_t> d_qkv(qkv16.size(), &qkv16), d_cache(ref.size(), nullptr);
  test::Guarded<float> d_inv(inv.size(), &inv);
  const std::vector<half_t> init(ref.size(), kSentinel);
  copy_bytes(d_cache.get(), Device::cuda(0), init.data(), Device::cpu(), init.size() * 2);
  std::unique_ptr<test::Guarded<uint8_t>> d_step;
  half_t* base = d_cache.get() + kGuard;
  cuda::rope_kv_write(d_qkv.get(), stride, c.heads, c.kv_heads, d, rope ? d_inv.get() : nullptr, base, base + block,
                      layout, step.device(d_step), T, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got = d_cache.read();
  for (size_t i = 0; i < kGuard; ++i) {
    ASSERT_EQ(got[i], kSentinel) << "guard before, element " << i;
    ASSERT_EQ(got[got.size() - 1 - i], kSentinel) << "guard after, element " << i;
  }
  EXPECT_TRUE(d_cache.guards_intact() && d_qkv.guards_intact());
  size_t written = std::count_if(ref.begin(), ref.end(), [](half_t h) { return h != kSentinel; });
  EXPECT_EQ(written, size_t(T) * 2 * kv_dim);  // the reference wrote every new row exactly once
  const auto q_got = d_qkv.read();
  std::vector<float> q_ref(size_t(T) * q_dim), q_dev(size_t(T) * q_dim);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < q_dim; ++i)
      q_ref[size_t(t) * q_dim + i] = qkv[size_t(t) * stride + i], q_dev[size_t(t) * q_dim + i] = half_to_float(q_got[size_t(t) * stride + i]);
  if (!rope) {
    EXPECT_TRUE(test::rows_equal(ref, got));
    EXPECT_TRUE(test::rows_equal(qkv16, q_got));  // q untouched
  } else {
    std::vector<float> ref_f, got_f;  // the written cache rows only
    for (size_t i = 0; i < ref.size(); ++i)
      if (ref[i] != kSentinel) ref_f.push_back(half_to_float(ref[i])), got_f.push_back(half_to_float(got[i]));
    EXPECT_TRUE(test::nmse_below(got_f, ref_f, 1e-5));
    EXPECT_TRUE(test::nmse_below(q_dev, q_ref, 1e-5));
    // a planted bug, no rotation, must not pass: the unrotated q as the reference
    std::vector<float> unrotated(size_t(T) * q_dim);
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < q_dim; ++i) unrotated[size_t(t) * q_dim + i] = half_to_float(qkv16[size_t(t) * stride + i]);
    EXPECT_FALSE(test::nmse_below(q_dev, unrotated, 1e-5));
  }
#endif
}

std::vector<WriteCase> cases() {
  std::vector<WriteCase> out;
  // decode: batch 19, one token each, slots of different lengths, head_dim 128
  WriteCase decode{19, 64, 32, 8, 128, {}, {}, {}, "default"};
  for (int b = 0; b < 19; ++b) {
    decode.slots.push_back(18 - b);
    decode.tokens.push_back(1);
    decode.lengths.push_back((b * 7) % 63);
  }
  out.push_back(decode);
  out.push_back({3, 1100, 6, 2, 64, {2, 0, 1}, {17, 1000, 1}, {5, 0, 83}, "llama3"});  // prefill chunks
  out.push_back({1, 4097, 3, 3, 80, {0}, {4097}, {0}, "none"});                         // whole context
  out.push_back({2, 20, 2, 1, 4, {1, 0}, {4, 19}, {1, 16}, "default"});                 // tiny heads, full
  out.push_back({2, 40, 4, 2, 32, {0, 1}, {3, 20}, {10, 2}, "none"});
  // head_dim 24 (like 4 above): pair groups not a multiple of 8, so the one-pair-a-thread path
  // (head_dim 32, 64, 80 and 128 take 16-byte accesses)
  out.push_back({2, 30, 4, 2, 24, {1, 0}, {5, 9}, {3, 0}, "default"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, KVWriteCuda, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<WriteCase>& i) { return i.param.name(); });

}  // namespace
}  // namespace kvinfer
