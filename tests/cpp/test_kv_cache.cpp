// KVCache: the size formula, layout, bounds, per-slot lengths, append/commit/read, capacity.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "core/device_memory.h"
#include "core/errors.h"
#include "runtime/kv_cache.h"
#include "test_util.h"

namespace kvinfer {
namespace {

using test::random_halves;
using test::rows_equal;

TEST(KVCacheSize, Formula) {
  KVCacheConfig c{3, 17, 5, 80, 2};  // 17 tokens per slot: 2 blocks of 16
  EXPECT_EQ(KVCache::size_bytes(c), 2u * 3 * (2 * 2) * 16 * 5 * 80 * 2);
  KVCacheConfig one{3, 17, 5, 80, 2, 1};  // blocks of one token: the context exactly
  EXPECT_EQ(KVCache::size_bytes(one), 2u * 3 * 2 * 17 * 5 * 80 * 2);
  KVCacheConfig pool{3, 17, 5, 80, 2, 16, 7};  // a pool of 7 blocks, whatever the slots
  EXPECT_EQ(KVCache::size_bytes(pool), 2u * 3 * 7 * 16 * 5 * 80 * 2);
}

TEST(KVCacheSize, ReferenceFigures) {
  EXPECT_EQ(KVCache::size_bytes({24, 2048, 2, 64, 1}), 25165824u);     // Qwen2.5-0.5B @ 2K
  EXPECT_EQ(KVCache::size_bytes({32, 4096, 8, 128, 1}), 536870912u);   // Llama-3-8B @ 4K
  EXPECT_EQ(KVCache::size_bytes({80, 8192, 8, 128, 1}), 2684354560u);  // Llama-3-70B @ 8K
}

TEST(KVCacheSize, EveryFieldMustBePositive) {
  const char* names[] = {"num_layers", "max_context", "num_kv_heads", "head_dim", "max_batch"};
  for (int field = 0; field < 5; ++field) {
    for (int bad : {0, -1}) {
      KVCacheConfig c{2, 16, 2, 64, 1};
      int* fields[] = {&c.num_layers, &c.max_context, &c.num_kv_heads, &c.head_dim, &c.max_batch};
      *fields[field] = bad;
      try {
        KVCache::size_bytes(c);
        FAIL() << names[field] << "=" << bad << " accepted";
      } catch (const std::invalid_argument& e) {
        std::string expect = std::string(names[field]) + "=" + std::to_string(bad);
        EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
      }
      EXPECT_THROW(KVCache(c, Device::cpu()), std::invalid_argument);
    }
  }
}

class KVCacheTest : public testing::TestWithParam<Device> {
 protected:
  void SetUp() override { KVINFER_SKIP_WITHOUT(GetParam()); }
  Device device() const { return GetParam(); }

  std::vector<half_t> keys(const KVCache& c, int layer, int slot) {
    std::vector<half_t> out(static_cast<size_t>(c.length(slot)) * c.config().num_kv_heads *
                            c.config().head_dim);
    c.read_keys(layer, slot, out.data());
    return out;
  }
  std::vector<half_t> values(const KVCache& c, int layer, int slot) {
    std::vector<half_t> out(static_cast<size_t>(c.length(slot)) * c.config().num_kv_heads *
                            c.config().head_dim);
    c.read_values(layer, slot, out.data());
    return out;
  }
  std::vector<half_t> raw(const KVCache& c) {
    std::vector<half_t> out(c.nbytes() / sizeof(half_t));
    copy_bytes(out.data(), Device::cpu(), c.k_layer(0), c.device(), c.nbytes());
    return out;
  }
};

TEST_P(KVCacheTest, OneAllocationTrackedAsKvCache) {
  auto tracker = std::make_shared<VramTracker>();
  KVCacheConfig cfg{4, 32, 2, 64, 3};
  {
    KVCache cache(cfg, device(), tracker);
    EXPECT_EQ(cache.nbytes(), KVCache::size_bytes(cfg));
    auto r = tracker->report();
    EXPECT_EQ(r["kv_cache"].bytes, KVCache::size_bytes(cfg));
    EXPECT_EQ(r["kv_cache"].allocations, 1u);
    EXPECT_EQ(r.size(), 1u);  // nothing else: lengths stay on the host
  }
  EXPECT_EQ(tracker->total_bytes(), 0u);
}

TEST_P(KVCacheTest, PointerSpacingFollowsTheLayout) {
  KVCacheConfig cfg{3, 10, 2, 8, 4, 4};  // blocks of 4 tokens: 3 per slot, 12 in all
  KVCache cache(cfg, device());
  const int64_t block = 2 * 4 * 8;  // kv_heads * block_size * head_dim
  const int64_t pool = block * 12;
  EXPECT_EQ(cache.num_blocks(), 12);
  EXPECT_EQ(KVCache::size_bytes(cfg), size_t(2 * 3 * pool * 2));
  EXPECT_EQ(cache.v_layer(0) - cache.k_layer(0), pool);
  EXPECT_EQ(cache.k_layer(1) - cache.k_layer(0), 2 * pool);
  EXPECT_EQ(cache.v_layer(2) + pool - cache.k_layer(0), 6 * pool);  // the last V pool ends the allocation
  KVLayout l = cache.layout();
  EXPECT_EQ(l.block_stride, block);
  EXPECT_EQ(l.head_stride, 4 * 8);
  EXPECT_EQ(l.head_dim, 8);
  EXPECT_EQ(l.block_size(), 4);
  EXPECT_EQ(l.table_stride, 3);
  const int32_t table[3] = {7, 2, 5};
  EXPECT_EQ(l.at(table, 1, 6), 2 * block + 1 * 4 * 8 + 2 * 8);  // position 6: row 2 of the second block
  // an explicit pool: 5 blocks hold one slot of 3 blocks of its own
  KVCache small({3, 10, 2, 8, 4, 4, 5}, device());
  EXPECT_EQ(small.nbytes(), size_t(2 * 3 * 5 * block * 2));
  EXPECT_NO_THROW(small.length(0));
  EXPECT_THROW(small.length(1), std::out_of_range);
}

TEST(KVCacheConfigTest, BlockSizeIsAPowerOfTwo) {
  EXPECT_THROW(KVCache::size_bytes({1, 8, 1, 8, 1, 12}), std::invalid_argument);
  EXPECT_THROW(KVCache::size_bytes({1, 8, 1, 8, 1, 0}), std::invalid_argument);
  EXPECT_THROW(KVCache::size_bytes({1, 8, 1, 8, 1, 16, -1}), std::invalid_argument);
  EXPECT_EQ(KVCache::size_bytes({1, 17, 1, 8, 2, 16}), size_t(2 * 2 * 2 * 16 * 8 * 2));  // 17 tokens: 2 blocks
}

TEST_P(KVCacheTest, LayerAndSlotBoundsChecked) {
  KVCache cache({2, 8, 1, 8, 2}, device());
  EXPECT_THROW(cache.k_layer(2), std::out_of_range);
  EXPECT_THROW(cache.v_layer(-1), std::out_of_range);
  EXPECT_THROW(cache.length(2), std::out_of_range);
  EXPECT_THROW(cache.length(-1), std::out_of_range);
  EXPECT_THROW(cache.clear(5), std::out_of_range);
  auto rows = random_halves(8, 1);
  EXPECT_THROW(cache.append(2, 0, rows.data(), rows.data(), 1), std::out_of_range);
  EXPECT_THROW(cache.append(0, 2, rows.data(), rows.data(), 1), std::out_of_range);
  EXPECT_EQ(cache.pending(0), 0);  // a rejected append records nothing
}

TEST_P(KVCacheTest, ZeroInitialised) {
  KVCache cache({2, 16, 3, 16, 2}, device());
  for (half_t h : raw(cache)) ASSERT_EQ(h, 0);
}

TEST_P(KVCacheTest, RoundTripBitExact) {
  KVCacheConfig cfg{2, 64, 3, 80, 1};
  KVCache cache(cfg, device());
  const int tokens = 17;
  const size_t n = static_cast<size_t>(tokens) * 3 * 80;
  std::vector<std::vector<half_t>> k, v;
  for (int l = 0; l < 2; ++l) {
    k.push_back(random_halves(n, 10 + l));
    v.push_back(random_halves(n, 20 + l));
    cache.append(l, 0, k[l].data(), v[l].data(), tokens);
  }
  EXPECT_EQ(cache.length(0), 0);  // nothing readable before the commit
  EXPECT_EQ(cache.pending(0), tokens);
  cache.commit(0, tokens);
  ASSERT_EQ(cache.length(0), tokens);
  for (int l = 0; l < 2; ++l) {
    auto gk = keys(cache, l, 0), gv = values(cache, l, 0);
    ASSERT_EQ(gk.size(), n);  // shape before values
    ASSERT_EQ(gv.size(), n);
    EXPECT_TRUE(rows_equal(k[l], gk)) << "layer " << l;
    EXPECT_TRUE(rows_equal(v[l], gv)) << "layer " << l;
  }
}

// The cache as a host model: what every (layer, slot) should hold.
struct Expected {
  std::map<std::pair<int, int>, std::vector<half_t>> k, v;
};

TEST_P(KVCacheTest, SlotsGrowIndependentlyFromNonZeroPositions) {
  KVCacheConfig cfg{3, 40, 2, 64, 4};
  KVCache cache(cfg, device());
  const size_t row = 2 * 64;
  Expected want;
  uint32_t seed = 100;
  // (slot, tokens) steps: prefill of different lengths, then single-token decode steps.
  std::vector<std::pair<int, int>> steps = {{0, 5}, {2, 13}, {3, 1}, {0, 1}, {2, 1}, {0, 7},
                                            {3, 2}, {1, 3}, {0, 1}};
  for (auto [slot, tokens] : steps) {
    for (int l = 0; l < 3; ++l) {
      auto k = random_halves(row * tokens, seed++), v = random_halves(row * tokens, seed++);
      cache.append(l, slot, k.data(), v.data(), tokens);
      auto& wk = want.k[{l, slot}];
      auto& wv = want.v[{l, slot}];
      wk.insert(wk.end(), k.begin(), k.end());
      wv.insert(wv.end(), v.begin(), v.end());
    }
    cache.commit(slot, tokens);
  }
  const int lengths[4] = {14, 3, 14, 3};
  for (int s = 0; s < 4; ++s) {
    ASSERT_EQ(cache.length(s), lengths[s]) << "slot " << s;
    for (int l = 0; l < 3; ++l) {
      auto gk = keys(cache, l, s), gv = values(cache, l, s);
      ASSERT_EQ(gk.size(), row * lengths[s]);
      EXPECT_TRUE(rows_equal(want.k[{l, s}], gk)) << "layer " << l << " slot " << s;
      EXPECT_TRUE(rows_equal(want.v[{l, s}], gv)) << "layer " << l << " slot " << s;
    }
  }
  EXPECT_EQ(cache.lengths(), (std::vector<int32_t>{14, 3, 14, 3}));
  cache.clear(2);
  EXPECT_EQ(cache.length(2), 0);
  EXPECT_EQ(cache.length(0), 14);
  cache.reset();
  for (int s = 0; s < 4; ++s) EXPECT_EQ(cache.length(s), 0);
}

TEST_P(KVCacheTest, FillsExactlyToCapacityThenRejectsWithoutWriting) {
  KVCacheConfig cfg{2, 12, 2, 16, 2};
  KVCache cache(cfg, device());
  const size_t row = 2 * 16;
  for (int step : {10, 2}) {
    for (int l = 0; l < 2; ++l) {
      auto k = random_halves(row * step, 7 * l + step), v = random_halves(row * step, 9 * l + step);
      cache.append(l, 1, k.data(), v.data(), step);
    }
    cache.commit(1, step);
  }
  ASSERT_EQ(cache.length(1), 12);
  const auto before = raw(cache);
  auto one = random_halves(row, 5);
  try {
    cache.append(0, 1, one.data(), one.data(), 1);
    FAIL() << "appending past max_context was accepted";
  } catch (const ContextOverflowError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("slot 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("holds 12"), std::string::npos) << msg;
    EXPECT_NE(msg.find("appending 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("capacity of 12"), std::string::npos) << msg;
  }
  EXPECT_EQ(cache.length(1), 12);
  EXPECT_EQ(cache.pending(1), 0);
  EXPECT_TRUE(rows_equal(before, raw(cache)));  // nothing written anywhere
  // The other slot is unaffected and a too-large first append is rejected the same way.
  auto big = random_halves(row * 13, 6);
  EXPECT_THROW(cache.append(0, 0, big.data(), big.data(), 13), ContextOverflowError);
  EXPECT_TRUE(rows_equal(before, raw(cache)));
}

TEST_P(KVCacheTest, CommitRequiresEveryLayerWithTheSameTokens) {
  KVCache cache({3, 16, 1, 8, 1}, device());
  auto r2 = random_halves(16, 1), r3 = random_halves(24, 2);
  cache.append(0, 0, r2.data(), r2.data(), 2);
  EXPECT_THROW(cache.append(0, 0, r2.data(), r2.data(), 2), std::invalid_argument);  // twice
  EXPECT_THROW(cache.append(1, 0, r3.data(), r3.data(), 3), std::invalid_argument);  // 3 != 2
  cache.append(1, 0, r2.data(), r2.data(), 2);
  EXPECT_THROW(cache.commit(0, 2), std::invalid_argument);  // layer 2 missing
  cache.append(2, 0, r2.data(), r2.data(), 2);
  EXPECT_THROW(cache.commit(0, 3), std::invalid_argument);  // wrong count
  cache.commit(0, 2);
  EXPECT_EQ(cache.length(0), 2);
  EXPECT_THROW(cache.commit(0, 2), std::invalid_argument);  // nothing pending
}

TEST_P(KVCacheTest, SmallestShapes) {
  KVCacheConfig cfg{1, 1, 1, 1, 1, 1};
  EXPECT_EQ(KVCache::size_bytes(cfg), 4u);
  KVCache cache(cfg, device());
  half_t k = float_to_half(1.5f), v = float_to_half(-2.25f);
  cache.append(0, 0, &k, &v, 1);
  cache.commit(0, 1);
  EXPECT_TRUE(rows_equal({k}, keys(cache, 0, 0)));
  EXPECT_TRUE(rows_equal({v}, values(cache, 0, 0)));
  EXPECT_THROW(cache.append(0, 0, &k, &v, 1), ContextOverflowError);
}

// Negative tests: the checks above must catch a planted bug.
TEST_P(KVCacheTest, PlantedBugsAreCaught) {
  KVCacheConfig cfg{2, 8, 2, 8, 2};
  KVCache cache(cfg, device());
  const size_t row = 16;
  auto k0 = random_halves(row * 3, 1), v0 = random_halves(row * 3, 2);
  auto k1 = random_halves(row * 3, 3), v1 = random_halves(row * 3, 4);
  for (int l = 0; l < 2; ++l) {
    cache.append(l, 0, k0.data(), v0.data(), 3);
    cache.append(l, 1, k1.data(), v1.data(), 3);
  }
  cache.commit(0, 3);
  cache.commit(1, 3);
  // Reading the wrong slot, K for V, or a shorter prefix must all fail the comparison.
  EXPECT_FALSE(rows_equal(k0, keys(cache, 0, 1)));
  EXPECT_FALSE(rows_equal(k0, values(cache, 0, 0)));
  std::vector<half_t> prefix(k0.begin(), k0.begin() + row * 2);
  EXPECT_FALSE(rows_equal(prefix, keys(cache, 0, 0)));  // sizes differ: caught before values
  // One flipped bit in the device memory is caught.
  half_t bad = keys(cache, 1, 0)[5] ^ 1;
  copy_bytes(cache.k_layer(1) + 5, cache.device(), &bad, Device::cpu(), 2);  // slot 0: block 0, head 0, pos 0, d 5
  EXPECT_FALSE(rows_equal(k0, keys(cache, 1, 0)));
  // Token order swapped (a transposed layout) is caught.
  std::vector<half_t> swapped(k0);
  std::swap_ranges(swapped.begin(), swapped.begin() + row, swapped.begin() + row);
  EXPECT_FALSE(rows_equal(swapped, keys(cache, 0, 0)));
}

INSTANTIATE_TEST_SUITE_P(Devices, KVCacheTest, testing::ValuesIn(test::all_devices()),
                         test::device_name);

}  // namespace
}  // namespace kvinfer
