// ModelConfig: a decoder-only transformer as data. Everything that differs between the supported
// families (norm kind, biases, MLP activation, position encoding, tied head) is a field here; the
// one layer recipe (model/decoder.h) reads them. The families themselves, and how their
// config.json and tensor names map onto this, are described in python/kvinfer/families.py.
//
// Weights are fp16 tensors in one allocation, each identified by a role (and a layer), and named
// after it for the loader:
//   embed [vocab][hidden], pos_embed [max_positions][hidden] (learned positions only)
//   layers.{i}.attn_norm.{weight,bias}, layers.{i}.qkv.{weight,bias} [(H + 2*KV)*head_dim][hidden]
//   q/k-norm only: layers.{i}.q_norm.weight, layers.{i}.k_norm.weight [head_dim]
//   layers.{i}.o.{weight,bias} [hidden][H*head_dim], layers.{i}.mlp_norm.{weight,bias}
//   post-norms only: layers.{i}.post_attn_norm.weight, layers.{i}.post_mlp_norm.weight [hidden]
//   gated MLP: layers.{i}.gate_up.{weight,bias} [2*inter][hidden] (gate rows, then up rows)
//   plain MLP: layers.{i}.fc.{weight,bias} [inter][hidden]
//   layers.{i}.down.{weight,bias} [hidden][inter], final_norm.{weight,bias}, lm_head [vocab][hidden]
// Matrices are [out][in] (nn.Linear), so every projection is y = x W^T. Each tensor starts at a
// multiple of 256 bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvinfer {

enum class NormKind { RMSNorm, LayerNorm };
// silu(gate) * up  |  gelu_tanh(gate) * up  |  gelu_tanh(fc)
enum class MlpKind { SwiGLU, GeGLU, GeluNew };
enum class PositionKind { Rope, Learned };

struct RopeScaling {
  // "none", "llama3" (Llama 3.1 frequency-dependent scaling) or "linear" (positions / factor).
  std::string type = "none";
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_positions = 8192;
};

struct ModelConfig {
  std::string architecture;  // the Hugging Face class name, for messages
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;
  int max_positions = 0;
  float norm_eps = 1e-5f;
  NormKind norm = NormKind::RMSNorm;
  MlpKind mlp = MlpKind::SwiGLU;
  PositionKind positions = PositionKind::Rope;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool norm_bias = false;  // LayerNorm has a bias, RMSNorm none
  // RMSNorm of every q and k head over head_dim (one weight vector each, shared by the heads),
  // after the QKV projection and before RoPE (Qwen3)
  bool qk_norm = false;
  // An RMSNorm of the attention output and of the MLP output before each is added to the residual
  // stream (Gemma 2's pre- and post-norms around both blocks)
  bool post_norms = false;
  // The embedding rows times this (Gemma: sqrt(hidden_size))
  float embed_scale = 1.0f;
  // Attention scores are q . k * attention_scale(): attn_scale where set (Gemma 2:
  // query_pre_attn_scalar^-0.5), else 1/sqrt(head_dim)
  float attn_scale = 0.0f;
  // Soft-capping, cap * tanh(value / cap), of attention scores before the softmax and of the final
  // logits (Gemma 2); 0 = none
  float attn_softcap = 0.0f;
  float logit_softcap = 0.0f;

  // Throws std::invalid_argument naming the field and value; also when a derived size (a row of
  // Q/K/V, a weight matrix) does not fit the 32-bit sizes the ops take.
  void validate() const;
  int qkv_dim() const { return (num_heads + 2 * num_kv_heads) * head_dim; }
  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  bool gated_mlp() const { return mlp != MlpKind::GeluNew; }
  int mlp_in_dim() const { return gated_mlp() ? 2 * intermediate_size : intermediate_size; }
  float attention_scale() const;
};

// What a weight tensor is for. Per-layer roles come with a layer index; the others have layer -1.
enum class WeightRole {
  embed, pos_embed, final_norm, final_norm_bias, lm_head,
  attn_norm, attn_norm_bias, qkv, qkv_bias, q_norm, k_norm, o, o_bias, post_attn_norm,
  mlp_norm, mlp_norm_bias, mlp_in, mlp_in_bias, down, down_bias, post_mlp_norm,
};

struct TensorSpec {
  std::string name;  // the loader's name, e.g. "layers.3.qkv.weight"
  WeightRole role;
  int layer = -1;
  std::vector<int64_t> shape;
  size_t offset = 0;  // bytes from the start of the weight allocation
  int64_t numel() const;
  size_t bytes() const { return static_cast<size_t>(numel()) * 2; }
};

// Every weight tensor of the model with its offset; the last entry's end is the total.
std::vector<TensorSpec> weight_layout(const ModelConfig& config);
// Bytes of the one fp16 weight allocation (tensor bytes plus alignment padding).
size_t weight_bytes(const ModelConfig& config);
// Parameters (elements) of all tensors; tied embeddings count once.
int64_t parameter_count(const ModelConfig& config);

}  // namespace kvinfer
