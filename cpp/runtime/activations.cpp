#include "runtime/activations.h"

#include <algorithm>

#include "backend/cuda/workspace.h"
#include "core/errors.h"
#include "types/step_batch.h"

namespace kvinfer {

void RunnerShape::validate(const ModelConfig& config) const {
  KVINFER_CHECK_ARG(max_batch > 0, "max_batch=", max_batch, " must be > 0");
  KVINFER_CHECK_ARG(max_context > 0, "max_context=", max_context, " must be > 0");
  KVINFER_CHECK_ARG(max_step_tokens >= max_batch, "max_step_tokens=", max_step_tokens,
                    " must be >= max_batch=", max_batch, " (a decode step has one token per sequence)");
  KVINFER_CHECK_ARG(block_size > 0 && block_size <= (1 << 16) && (block_size & (block_size - 1)) == 0,
                    "block_size=", block_size, " must be a power of two in [1, 65536]");
  KVINFER_CHECK_ARG(num_blocks >= 0, "num_blocks=", num_blocks, " must be >= 0 (0: one run per slot)");
  KVINFER_CHECK_ARG(config.positions != PositionKind::Learned || max_context <= config.max_positions,
                    "max_context=", max_context, " exceeds the model's ", config.max_positions,
                    " learned positions");
}

ActivationLayout activation_layout(const ModelConfig& c, const RunnerShape& s, DeviceKind device) {
  s.validate(c);
  const bool cuda = device == DeviceKind::CUDA;
  ActivationLayout a{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    size_t offset = at;
    at += (bytes + 255) / 256 * 256;
    return offset;
  };
  const size_t T = s.max_step_tokens, B = s.max_batch;
  const size_t act = cuda ? 2 : 4;  // GEMM-side activations: fp16 on CUDA, fp32 on the CPU
  a.x = take(T * c.hidden_size * 4);
  a.h = take(T * c.hidden_size * act);
  a.qkv = take(T * c.qkv_dim() * act);
  a.attn = take(T * c.q_dim() * act);
  a.mlp = take(T * c.mlp_in_dim() * act);
  a.kv16 = take(cuda ? 0 : T * 2 * c.kv_dim() * 2);
  a.logits = take(B * c.vocab_size * 4);
  a.step = take(step_layout(s.max_step_tokens, s.max_batch, s.max_step_tokens, s.blocks_per_seq(),
                            s.max_batch * kMaxLogitBiasPerRow).bytes);
  a.history = take(B * s.max_context * 4);
  a.decode = take(cuda ? cuda::decode_workspace_bytes(s.max_batch, c.num_heads, c.head_dim) : 0);
  a.sampled = take(B * 4);
  a.inv_freq = take(size_t(c.head_dim / 2) * 4);
  // the model's projections as (N, K): the skinny GEMMs' workspace is sized by the largest
  const int gemms[5][2] = {{c.qkv_dim(), c.hidden_size}, {c.hidden_size, c.q_dim()},
                           {c.mlp_in_dim(), c.hidden_size}, {c.hidden_size, c.intermediate_size},
                           {c.vocab_size, c.hidden_size}};
  size_t partials = 0, counters = 0;
  for (const auto& nk : gemms) {
    partials = std::max(partials, cuda::skinny_partial_floats(nk[0], nk[1]));
    counters = std::max(counters, size_t(cuda::skinny_counters(nk[0], nk[1])));
  }
  const size_t rows = std::min<size_t>(T, cuda::kSkinnyMaxRows);
  a.x_ss = take(cuda ? rows * (c.hidden_size / cuda::kSkinnyTile) * 4 : 0);
  a.skinny = take(cuda ? partials * 4 : 0);
  a.counters = take(cuda ? counters * 4 : 0);
  a.normed = take(cuda ? rows * c.hidden_size * 2 : 0);
  a.argmax = take(cuda ? B * ((c.vocab_size + cuda::kSkinnyTile - 1) / cuda::kSkinnyTile) * 8 : 0);
  a.total = at;
  return a;
}

size_t gemm_workspace_bytes(DeviceKind device) {
  return device == DeviceKind::CUDA ? size_t{32} << 20 : 0;  // NVIDIA's Hopper advice
}

}  // namespace kvinfer
