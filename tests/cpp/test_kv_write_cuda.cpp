// CUDA kv_write against the CPU reference: same inputs, whole buffers compared bit for bit,
// including sentinel guard bands before and after the cache block that must stay untouched.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "core/device_memory.h"
#include "runtime/kv_cache.h"
#include "backend/cpu/cpu_ops.h"
#include "parity.h"
#include "test_util.h"

#if KVINFER_WITH_CUDA
#include "backend/cuda/kv_write.h"
#endif

namespace kvinfer {
namespace {

constexpr half_t kSentinel = 0x7bcd;  // a finite value no random input produces exactly by chance
constexpr size_t kGuard = 1024;       // halves before and after the layer blocks

struct AppendCase {
  int max_batch, max_context, kv_heads, head_dim;
  std::vector<int> slots, tokens, lengths;  // per sequence: slot, new tokens; per slot: length
  std::string name() const {
    return "b" + std::to_string(slots.size()) + "_ctx" + std::to_string(max_context) + "_h" +
           std::to_string(kv_heads) + "_d" + std::to_string(head_dim);
  }
};

class KVWriteCuda : public testing::TestWithParam<AppendCase> {};

TEST_P(KVWriteCuda, MatchesCpuReferenceAndKeepsGuards) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
#if KVINFER_WITH_CUDA
  const AppendCase& c = GetParam();
  KVCacheConfig cfg{1, c.max_context, c.kv_heads, c.head_dim, c.max_batch};
  const KVLayout layout = KVCache::layout(cfg);
  const size_t block = static_cast<size_t>(layout.slot_stride) * c.max_batch;
  const int batch = static_cast<int>(c.slots.size());
  for (int b = 0; b < batch; ++b)  // the case itself must respect capacity (KVCache checks it)
    ASSERT_LE(c.lengths[c.slots[b]] + c.tokens[b], c.max_context) << "sequence " << b;
  std::vector<int32_t> cached(batch);
  for (int b = 0; b < batch; ++b) cached[b] = c.lengths[c.slots[b]];
  test::TestStep step({}, c.tokens, cached, std::vector<int32_t>(c.slots.begin(), c.slots.end()));
  const int total = step.num_tokens();
  const size_t rows = static_cast<size_t>(total) * c.kv_heads * c.head_dim;
  auto k = test::random_halves(rows, 1), v = test::random_halves(rows, 2);

  // Host reference: [guard][K block][V block][guard].
  std::vector<half_t> ref(2 * block + 2 * kGuard, kSentinel);
  cpu::kv_write(ref.data() + kGuard, ref.data() + kGuard + block, layout, c.kv_heads, c.head_dim,
                k.data(), v.data(), static_cast<int64_t>(c.kv_heads) * c.head_dim, step.host, total);

  auto tracker = std::make_shared<VramTracker>();
  Device gpu = Device::cuda(0);
  DeviceMemory d_cache(ref.size() * 2, gpu, "test", tracker);
  DeviceMemory d_k(rows * 2, gpu, "test", tracker), d_v(rows * 2, gpu, "test", tracker);
  std::vector<half_t> init(ref.size(), kSentinel);
  copy_bytes(d_cache.data(), gpu, init.data(), Device::cpu(), init.size() * 2);
  copy_bytes(d_k.data(), gpu, k.data(), Device::cpu(), rows * 2);
  copy_bytes(d_v.data(), gpu, v.data(), Device::cpu(), rows * 2);
  std::unique_ptr<test::Guarded<uint8_t>> d_step;
  half_t* base = d_cache.as<half_t>() + kGuard;
  cuda::kv_write(base, base + block, layout, c.kv_heads, c.head_dim, d_k.as<half_t>(), d_v.as<half_t>(),
                 static_cast<int64_t>(c.kv_heads) * c.head_dim, step.device(d_step), total, nullptr);
  std::vector<half_t> got(ref.size());
  copy_bytes(got.data(), Device::cpu(), d_cache.data(), gpu, got.size() * 2);
  for (size_t i = 0; i < kGuard; ++i) {
    ASSERT_EQ(got[i], kSentinel) << "guard before, element " << i;
    ASSERT_EQ(got[got.size() - 1 - i], kSentinel) << "guard after, element " << i;
  }
  EXPECT_TRUE(test::rows_equal(ref, got));
  size_t written = std::count_if(ref.begin(), ref.end(), [](half_t h) { return h != kSentinel; });
  EXPECT_EQ(written, 2 * rows);  // the reference itself wrote every new row exactly once
#endif
}

std::vector<AppendCase> cases() {
  std::vector<AppendCase> out;
  // decode: batch 19, one token each, slots of different lengths, head_dim 128
  AppendCase decode{19, 64, 8, 128, {}, {}, {}};
  for (int b = 0; b < 19; ++b) {
    decode.slots.push_back(18 - b);
    decode.tokens.push_back(1);
    decode.lengths.push_back((b * 7) % 63);
  }
  out.push_back(decode);
  out.push_back({3, 1100, 2, 64, {2, 0, 1}, {17, 1000, 1}, {5, 0, 83}});  // prefill chunks
  out.push_back({1, 4097, 3, 80, {0}, {4097}, {0}});                        // whole context
  out.push_back({2, 20, 1, 3, {1, 0}, {4, 19}, {1, 16}});                   // scalar path, full
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, KVWriteCuda, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<AppendCase>& i) { return i.param.name(); });

}  // namespace
}  // namespace kvinfer
