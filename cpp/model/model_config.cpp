#include "model/model_config.h"

#include <climits>
#include <cmath>

#include "core/errors.h"

namespace kvinfer {

void ModelConfig::validate() const {
  auto positive = [](const char* name, long long value) {
    KVINFER_CHECK_ARG(value > 0, "config ", name, "=", value, " must be > 0");
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_layers);
  positive("num_attention_heads", num_heads);
  positive("num_key_value_heads", num_kv_heads);
  positive("head_dim", head_dim);
  positive("intermediate_size", intermediate_size);
  positive("max_position_embeddings", max_positions);
  KVINFER_CHECK_ARG(num_heads % num_kv_heads == 0, "config num_attention_heads=", num_heads,
                    " is not a multiple of num_key_value_heads=", num_kv_heads);
  KVINFER_CHECK_ARG(positions != PositionKind::Rope || head_dim % 2 == 0, "config head_dim=",
                    head_dim, " must be even for rotary embeddings");
  KVINFER_CHECK_ARG(norm_eps > 0, "config norm eps=", norm_eps, " must be > 0");
  KVINFER_CHECK_ARG(positions != PositionKind::Rope || rope_theta > 0, "config rope_theta=",
                    rope_theta, " must be > 0");
  KVINFER_CHECK_ARG(rope_scaling.type == "none" || rope_scaling.type == "llama3" ||
                        rope_scaling.type == "linear",
                    "rope_scaling type '", rope_scaling.type,
                    "' is not supported (supported: none, linear, llama3)");
  KVINFER_CHECK_ARG(rope_scaling.type == "none" || rope_scaling.factor > 0, "rope_scaling factor=",
                    rope_scaling.factor, " must be > 0");
  KVINFER_CHECK_ARG(!post_norms || norm == NormKind::RMSNorm, "config post_norms need RMSNorm");
  auto finite_at_least = [](const char* name, float value, float low, bool strict) {
    KVINFER_CHECK_ARG(std::isfinite(value) && (strict ? value > low : value >= low), "config ", name, "=",
                      value, " must be a finite number ", strict ? "> " : ">= ", low);
  };
  finite_at_least("embed_scale", embed_scale, 0.0f, true);
  finite_at_least("attn_scale", attn_scale, 0.0f, false);
  finite_at_least("attn_softcap", attn_softcap, 0.0f, false);
  finite_at_least("logit_softcap", logit_softcap, 0.0f, false);
  // Derived sizes in 64 bits: each must fit the int the ops take.
  auto fits = [](const char* what, long long value) {
    KVINFER_CHECK_ARG(value <= INT_MAX, "config: ", what, "=", value, " exceeds 2^31 - 1");
  };
  fits("(num_attention_heads + 2 * num_key_value_heads) * head_dim",
       (static_cast<long long>(num_heads) + 2LL * num_kv_heads) * head_dim);
  fits("2 * intermediate_size", 2LL * intermediate_size);
}

float ModelConfig::attention_scale() const {
  return attn_scale > 0 ? attn_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> weight_layout(const ModelConfig& c) {
  c.validate();
  std::vector<TensorSpec> out;
  size_t offset = 0;
  auto add = [&](WeightRole role, int layer, const char* suffix, std::vector<int64_t> shape) {
    std::string name = layer < 0 ? suffix : "layers." + std::to_string(layer) + "." + suffix;
    TensorSpec t{std::move(name), role, layer, std::move(shape), offset};
    offset += (t.bytes() + 255) / 256 * 256;
    out.push_back(std::move(t));
  };
  using R = WeightRole;
  const int64_t H = c.hidden_size;
  const bool gated = c.gated_mlp();
  add(R::embed, -1, "embed", {c.vocab_size, H});
  if (c.positions == PositionKind::Learned) add(R::pos_embed, -1, "pos_embed", {c.max_positions, H});
  for (int i = 0; i < c.num_layers; ++i) {
    add(R::attn_norm, i, "attn_norm.weight", {H});
    if (c.norm_bias) add(R::attn_norm_bias, i, "attn_norm.bias", {H});
    add(R::qkv, i, "qkv.weight", {c.qkv_dim(), H});
    if (c.qkv_bias) add(R::qkv_bias, i, "qkv.bias", {c.qkv_dim()});
    if (c.qk_norm) add(R::q_norm, i, "q_norm.weight", {c.head_dim});
    if (c.qk_norm) add(R::k_norm, i, "k_norm.weight", {c.head_dim});
    add(R::o, i, "o.weight", {H, c.q_dim()});
    if (c.o_bias) add(R::o_bias, i, "o.bias", {H});
    if (c.post_norms) add(R::post_attn_norm, i, "post_attn_norm.weight", {H});
    add(R::mlp_norm, i, "mlp_norm.weight", {H});
    if (c.norm_bias) add(R::mlp_norm_bias, i, "mlp_norm.bias", {H});
    add(R::mlp_in, i, gated ? "gate_up.weight" : "fc.weight", {c.mlp_in_dim(), H});
    if (c.mlp_bias) add(R::mlp_in_bias, i, gated ? "gate_up.bias" : "fc.bias", {c.mlp_in_dim()});
    add(R::down, i, "down.weight", {H, c.intermediate_size});
    if (c.mlp_bias) add(R::down_bias, i, "down.bias", {H});
    if (c.post_norms) add(R::post_mlp_norm, i, "post_mlp_norm.weight", {H});
  }
  add(R::final_norm, -1, "final_norm.weight", {H});
  if (c.norm_bias) add(R::final_norm_bias, -1, "final_norm.bias", {H});
  if (!c.tie_word_embeddings) add(R::lm_head, -1, "lm_head", {c.vocab_size, H});
  return out;
}

size_t weight_bytes(const ModelConfig& c) {
  auto layout = weight_layout(c);
  const TensorSpec& last = layout.back();
  return last.offset + (last.bytes() + 255) / 256 * 256;
}

int64_t parameter_count(const ModelConfig& c) {
  int64_t n = 0;
  for (const auto& t : weight_layout(c)) n += t.numel();
  return n;
}

}  // namespace kvinfer
