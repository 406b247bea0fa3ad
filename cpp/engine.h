// Engine: one model's weights, its KV cache and the activation buffers of a forward step, all
// allocated once at construction (purposes "weights", "kv_cache", "kv_lengths", "activations" and,
// on CUDA, "workspace" for cuBLAS); forward() and sample() then allocate nothing.
//
// A forward step takes a batch of sequences, each a slot of the KV cache plus its new tokens
// (prefill: many tokens; decode: one), appends their K/V at each slot's length, and computes the
// logits of the last token of every sequence (optionally of every token). sample() then turns
// those logits into token ids where they are (host or device).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "device_memory.h"
#include "kv_cache.h"
#include "model_config.h"
#include "ops/sampling.h"

namespace kvinfer {

struct EngineShape {
  int max_batch = 1;     // sequence slots
  int max_context = 0;   // tokens per slot
  int max_tokens = 0;    // tokens per forward step (prefill chunk); >= max_batch
  void validate(const ModelConfig& config) const;
};

// Views of the activation allocation; byte offsets, each 256-aligned. The CPU backend keeps
// activations in fp32; the CUDA backend feeds fp16 to its GEMMs and keeps the residual in fp32.
struct ActivationLayout {
  size_t x, h, qkv, attn, mlp, kv16, logits, meta, history, decode, args, sampled, inv_freq, total;
};
ActivationLayout activation_layout(const ModelConfig& config, const EngineShape& shape, bool cuda);
// cuBLAS workspace given to the handle (purpose "workspace"); 0 on the CPU.
size_t gemm_workspace_bytes(bool cuda);

// Per-step int32 metadata: tokens, positions, token_slots [T]; seq_slots [B]; seq_starts [B+1];
// last_rows [B]; then, at sample_meta_offset, row slots [B] and history lengths [B] for sample().
size_t meta_ints(const EngineShape& shape);
inline size_t sample_meta_offset(const EngineShape& s) { return 3 * size_t(s.max_tokens) + 3 * size_t(s.max_batch) + 1; }

// Split-K partials of decode attention (CUDA); 0 on the CPU.
size_t decode_partial_bytes(const ModelConfig& config, const EngineShape& shape);

struct CudaContext;  // stream, cuBLAS handle and its workspace (engine_cuda.cpp)
struct CudaContextDeleter {
  void operator()(CudaContext* c) const noexcept;
};
using CudaContextPtr = std::unique_ptr<CudaContext, CudaContextDeleter>;
CudaContextPtr make_cuda_context(const Device& device, std::shared_ptr<VramTracker> tracker);

class Engine {
 public:
  Engine(const ModelConfig& config, const Device& device, const EngineShape& shape,
         std::shared_ptr<VramTracker> tracker = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelConfig& config() const { return config_; }
  const EngineShape& shape() const { return shape_; }
  const Device& device() const { return device_; }
  const std::vector<TensorSpec>& weight_specs() const { return specs_; }

  // Copies one fp16 tensor (host memory, row-major) into the weight allocation. Throws for an
  // unknown name or a shape that differs from the spec (both named in the message).
  void set_weight(const std::string& name, const half_t* data, const std::vector<int64_t>& shape);
  std::vector<std::string> missing_weights() const;

  // tokens [total]; sequence b owns tokens [seq_starts[b], seq_starts[b+1]) and slot seq_slots[b].
  // Computes the logits of each sequence's last token; with all_logits (host, [total][vocab]),
  // every token's logits too; with hidden_states (host, [num_layers + 1][total][hidden]), the
  // residual stream after the embedding and each layer. Everything is validated first.
  void forward(const int32_t* tokens, int total, const int32_t* seq_slots, const int32_t* seq_starts,
               int batch, float* all_logits = nullptr, float* hidden_states = nullptr);
  // One token per sequence of the last forward, from its logits (consumed): args[b] for row b.
  void sample(const SamplingArgs* args, int batch, int32_t* out_tokens);
  // Copies the last forward's logits, [rows][vocab], to host memory.
  void copy_logits(float* out, int rows) const;

  // Frees weights, cache and activations now (e.g. after a failed load); forward() then throws.
  void release() noexcept;
  bool released() const { return weights_.empty(); }
  KVCache& cache() { return cache_; }

 private:
  struct LayerWeights {
    const half_t *attn_norm_w, *attn_norm_b, *qkv_w, *qkv_b, *o_w, *o_b;
    const half_t *mlp_norm_w, *mlp_norm_b, *mlp_in_w, *mlp_in_b, *down_w, *down_b;
  };
  const half_t* weight(const std::string& name) const;  // null when the model has no such tensor
  void validate_step(const int32_t* tokens, int total, const int32_t* seq_slots,
                     const int32_t* seq_starts, int batch) const;
  template <class T>
  T* view(size_t offset) const { return reinterpret_cast<T*>(activations_.as<char>() + offset); }
  void forward_cpu(const int32_t* tokens, int total, const int32_t* seq_slots,
                   const int32_t* seq_starts, int batch, float* all_logits, float* hidden_states);
  void forward_cuda(const int32_t* tokens, int total, const int32_t* seq_slots,
                    const int32_t* seq_starts, int batch, float* all_logits, float* hidden_states);
  void sample_cuda(const SamplingArgs* args, int batch, int32_t* out_tokens);
  void norm_cpu(const float* x, const half_t* w, const half_t* b, float* y, int rows) const;

  ModelConfig config_;
  EngineShape shape_;
  Device device_;
  std::vector<TensorSpec> specs_;
  std::unordered_map<std::string, size_t> spec_index_;
  std::vector<uint8_t> loaded_;
  size_t loaded_count_ = 0;
  DeviceMemory weights_;      // fp16 tensors at specs_[i].offset
  KVCache cache_;
  ActivationLayout act_;
  DeviceMemory activations_;  // views at act_ offsets
  CudaContextPtr cuda_;
  std::vector<LayerWeights> layers_;
  const half_t *embed_ = nullptr, *pos_embed_ = nullptr, *final_norm_w_ = nullptr,
               *final_norm_b_ = nullptr, *lm_head_ = nullptr;
  // The last forward's sequences, for sample(): slots and lengths after the step.
  std::vector<int32_t> last_slots_, last_lengths_;
  int last_batch_ = 0;  // 0: no logits to sample from
  mutable std::vector<uint8_t> slot_seen_;  // validate_step scratch [max_batch]
  std::vector<int32_t> meta_host_;  // staging for the per-step metadata upload (CUDA)
};

}  // namespace kvinfer
