// Engine: one model's weights, its KV cache and the activation buffers of a forward step, all
// allocated once at construction (purposes "weights", "kv_cache", "activations"); forward() then
// allocates nothing.
//
// A forward step takes a batch of sequences, each a slot of the KV cache plus its new tokens
// (prefill: many tokens; decode: one), appends their K/V at each slot's length, and computes the
// logits of the last token of every sequence (optionally of every token).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "device_memory.h"
#include "kv_cache.h"
#include "model_config.h"

namespace kvinfer {

struct EngineShape {
  int max_batch = 1;     // sequence slots
  int max_context = 0;   // tokens per slot
  int max_tokens = 0;    // tokens per forward step (prefill chunk); >= max_batch
  void validate(const ModelConfig& config) const;
};

// Views of the activation allocation; offsets in bytes, each 256-aligned.
struct ActivationLayout {
  size_t x, h, qkv, attn, mlp, kv16, logits, positions, token_slots, inv_freq, total;
};
ActivationLayout activation_layout(const ModelConfig& config, const EngineShape& shape);

class Engine {
 public:
  Engine(const ModelConfig& config, const Device& device, const EngineShape& shape,
         std::shared_ptr<VramTracker> tracker = nullptr);

  const ModelConfig& config() const { return config_; }
  const EngineShape& shape() const { return shape_; }
  const Device& device() const { return weights_.device(); }
  const std::vector<TensorSpec>& weight_specs() const { return specs_; }

  // Copies one fp16 tensor (host memory, row-major) into the weight allocation. Throws for an
  // unknown name or a shape that differs from the spec (both named in the message).
  void set_weight(const std::string& name, const half_t* data, const std::vector<int64_t>& shape);
  std::vector<std::string> missing_weights() const;

  // tokens [total]; sequence b owns tokens [seq_starts[b], seq_starts[b+1]) and slot seq_slots[b].
  // Writes logits()[b] for each sequence's last token; with all_logits (host, [total][vocab]),
  // every token's logits too. Everything is validated before anything is written.
  // With hidden_states (host, [num_layers + 1][total][hidden]): the residual stream after the
  // embedding and after each layer, for comparisons with a reference implementation.
  void forward(const int32_t* tokens, int total, const int32_t* seq_slots, const int32_t* seq_starts,
               int batch, float* all_logits = nullptr, float* hidden_states = nullptr);

  // Frees weights, cache and activations now (e.g. after a failed load); forward() then throws.
  void release() noexcept;
  bool released() const { return weights_.empty(); }

  // [max_batch][vocab] fp32 logits of the last forward (host memory on the CPU backend).
  const float* logits() const;
  KVCache& cache() { return cache_; }

 private:
  struct LayerWeights {
    const half_t *attn_norm_w, *attn_norm_b, *qkv_w, *qkv_b, *o_w, *o_b;
    const half_t *mlp_norm_w, *mlp_norm_b, *mlp_in_w, *mlp_in_b, *down_w, *down_b;
  };
  const half_t* weight(const std::string& name) const;  // null when the model has no such tensor
  void validate_step(const int32_t* tokens, int total, const int32_t* seq_slots,
                     const int32_t* seq_starts, int batch) const;
  void norm(const float* x, const half_t* w, const half_t* b, float* y, int rows) const;
  void forward_cpu(const int32_t* tokens, int total, const int32_t* seq_slots,
                   const int32_t* seq_starts, int batch, float* all_logits, float* hidden_states);

  ModelConfig config_;
  EngineShape shape_;
  std::vector<TensorSpec> specs_;
  std::unordered_map<std::string, size_t> spec_index_;
  std::vector<uint8_t> loaded_;
  DeviceMemory weights_;      // fp16 tensors at specs_[i].offset
  KVCache cache_;
  ActivationLayout act_;
  DeviceMemory activations_;  // views at act_ offsets
  std::vector<LayerWeights> layers_;
  const half_t *embed_ = nullptr, *pos_embed_ = nullptr, *final_norm_w_ = nullptr,
               *final_norm_b_ = nullptr, *lm_head_ = nullptr;
};

}  // namespace kvinfer
