// Weight layout and parameter counts against the published figures; CPU op invariants the engine
// relies on (a row's matmul result does not depend on the batch it is computed in).
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "backend/cpu/cpu_ops.h"
#include "test_util.h"

namespace kvinfer {
namespace {

ModelConfig gpt2() {
  ModelConfig c;
  c.architecture = "GPT2LMHeadModel";
  c.vocab_size = 50257;
  c.hidden_size = 768;
  c.num_layers = 12;
  c.num_heads = c.num_kv_heads = 12;
  c.head_dim = 64;
  c.intermediate_size = 3072;
  c.max_positions = 1024;
  c.norm = NormKind::LayerNorm;
  c.mlp = MlpKind::GeluNew;
  c.positions = PositionKind::Learned;
  c.tie_word_embeddings = c.norm_bias = c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

ModelConfig smollm2_135m() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.intermediate_size = 1536;
  c.max_positions = 8192;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig qwen3_0_6b() {  // q/k-norm, and q heads wider than the model (16 x 128 > 1024)
  ModelConfig c;
  c.architecture = "Qwen3ForCausalLM";
  c.vocab_size = 151936;
  c.hidden_size = 1024;
  c.num_layers = 28;
  c.num_heads = 16;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 3072;
  c.max_positions = 40960;
  c.tie_word_embeddings = c.qk_norm = true;
  return c;
}

ModelConfig gemma2_2b() {  // GeGLU, post-norms, head_dim 256 over 8 heads (q_dim 2048 < hidden 2304)
  ModelConfig c;
  c.architecture = "Gemma2ForCausalLM";
  c.vocab_size = 256000;
  c.hidden_size = 2304;
  c.num_layers = 26;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 256;
  c.intermediate_size = 9216;
  c.max_positions = 8192;
  c.mlp = MlpKind::GeGLU;
  c.tie_word_embeddings = c.post_norms = true;
  c.embed_scale = 48.0f;
  c.attn_scale = 0.0625f;
  c.attn_softcap = 50.0f;
  c.logit_softcap = 30.0f;
  return c;
}

TEST(ModelConfig, PublishedParameterCounts) {
  EXPECT_EQ(parameter_count(gpt2()), 124439808);
  EXPECT_EQ(parameter_count(smollm2_135m()), 134515008);
  EXPECT_EQ(parameter_count(qwen3_0_6b()), 596049920);
  EXPECT_EQ(parameter_count(gemma2_2b()), 2614341888);
}

TEST(ModelConfig, PostNormsFollowTheirProjections) {
  const auto specs = weight_layout(gemma2_2b());
  std::vector<std::string> names;
  for (int i = 1; i <= 7; ++i) names.push_back(specs[i].name);
  EXPECT_EQ(names, (std::vector<std::string>{"layers.0.attn_norm.weight", "layers.0.qkv.weight", "layers.0.o.weight",
                                             "layers.0.post_attn_norm.weight", "layers.0.mlp_norm.weight",
                                             "layers.0.gate_up.weight", "layers.0.down.weight"}));
  EXPECT_EQ(specs[4].role, WeightRole::post_attn_norm);
  EXPECT_EQ(specs[8].name, "layers.0.post_mlp_norm.weight");
  EXPECT_EQ(specs[8].role, WeightRole::post_mlp_norm);
  EXPECT_EQ(specs[8].shape, (std::vector<int64_t>{2304}));
  EXPECT_EQ(specs[6].shape, (std::vector<int64_t>{2 * 9216, 2304}));  // GeGLU: gate and up rows
}

TEST(ModelConfig, AttentionScaleIsHeadDimsUnlessSet) {
  ModelConfig c = gemma2_2b();
  EXPECT_FLOAT_EQ(c.attention_scale(), 0.0625f);
  c.attn_scale = 0;
  EXPECT_FLOAT_EQ(c.attention_scale(), 1.0f / 16.0f);  // 1/sqrt(256)
  c.head_dim = 64;
  EXPECT_FLOAT_EQ(c.attention_scale(), 0.125f);
}

TEST(ModelConfig, QkNormAddsOneWeightOfHeadDimForQAndForK) {
  const auto specs = weight_layout(qwen3_0_6b());
  ASSERT_EQ(specs[3].name, "layers.0.q_norm.weight");
  EXPECT_EQ(specs[3].role, WeightRole::q_norm);
  EXPECT_EQ(specs[3].shape, (std::vector<int64_t>{128}));
  ASSERT_EQ(specs[4].name, "layers.0.k_norm.weight");
  EXPECT_EQ(specs[4].role, WeightRole::k_norm);
  EXPECT_EQ(specs[5].name, "layers.0.o.weight");
  EXPECT_EQ(specs[5].shape, (std::vector<int64_t>{1024, 16 * 128}));
}

TEST(ModelConfig, LayoutIsAlignedAndDisjoint) {
  auto specs = weight_layout(smollm2_135m());
  ASSERT_EQ(specs.front().name, "embed");
  size_t end = 0;
  for (const auto& t : specs) {
    EXPECT_EQ(t.offset % 256, 0u) << t.name;
    EXPECT_GE(t.offset, end) << t.name;
    end = t.offset + t.bytes();
  }
  EXPECT_LE(end, weight_bytes(smollm2_135m()));
  EXPECT_EQ(weight_bytes(smollm2_135m()) % 256, 0u);
  EXPECT_EQ(specs[2].name, "layers.0.qkv.weight");
  EXPECT_EQ(specs[2].shape, (std::vector<int64_t>{(9 + 2 * 3) * 64, 576}));
}

TEST(ModelConfig, InvalidFieldsAreNamed) {
  ModelConfig c = smollm2_135m();
  c.num_kv_heads = 4;
  EXPECT_THROW(c.validate(), std::invalid_argument);  // 9 heads not a multiple of 4
  c = smollm2_135m();
  c.hidden_size = 0;
  try {
    c.validate();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size=0"), std::string::npos) << e.what();
  }
  for (float bad : {-1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    c = gemma2_2b(), c.attn_softcap = bad;
    EXPECT_THROW(c.validate(), std::invalid_argument) << bad;
    c = gemma2_2b(), c.logit_softcap = bad;
    EXPECT_THROW(c.validate(), std::invalid_argument) << bad;
    c = gemma2_2b(), c.attn_scale = bad;
    EXPECT_THROW(c.validate(), std::invalid_argument) << bad;
    c = gemma2_2b(), c.embed_scale = bad;
    EXPECT_THROW(c.validate(), std::invalid_argument) << bad;
  }
  c = gemma2_2b(), c.embed_scale = 0;
  EXPECT_THROW(c.validate(), std::invalid_argument);
  c = gpt2(), c.post_norms = true;  // post-norms are RMSNorms
  EXPECT_THROW(c.validate(), std::invalid_argument);
}

TEST(CpuOps, MatmulRowsDoNotDependOnTheBatch) {
  const int N = 37, K = 1100;  // K spans three 512-column chunks with a tail
  auto w = test::random_halves(size_t(N) * K, 1);
  auto bias = test::random_halves(N, 2);
  auto xh = test::random_halves(size_t(70) * K, 3);
  std::vector<float> x(xh.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = half_to_float(xh[i]);
  std::vector<float> all(size_t(70) * N), one(N);
  cpu::matmul(x.data(), K, w.data(), bias.data(), all.data(), N, 70, N, K, false);
  for (int t : {0, 1, 33, 69}) {
    cpu::matmul(x.data() + size_t(t) * K, K, w.data(), bias.data(), one.data(), N, 1, N, K, false);
    for (int n = 0; n < N; ++n) ASSERT_EQ(one[n], all[size_t(t) * N + n]) << "row " << t << " col " << n;
  }
  // and the result is the product: compare one entry against a double-precision sum
  double ref = half_to_float(bias[5]);
  for (int k = 0; k < K; ++k) ref += double(half_to_float(w[size_t(5) * K + k])) * x[size_t(33) * K + k];
  EXPECT_NEAR(all[size_t(33) * N + 5], ref, 1e-3 * std::abs(ref) + 1e-3);
}

}  // namespace
}  // namespace kvinfer
