#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"
#include "ops/cpu_ops.h"
#include "ops/kv_append.h"
#include "ops/simd.h"

namespace kvinfer {

void EngineShape::validate(const ModelConfig& config) const {
  KVINFER_CHECK_ARG(max_batch > 0, "max_batch=", max_batch, " must be > 0");
  KVINFER_CHECK_ARG(max_context > 0, "max_context=", max_context, " must be > 0");
  KVINFER_CHECK_ARG(max_tokens >= max_batch, "max_tokens=", max_tokens,
                    " must be >= max_batch=", max_batch, " (a decode step has one token per slot)");
  KVINFER_CHECK_ARG(config.positions != PositionKind::Learned || max_context <= config.max_positions,
                    "max_context=", max_context, " exceeds the model's ", config.max_positions,
                    " learned positions");
}

size_t meta_ints(const EngineShape& s) { return sample_meta_offset(s) + 2 * size_t(s.max_batch); }

ActivationLayout activation_layout(const ModelConfig& c, const EngineShape& s, bool cuda) {
  s.validate(c);
  ActivationLayout a{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    size_t offset = at;
    at += (bytes + 255) / 256 * 256;
    return offset;
  };
  const size_t T = s.max_tokens, B = s.max_batch;
  const size_t act = cuda ? 2 : 4;  // GEMM-side activations: fp16 on CUDA, fp32 on the CPU
  a.x = take(T * c.hidden_size * 4);           // float [T][hidden] residual stream
  a.h = take(T * c.hidden_size * act);         // [T][hidden] normed
  a.qkv = take(T * c.qkv_dim() * act);         // [T][(H+2KV)*d]
  a.attn = take(T * c.q_dim() * act);          // [T][H*d]
  a.mlp = take(T * c.mlp_in_dim() * act);      // [T][2*inter | inter]
  a.kv16 = cuda ? take(0) : take(T * 2 * c.kv_dim() * 2);  // half [T][k|v][KV*d] (CPU only)
  a.logits = take(B * c.vocab_size * 4);       // float [max_batch][vocab]
  a.meta = take(meta_ints(s) * 4);             // int32, see meta_ints
  a.history = take(B * s.max_context * 4);     // int32 [max_batch][max_context] token ids
  a.decode = cuda ? take(decode_partial_bytes(c, s)) : take(0);  // float split-K partials
  a.args = take(B * sizeof(SamplingArgs));     // SamplingArgs [max_batch]
  a.sampled = take(B * 4);                     // int32 [max_batch]
  a.inv_freq = take(size_t(c.head_dim / 2) * 4);  // float [d/2]
  a.total = at;
  return a;
}

static KVCacheConfig cache_config(const ModelConfig& c, const EngineShape& s) {
  s.validate(c);
  return {c.num_layers, s.max_context, c.num_kv_heads, c.head_dim, s.max_batch};
}

Engine::Engine(const ModelConfig& config, const Device& device, const EngineShape& shape,
               std::shared_ptr<VramTracker> tracker)
    : config_(config),
      shape_(shape),
      device_(device),
      specs_(weight_layout(config)),
      loaded_(specs_.size(), 0),
      weights_(weight_bytes(config), device, "weights", tracker, /*zero=*/false),
      cache_(cache_config(config, shape), device, weights_.tracker()),
      act_(activation_layout(config, shape, device.is_cuda())),
      activations_(act_.total, device, "activations", weights_.tracker(), /*zero=*/true),
      last_slots_(shape.max_batch),
      last_lengths_(shape.max_batch),
      slot_seen_(shape.max_batch),
      meta_host_(meta_ints(shape)) {
  if (device.is_cuda()) cuda_ = make_cuda_context(device, weights_.tracker());
  for (size_t i = 0; i < specs_.size(); ++i) spec_index_[specs_[i].name] = i;
  embed_ = weight("embed");
  pos_embed_ = weight("pos_embed");
  final_norm_w_ = weight("final_norm.weight");
  final_norm_b_ = weight("final_norm.bias");
  lm_head_ = config.tie_word_embeddings ? embed_ : weight("lm_head");
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const bool gated = config.mlp == MlpKind::SwiGLU;
    layers_.push_back({weight(p + "attn_norm.weight"), weight(p + "attn_norm.bias"),
                       weight(p + "qkv.weight"), weight(p + "qkv.bias"), weight(p + "o.weight"),
                       weight(p + "o.bias"), weight(p + "mlp_norm.weight"),
                       weight(p + "mlp_norm.bias"), weight(p + (gated ? "gate_up.weight" : "fc.weight")),
                       weight(p + (gated ? "gate_up.bias" : "fc.bias")), weight(p + "down.weight"),
                       weight(p + "down.bias")});
  }
  if (config.positions == PositionKind::Rope) {
    std::vector<float> inv(config.head_dim / 2);
    cpu::rope_inv_freq(inv.data(), config.head_dim, config.rope_theta, config.rope_scaling);
    copy_bytes(view<char>(act_.inv_freq), device, inv.data(), Device::cpu(), inv.size() * 4);
  }
}

Engine::~Engine() = default;

const half_t* Engine::weight(const std::string& name) const {
  auto it = spec_index_.find(name);
  if (it == spec_index_.end()) return nullptr;
  return reinterpret_cast<const half_t*>(weights_.as<char>() + specs_[it->second].offset);
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

void Engine::set_weight(const std::string& name, const half_t* data,
                        const std::vector<int64_t>& shape) {
  KVINFER_CHECK_ARG(!released(), "this engine was released");
  auto it = spec_index_.find(name);
  KVINFER_CHECK_ARG(it != spec_index_.end(), "model ", config_.architecture, " has no weight '",
                    name, "'");
  const TensorSpec& spec = specs_[it->second];
  KVINFER_CHECK_ARG(shape == spec.shape, "weight '", name, "' has shape ", shape_str(shape),
                    ", expected ", shape_str(spec.shape));
  copy_bytes(weights_.as<char>() + spec.offset, device_, data, Device::cpu(), spec.bytes());
  if (!loaded_[it->second]) ++loaded_count_;
  loaded_[it->second] = 1;
}

std::vector<std::string> Engine::missing_weights() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < specs_.size(); ++i)
    if (!loaded_[i]) out.push_back(specs_[i].name);
  return out;
}

void Engine::copy_logits(float* out, int rows) const {
  KVINFER_CHECK_ARG(rows >= 0 && rows <= shape_.max_batch, "rows=", rows, " must be in [0, ",
                    shape_.max_batch, "]");
  copy_bytes(out, Device::cpu(), view<float>(act_.logits), device_,
             sizeof(float) * size_t(rows) * config_.vocab_size);
}

void Engine::release() noexcept {
  weights_.reset();
  activations_.reset();
  cache_.release();
  cuda_.reset();
}

void Engine::validate_step(const int32_t* tokens, int total, const int32_t* seq_slots,
                           const int32_t* seq_starts, int batch) const {
  KVINFER_CHECK_ARG(!released(), "this engine was released");
  KVINFER_CHECK_ARG(batch >= 1 && batch <= shape_.max_batch, "batch=", batch,
                    " must be in [1, max_batch=", shape_.max_batch, "]");
  KVINFER_CHECK_ARG(total >= 1 && total <= shape_.max_tokens, "tokens in this step=", total,
                    " must be in [1, max_tokens=", shape_.max_tokens, "]");
  KVINFER_CHECK_ARG(seq_starts[0] == 0 && seq_starts[batch] == total, "seq_starts must run from 0 to ",
                    total, ", got ", seq_starts[0], " .. ", seq_starts[batch]);
  std::vector<uint8_t>& seen = slot_seen_;  // scratch: no allocation per step
  std::fill(seen.begin(), seen.end(), 0);
  for (int b = 0; b < batch; ++b) {
    const int slot = seq_slots[b], n = seq_starts[b + 1] - seq_starts[b];
    KVINFER_CHECK_ARG(slot >= 0 && slot < shape_.max_batch, "sequence ", b, ": slot=", slot,
                      " is out of range [0, ", shape_.max_batch, ")");
    KVINFER_CHECK_ARG(!seen[slot], "slot ", slot, " appears twice in one step");
    seen[slot] = 1;
    KVINFER_CHECK_ARG(n >= 1, "sequence ", b, " has ", n, " tokens; each needs at least 1");
    if (cache_.length(slot) + n > shape_.max_context)
      throw ContextOverflowError(str("sequence in slot ", slot, " holds ", cache_.length(slot),
                                     " tokens; ", n, " more exceed max_context=",
                                     shape_.max_context));
    KVINFER_CHECK_ARG(cache_.pending(slot) == 0, "slot ", slot, " has uncommitted appends");
  }
  for (int t = 0; t < total; ++t)
    KVINFER_CHECK_ARG(tokens[t] >= 0 && tokens[t] < config_.vocab_size, "token id ", tokens[t],
                      " at position ", t, " is out of range [0, ", config_.vocab_size, ")");
  if (loaded_count_ != specs_.size()) {
    auto missing = missing_weights();
    throw std::invalid_argument(str("weight '", missing.front(), "' was never loaded (", missing.size(),
                                    " missing)"));
  }
}

void Engine::forward(const int32_t* tokens, int total, const int32_t* seq_slots,
                     const int32_t* seq_starts, int batch, float* all_logits,
                     float* hidden_states) {
  validate_step(tokens, total, seq_slots, seq_starts, batch);
  if (device_.is_cuda())
    forward_cuda(tokens, total, seq_slots, seq_starts, batch, all_logits, hidden_states);
  else
    forward_cpu(tokens, total, seq_slots, seq_starts, batch, all_logits, hidden_states);
  for (int b = 0; b < batch; ++b) {
    last_slots_[b] = seq_slots[b];
    last_lengths_[b] = cache_.length(seq_slots[b]);
  }
  last_batch_ = batch;
}

void Engine::sample(const SamplingArgs* args, int batch, int32_t* out_tokens) {
  KVINFER_CHECK_ARG(!released(), "this engine was released");
  KVINFER_CHECK_ARG(batch == last_batch_, "sample: batch=", batch, " but the last forward had ",
                    last_batch_, " sequences");
  for (int b = 0; b < batch; ++b) {
    const SamplingArgs& a = args[b];
    KVINFER_CHECK_ARG(a.temperature >= 0 && a.top_k >= 0 && a.top_p > 0 && a.top_p <= 1 &&
                          a.min_p >= 0 && a.min_p <= 1 && a.repetition_penalty > 0,
                      "sampling arguments of row ", b, " are out of range");
  }
  if (device_.is_cuda()) return sample_cuda(args, batch, out_tokens);
  cpu::sample(view<float>(act_.logits), batch, config_.vocab_size, args, view<int32_t>(act_.history),
              shape_.max_context, last_slots_.data(), last_lengths_.data(), out_tokens);
  last_batch_ = 0;  // the logits are consumed
}

void Engine::norm_cpu(const float* x, const half_t* w, const half_t* b, float* y, int rows) const {
  if (config_.norm == NormKind::RMSNorm)
    cpu::rms_norm(x, w, y, rows, config_.hidden_size, config_.norm_eps);
  else
    cpu::layer_norm(x, w, b, y, rows, config_.hidden_size, config_.norm_eps);
}

void Engine::forward_cpu(const int32_t* tokens, int T, const int32_t* seq_slots,
                         const int32_t* seq_starts, int batch, float* all_logits,
                         float* hidden_states) {
  const ModelConfig& c = config_;
  float* x = view<float>(act_.x);        // [T][hidden]
  float* h = view<float>(act_.h);        // [T][hidden]
  float* qkv = view<float>(act_.qkv);    // [T][qkv_dim]
  float* attn = view<float>(act_.attn);  // [T][q_dim]
  float* mlp = view<float>(act_.mlp);    // [T][mlp_in_dim]
  half_t* kv16 = view<half_t>(act_.kv16);  // [T][2][kv_dim]
  float* logits = view<float>(act_.logits);  // [max_batch][vocab]
  int32_t* positions = view<int32_t>(act_.meta);  // [T]
  int32_t* token_slots = positions + T;           // [T]
  const float* inv_freq = view<float>(act_.inv_freq);

  for (int b = 0; b < batch; ++b)
    for (int t = seq_starts[b]; t < seq_starts[b + 1]; ++t) {
      positions[t] = cache_.length(seq_slots[b]) + (t - seq_starts[b]);
      token_slots[t] = seq_slots[b];
    }
  const int H = c.hidden_size, qkv_dim = c.qkv_dim(), q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const int I = c.intermediate_size;
  cpu::embedding(tokens, embed_, pos_embed_, positions, token_slots, view<int32_t>(act_.history),
                 shape_.max_context, x, T, H);
  auto capture = [&](int index) {
    if (hidden_states) std::memcpy(hidden_states + int64_t(index) * T * H, x, sizeof(float) * T * H);
  };
  capture(0);

  const KVLayout layout = cache_.layout();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    norm_cpu(x, w.attn_norm_w, w.attn_norm_b, h, T);
    cpu::matmul(h, H, w.qkv_w, w.qkv_b, qkv, qkv_dim, T, qkv_dim, H, false);
    if (c.positions == PositionKind::Rope)
      cpu::rope(qkv, qkv + q_dim, qkv_dim, positions, T, c.num_heads, c.num_kv_heads, c.head_dim,
                inv_freq, 1.0f);
    for (int t = 0; t < T; ++t) {
      simd::f32_to_f16(qkv + int64_t(t) * qkv_dim + q_dim, kv16 + int64_t(t) * 2 * kv_dim, kv_dim);
      simd::f32_to_f16(qkv + int64_t(t) * qkv_dim + q_dim + kv_dim,
                       kv16 + int64_t(t) * 2 * kv_dim + kv_dim, kv_dim);
    }
    for (int b = 0; b < batch; ++b) cache_.begin_append(l, seq_slots[b], seq_starts[b + 1] - seq_starts[b]);
    cpu::kv_append(cache_.k_layer(l), cache_.v_layer(l), layout, c.num_kv_heads, c.head_dim, kv16,
                   kv16 + kv_dim, 2 * kv_dim, seq_slots, seq_starts, cache_.lengths().data(), batch);
    cpu::attention(qkv, qkv_dim, cache_.k_layer(l), cache_.v_layer(l), layout, token_slots,
                   positions, T, c.num_heads, c.num_kv_heads, c.head_dim, scale, attn, q_dim);
    cpu::matmul(attn, q_dim, w.o_w, w.o_b, x, H, T, H, q_dim, /*accumulate=*/true);

    norm_cpu(x, w.mlp_norm_w, w.mlp_norm_b, h, T);
    cpu::matmul(h, H, w.mlp_in_w, w.mlp_in_b, mlp, c.mlp_in_dim(), T, c.mlp_in_dim(), H, false);
    if (c.mlp == MlpKind::SwiGLU)
      cpu::silu_mul(mlp, 2 * I, mlp, 2 * I, T, I);  // in place: row t's first half
    else
      cpu::gelu_new(mlp, int64_t(T) * I);
    cpu::matmul(mlp, c.mlp_in_dim(), w.down_w, w.down_b, x, H, T, H, I, /*accumulate=*/true);
    capture(l + 1);
  }

  if (all_logits) {
    norm_cpu(x, final_norm_w_, final_norm_b_, h, T);
    cpu::matmul(h, H, lm_head_, nullptr, all_logits, c.vocab_size, T, c.vocab_size, H, false);
    for (int b = 0; b < batch; ++b)  // the logits buffer holds each sequence's last row either way
      std::memcpy(logits + int64_t(b) * c.vocab_size,
                  all_logits + int64_t(seq_starts[b + 1] - 1) * c.vocab_size, 4 * size_t(c.vocab_size));
  } else {
    for (int b = 0; b < batch; ++b)
      norm_cpu(x + int64_t(seq_starts[b + 1] - 1) * H, final_norm_w_, final_norm_b_, h + int64_t(b) * H, 1);
    cpu::matmul(h, H, lm_head_, nullptr, logits, c.vocab_size, batch, c.vocab_size, H, false);
  }
  cache_.commit(seq_slots, seq_starts, batch);
}

}  // namespace kvinfer
