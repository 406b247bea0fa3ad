#include "model_config.h"

#include "errors.h"

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
  KVINFER_CHECK_ARG(rope_scaling.type == "none" || rope_scaling.type == "llama3" ||
                        rope_scaling.type == "linear",
                    "rope_scaling type '", rope_scaling.type,
                    "' is not supported (supported: none, linear, llama3)");
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
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    TensorSpec t{std::move(name), std::move(shape), offset};
    offset += (t.bytes() + 255) / 256 * 256;
    out.push_back(std::move(t));
  };
  const int64_t H = c.hidden_size;
  add("embed", {c.vocab_size, H});
  if (c.positions == PositionKind::Learned) add("pos_embed", {c.max_positions, H});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    add(p + "attn_norm.weight", {H});
    if (c.norm_bias) add(p + "attn_norm.bias", {H});
    add(p + "qkv.weight", {c.qkv_dim(), H});
    if (c.qkv_bias) add(p + "qkv.bias", {c.qkv_dim()});
    add(p + "o.weight", {H, c.q_dim()});
    if (c.o_bias) add(p + "o.bias", {H});
    add(p + "mlp_norm.weight", {H});
    if (c.norm_bias) add(p + "mlp_norm.bias", {H});
    if (c.mlp == MlpKind::SwiGLU) {
      add(p + "gate_up.weight", {c.mlp_in_dim(), H});
      if (c.mlp_bias) add(p + "gate_up.bias", {c.mlp_in_dim()});
    } else {
      add(p + "fc.weight", {c.intermediate_size, H});
      if (c.mlp_bias) add(p + "fc.bias", {c.intermediate_size});
    }
    add(p + "down.weight", {H, c.intermediate_size});
    if (c.mlp_bias) add(p + "down.bias", {H});
  }
  add("final_norm.weight", {H});
  if (c.norm_bias) add("final_norm.bias", {H});
  if (!c.tie_word_embeddings) add("lm_head", {c.vocab_size, H});
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
