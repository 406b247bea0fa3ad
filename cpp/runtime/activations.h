// The activation buffers of a runner, all views of one allocation (purpose "activations") made at
// construction, so a step allocates nothing. Byte offsets, each 256-aligned. The CPU backend
// keeps activations in fp32; the CUDA backend feeds fp16 to its GEMMs and keeps the residual in
// fp32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/device.h"
#include "model/decoder.h"
#include "model/model_config.h"

namespace kvinfer {

struct RunnerShape {
  int max_batch = 1;        // sequences of one step, and sequence slots
  int max_context = 0;      // tokens per sequence
  int max_step_tokens = 0;  // new tokens of one step (a prefill chunk); >= max_batch
  int block_size = 16;      // KV cache tokens per block (a power of two)
  int num_blocks = 0;       // KV cache blocks; 0: max_batch * blocks_per_seq() (each slot its own)
  void validate(const ModelConfig& config) const;
  int blocks_per_seq() const { return (max_context + block_size - 1) / block_size; }
};

struct ActivationLayout {
  size_t x;         // float [T][hidden] residual stream
  size_t h;         // [T][hidden] normed
  size_t qkv;       // [T][qkv_dim]
  size_t attn;      // [T][q_dim]
  size_t mlp;       // [T][mlp_in_dim]
  size_t kv16;      // half [T][k | v][kv_dim] (CPU: the cache is fp16, the activations fp32)
  size_t logits;    // float [max_batch][vocab]
  size_t step;      // the step's fields (types/step_batch.h): the device copy (CUDA) or the staging (CPU)
  size_t history;   // int32 [max_batch][max_context] token ids per slot (repetition penalty)
  size_t decode;    // float split-K partials of decode attention (CUDA)
  size_t sampled;   // int32 [max_batch] the last step's sampled ids
  size_t inv_freq;  // float [head_dim / 2]
  // CUDA, steps of at most kSkinnyMaxRows rows (backend/cuda/skinny_gemm.h):
  size_t x_ss;      // float [rows][hidden / 16] sums of squares of the residual's 16-column groups
  size_t skinny;    // float split-K partials of the largest skinny GEMM of the model
  size_t counters;  // int32 tile counters of the same
  size_t normed;    // half [rows][hidden] RMSNorm rows of the wider skinny steps
  size_t argmax;    // int2 [max_batch][ceil(vocab / 16)] each LM-head tile's largest logit
  size_t total;
};
ActivationLayout activation_layout(const ModelConfig& config, const RunnerShape& shape, DeviceKind device);

// Where a buffer of the layer recipe (model/decoder.h) lies, and its row stride in elements.
inline size_t buffer_offset(const ActivationLayout& a, Buffer b) {
  return b == Buffer::qkv ? a.qkv : b == Buffer::attn ? a.attn : a.mlp;
}
inline int64_t buffer_stride(const ModelConfig& c, Buffer b) {
  return b == Buffer::qkv ? c.qkv_dim() : b == Buffer::attn ? c.q_dim() : c.mlp_in_dim();
}

// cuBLAS workspace given to the handle (purpose "workspace"); 0 on the CPU.
size_t gemm_workspace_bytes(DeviceKind device);

}  // namespace kvinfer
