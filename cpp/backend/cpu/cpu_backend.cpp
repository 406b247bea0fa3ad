// The CPU backend: the layer recipe's ops on fp32 activations (weights and K/V fp16), through the
// reference ops of cpu_ops.h. A step runs inside launch(); its fields are read where the runner
// staged them.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/sampling.h"
#include "backend/cpu/simd.h"
#include "core/device_memory.h"
#include "runtime/backend.h"

namespace kvinfer {

namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const BackendInit& init)
      : c_(init.config),
        shape_(init.shape),
        cache_(init.cache),
        act_(activation_layout(init.config, init.shape, DeviceKind::CPU)),
        memory_(act_.total, Device::cpu(), "activations", init.tracker, /*zero=*/true) {
    for (auto& out : out_) out.resize(shape_.max_batch);
    if (c_.positions == PositionKind::Rope)
      cpu::rope_inv_freq(view<float>(act_.inv_freq), c_.head_dim, c_.rope_theta, c_.rope_scaling);
  }

  void* staging(int) override { return view<char>(act_.step); }
  StepArrays upload(const StepLayout& layout, int) override { return layout.at(view<char>(act_.step)); }
  void finish(int rows, int ticket) override {
    std::memcpy(out_[ticket].data(), view<int32_t>(act_.sampled), 4 * size_t(rows));
  }
  const int32_t* wait(int ticket) override { return out_[ticket].data(); }
  void copy_in_cache(half_t* dst, const half_t* src, int64_t elements) override {
    std::memcpy(dst, src, sizeof(half_t) * static_cast<size_t>(elements));
  }

  void embed(const half_t* table, const half_t* pos_table, const StepContext& s) override {
    const int32_t* sampled = view<int32_t>(act_.sampled);
    for (int t = 0; t < s.num_tokens; ++t)  // tokens the previous step sampled
      if (s.arrays.prev_sample_row[t] >= 0) s.arrays.tokens[t] = sampled[s.arrays.prev_sample_row[t]];
    cpu::embedding(s.arrays, s.num_tokens, table, pos_table, view<int32_t>(act_.history),
                   shape_.max_context, x(), c_.hidden_size);
    if (c_.embed_scale != 1.0f)
      for (int64_t i = 0, n = int64_t(s.num_tokens) * c_.hidden_size; i < n; ++i) x()[i] *= c_.embed_scale;
  }

  void attention_inputs(int layer, const Norm& norm, const Linear& w, const HeadNorms& head_norms,
                        const StepContext& s) override {
    const int T = s.num_tokens, q_dim = c_.q_dim(), kv_dim = c_.kv_dim(), qkv_dim = c_.qkv_dim();
    float* qkv = buffer(Buffer::qkv);
    norm_rows(x(), norm, h(), T);
    cpu::matmul(h(), c_.hidden_size, w.weight, w.bias, qkv, qkv_dim, T, w.out, w.in, false);
    if (head_norms.present()) {
      cpu::head_rms_norm(qkv, qkv_dim, T, c_.num_heads, c_.head_dim, head_norms.q.weight, c_.norm_eps);
      cpu::head_rms_norm(qkv + q_dim, qkv_dim, T, c_.num_kv_heads, c_.head_dim, head_norms.k.weight, c_.norm_eps);
    }
    if (c_.positions == PositionKind::Rope)
      cpu::rope(qkv, qkv + q_dim, qkv_dim, s.arrays.positions, T, c_.num_heads, c_.num_kv_heads,
                c_.head_dim, view<float>(act_.inv_freq));
    half_t* kv16 = view<half_t>(act_.kv16);  // [T][k | v][kv_dim]
    for (int t = 0; t < T; ++t) {
      simd::f32_to_f16(qkv + int64_t(t) * qkv_dim + q_dim, kv16 + int64_t(t) * 2 * kv_dim, kv_dim);
      simd::f32_to_f16(qkv + int64_t(t) * qkv_dim + q_dim + kv_dim, kv16 + int64_t(t) * 2 * kv_dim + kv_dim, kv_dim);
    }
    cpu::kv_write(cache_.k_layer(layer), cache_.v_layer(layer), cache_.layout(), c_.num_kv_heads,
                  c_.head_dim, kv16, kv16 + kv_dim, 2 * kv_dim, s.arrays, T);
  }

  void attention(int layer, const StepContext& s) override {
    cpu::attention(buffer(Buffer::qkv), c_.qkv_dim(), cache_.k_layer(layer), cache_.v_layer(layer),
                   cache_.layout(), s.arrays, s.num_tokens, c_.num_heads, c_.num_kv_heads, c_.head_dim,
                   c_.attention_scale(), buffer(Buffer::attn), c_.q_dim(), c_.attn_softcap);
  }

  bool keep_logit_rows(const StepContext& s) override {
    const int R = s.num_logit_rows, H = c_.hidden_size, A = c_.q_dim();
    for (int r = 0; r < R; ++r)  // ascending rows (Runner checks): row r is moved before it is overwritten
      if (s.arrays.logit_rows[r] < r || (r > 0 && s.arrays.logit_rows[r] <= s.arrays.logit_rows[r - 1])) return false;
    for (int r = 0; r < R; ++r) {
      const int64_t from = s.arrays.logit_rows[r];
      if (from == r) continue;
      std::memcpy(x() + int64_t(r) * H, x() + from * H, sizeof(float) * size_t(H));
      std::memcpy(buffer(Buffer::attn) + int64_t(r) * A, buffer(Buffer::attn) + from * A, sizeof(float) * size_t(A));
    }
    return true;
  }

  void attention_output(const Linear& w, const Norm& post, const StepContext& s) override {
    project_residual(buffer(Buffer::attn), c_.q_dim(), w, post, s.num_tokens);
  }

  void mlp(const Norm& norm, const Linear& in, Activation act, const Linear& down, const Norm& post,
           const StepContext& s) override {
    const int T = s.num_tokens;
    float* mlp = buffer(Buffer::mlp);
    const int64_t ld = stride(Buffer::mlp);
    norm_rows(x(), norm, h(), T);
    cpu::matmul(h(), c_.hidden_size, in.weight, in.bias, mlp, ld, T, in.out, in.in, false);
    if (act == Activation::silu_mul) cpu::silu_mul(mlp, ld, mlp, ld, T, down.in);  // in place: row t's first half
    if (act == Activation::gelu_mul) cpu::gelu_mul(mlp, ld, mlp, ld, T, down.in);
    if (act == Activation::gelu_new) cpu::gelu_new(mlp, int64_t(T) * ld);
    project_residual(mlp, ld, down, post, T);
  }

  void logits(const Norm& norm, const Linear& w, const StepContext& s) override {
    const int R = s.num_logit_rows, H = c_.hidden_size, V = c_.vocab_size;
    if (R == 0) return;  // a prompt chunk that samples nothing
    for (int r = 0; r < R; ++r)
      norm_rows(x() + int64_t(s.rows_kept ? r : s.arrays.logit_rows[r]) * H, norm, h() + int64_t(r) * H, 1);
    // straight into the caller's rows when it asked for them (there may be more than max_batch)
    float* out = s.logits_out && !s.sample ? s.logits_out : view<float>(act_.logits);
    cpu::matmul(h(), H, w.weight, w.bias, out, V, R, V, H, false);
    if (c_.logit_softcap > 0) cpu::softcap(out, int64_t(R) * V, c_.logit_softcap);
    if (s.logits_out && s.sample) std::memcpy(s.logits_out, out, sizeof(float) * size_t(R) * V);
  }

  void sample(const StepContext& s) override {
    cpu::sample(view<float>(act_.logits), s.num_logit_rows, c_.vocab_size, s.arrays,
                view<int32_t>(act_.history), shape_.max_context, view<int32_t>(act_.sampled));
  }

  void capture_hidden(int index, const StepContext& s) override {
    if (!s.hidden_out) return;
    const size_t n = size_t(s.num_tokens) * c_.hidden_size;
    std::memcpy(s.hidden_out + index * n, x(), sizeof(float) * n);
  }

 private:
  template <class T>
  T* view(size_t offset) const { return reinterpret_cast<T*>(memory_.as<char>() + offset); }
  float* x() const { return view<float>(act_.x); }
  float* h() const { return view<float>(act_.h); }
  float* buffer(Buffer b) const { return view<float>(buffer_offset(act_, b)); }
  int64_t stride(Buffer b) const { return buffer_stride(c_, b); }
  // x += post(in W^T + bias): straight into the residual stream, or through h where a post-norm
  // comes first
  void project_residual(const float* in, int64_t ld, const Linear& w, const Norm& post, int T) const {
    if (!post.weight) return cpu::matmul(in, ld, w.weight, w.bias, x(), c_.hidden_size, T, w.out, w.in, true);
    const int H = c_.hidden_size;
    cpu::matmul(in, ld, w.weight, w.bias, h(), H, T, w.out, w.in, false);
    cpu::rms_norm(h(), post.weight, h(), T, H, c_.norm_eps);  // (in place: each row read before written)
    for (int64_t i = 0, n = int64_t(T) * H; i < n; ++i) x()[i] += h()[i];
  }
  void norm_rows(const float* in, const Norm& n, float* out, int rows) const {
    if (c_.norm == NormKind::RMSNorm) cpu::rms_norm(in, n.weight, out, rows, c_.hidden_size, c_.norm_eps);
    else cpu::layer_norm(in, n.weight, n.bias, out, rows, c_.hidden_size, c_.norm_eps);
  }

  const ModelConfig& c_;
  RunnerShape shape_;
  const KVCache& cache_;
  ActivationLayout act_;
  DeviceMemory memory_;
  std::array<std::vector<int32_t>, kTickets> out_;  // sampled ids per ticket
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const BackendInit& init) {
  return std::make_unique<CpuBackend>(init);
}

}  // namespace kvinfer
