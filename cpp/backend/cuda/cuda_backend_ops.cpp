// The layer recipe's ops on the CUDA backend (cuda_backend.h): skinny GEMMs with their fusions for
// steps of few rows, cuBLAS and separate kernels for larger ones, attention, logits and sampling.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/elementwise.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kv_write.h"
#include "backend/cuda/prompt_mlp.h"
#include "backend/cuda/sampling.h"
#include "core/cuda_check.h"

namespace kvinfer::cuda_backend {

namespace {

// Widest projection output (N) whose skinny GEMM applies its input's activation itself.
constexpr int kFusedActivationMaxOut = 1024;

// Fewest rows of a step whose gate/up projection writes silu(gate) * up itself (prompt_mlp.h): its
// tiles of 128 rows leave most SMs idle at a few hundred rows (measured at 2048 rows only:
// docs/dev/prefill-attention-notes.md, run 12).
constexpr int kPromptMlpMinRows = 512;

// Most rows of a step whose skinny GEMMs fuse RMSNorm, SiLU*mul and RoPE + K/V write (the same
// bits either way). Fused, every block of 64 weight rows builds its normed input tile from fp32
// rows (twice the bytes of fp16 ones): cheap at a few rows, slower than the kernels it saves at 64
// (measured: docs/dev/step-runtime-notes.md, run 20).
constexpr int kSkinnyFuseMaxRows = 16;

}  // namespace

void CudaBackend::embed(const half_t* table, const half_t* pos_table, const StepContext& s) {
  cuda::embedding(s.arrays, s.num_tokens, view<int32_t>(act_.sampled), table, pos_table,
                  view<int32_t>(act_.history), shape_.max_context, x(), c_.hidden_size,
                  skinny(s.num_tokens) ? x_ss() : nullptr, stream_);
}

void CudaBackend::attention_inputs(int layer, const Norm& norm, const Linear& w, const HeadNorms& head_norms,
                                   const StepContext& s) {
  const int T = s.num_tokens;
  const float* inv_freq = c_.positions == PositionKind::Rope ? view<float>(act_.inv_freq) : nullptr;
  half_t* qkv = buffer(Buffer::qkv);
  if (skinny(T)) {
    // RoPE and the K/V write in the projection's epilogue where the Hopper kernel runs it (not after
    // q/k-norm, which needs a whole head)
    cuda::SkinnyOutput o{cuda::SkinnyOut::rope_kv, qkv, c_.qkv_dim(), w.bias};
    o.rope = cuda::SkinnyRopeKV{c_.num_heads, c_.num_kv_heads, c_.head_dim, inv_freq, cache_.k_layer(layer),
                                cache_.v_layer(layer), cache_.layout(), s.arrays};
    if (!head_norms.present() && T <= kSkinnyFuseMaxRows && cuda::skinny_paired_supported(w.out, o))
      return skinny_gemm(w, T, normed_input(norm, nullptr, T), o);
    skinny_gemm(w, T, normed_input(norm, nullptr, T), cuda::SkinnyOutput{cuda::SkinnyOut::half, qkv, c_.qkv_dim(), w.bias});
  } else {
    norm_gemm(norm, w, qkv, c_.qkv_dim(), T);
  }
  if (head_norms.present())
    cuda::head_rms_norm(qkv, c_.qkv_dim(), T, c_.num_heads, c_.num_kv_heads, c_.head_dim, head_norms.q.weight,
                        head_norms.k.weight, c_.norm_eps, stream_);
  cuda::rope_kv_write(qkv, c_.qkv_dim(), c_.num_heads, c_.num_kv_heads, c_.head_dim, inv_freq,
                      cache_.k_layer(layer), cache_.v_layer(layer), cache_.layout(), s.arrays, T, stream_);
}

void CudaBackend::attention(int layer, const StepContext& s) {
  const float scale = c_.attention_scale();
  const half_t* qkv = buffer(Buffer::qkv);
  const auto decode = [&](int seqs, cuda::DecodeLengths lengths) {
    cuda::attention_decode(qkv, c_.qkv_dim(), cache_.k_layer(layer), cache_.v_layer(layer), cache_.layout(),
                           s.arrays.block_tables, s.arrays.positions, seqs, c_.num_heads, c_.num_kv_heads,
                           c_.head_dim, scale, view<float>(act_.decode), buffer(Buffer::attn), c_.q_dim(),
                           stream_, splits_, lengths);
  };
  if (s.decode()) return decode(s.num_seqs, cuda::DecodeLengths{s.max_keys, s.total_keys});
  // A mixed step (no batch invariance to keep): its leading one-token sequences through the decode
  // kernel, which shares each KV head's reads among its query heads and splits long contexts over
  // the SMs; the prefill kernel would give each of them a query tile per head for one row.
  // (only where the decode kernel runs this model's heads: the prefill kernel takes every head_dim)
  const int d = split_decodes() ? s.leading_decodes : 0;
  if (d > 0) decode(d, cuda::DecodeLengths{s.leading_max_keys, s.leading_total_keys});
  const int64_t table_offset = int64_t(d) * cache_.layout().table_stride;  // the prompts' table rows
  // A graph's kernel is chosen for the longest sequence its steps may hold (same bits either way)
  const cuda::PrefillKernel kernel = cuda::prefill_kernel_for(
      c_.head_dim, cache_.layout(), graphs_.capturing_tokens() > 0 ? graphs_.capturing_tokens() : s.max_query_len);
  cuda::attention_prefill(qkv, c_.qkv_dim(), cache_.k_layer(layer), cache_.v_layer(layer), cache_.layout(),
                          s.arrays.block_tables + table_offset, s.arrays.query_starts + d, s.arrays.positions,
                          s.num_seqs - d, s.max_query_len, c_.num_heads, c_.num_kv_heads, c_.head_dim, scale,
                          buffer(Buffer::attn), c_.q_dim(), stream_, kernel);
  graphs_.attention_launched(stream_, kernel);
}

bool CudaBackend::keep_logit_rows(const StepContext& s) {
  // KVINFER_KEEP_ROWS=0 (read at each prompt step, so a graph captures either form) runs the last
  // layer on every row: the A/B of docs/dev/prefill-attention-notes.md, run 16
  const char* off = std::getenv("KVINFER_KEEP_ROWS");
  if (off && std::strcmp(off, "0") == 0) return false;
  // by way of the logits buffer (free until the logits): padding rows repeat a row, so the rows
  // are not always ascending, and a copy in place could overwrite a row before it is read
  const int R = s.num_logit_rows, H = c_.hidden_size, A = c_.q_dim();
  const size_t x_bytes = sizeof(float) * size_t(R) * H, attn_bytes = sizeof(half_t) * size_t(R) * A;
  if (R > shape_.max_batch || x_bytes + attn_bytes > sizeof(float) * size_t(shape_.max_batch) * c_.vocab_size)
    return false;
  float* const x_rows = view<float>(act_.logits);
  half_t* const attn_rows = reinterpret_cast<half_t*>(x_rows + int64_t(R) * H);
  cuda::gather_rows(x(), buffer(Buffer::attn), A, s.arrays.logit_rows, R, H, x_rows, attn_rows, stream_);
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(x(), x_rows, x_bytes, cudaMemcpyDeviceToDevice, stream_));
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(buffer(Buffer::attn), attn_rows, attn_bytes, cudaMemcpyDeviceToDevice, stream_));
  return true;
}

void CudaBackend::attention_output(const Linear& w, const Norm&, const StepContext& s) {
  const int T = s.num_tokens;
  if (skinny(T)) {
    cuda::SkinnyInput i{cuda::SkinnyIn::half, buffer(Buffer::attn), c_.q_dim()};
    cuda::SkinnyOutput o{cuda::SkinnyOut::residual, x(), c_.hidden_size, w.bias, x_ss()};
    return skinny_gemm(w, T, i, o);
  }
  residual_gemm(buffer(Buffer::attn), c_.q_dim(), w, T);
}

void CudaBackend::mlp(const Norm& norm, const Linear& in, Activation act, const Linear& down, const Norm&,
                      const StepContext& s) {
  const int T = s.num_tokens;
  half_t* mlp = buffer(Buffer::mlp);
  const int64_t ld = stride(Buffer::mlp);
  if (!skinny(T)) {
    if (act == Activation::silu_mul && !in.bias && T >= kPromptMlpMinRows && cuda::prompt_mlp_enabled() &&
        cuda::prompt_mlp_gate_up_supported(down.in, in.in)) {  // silu(gate) * up in the GEMM's epilogue
      norm_rows(nullptr, norm, T);
      cuda::prompt_mlp_gate_up(h(), c_.hidden_size, in.weight, down.in, in.in, T, mlp, ld, stream_);
      return residual_gemm(mlp, ld, down, T);
    }
    norm_gemm(norm, in, mlp, ld, T);
    activate(act, mlp, ld, T, down.in);
    return residual_gemm(mlp, ld, down, T);
  }
  const cuda::SkinnyOutput residual{cuda::SkinnyOut::residual, x(), c_.hidden_size, down.bias, x_ss()};
  // SwiGLU: silu(gate) * up in the gate/up projection's epilogue where the Hopper kernel runs it
  const cuda::SkinnyOutput activated{cuda::SkinnyOut::silu_mul, mlp, ld, in.bias};
  const bool paired = act == Activation::silu_mul && cuda::skinny_paired_supported(in.out, activated);
  if (paired && T <= kSkinnyFuseMaxRows) {
    skinny_gemm(in, T, normed_input(norm, nullptr, T), activated);
    return skinny_gemm(down, T, cuda::SkinnyInput{cuda::SkinnyIn::half, mlp, ld}, residual);
  }
  skinny_gemm(in, T, normed_input(norm, nullptr, T), cuda::SkinnyOutput{cuda::SkinnyOut::half, mlp, ld, in.bias});
  // Fused into the GEMM, the activation is recomputed by each of its N / 16 weight tiles for
  // the whole input row: cheap for a narrow output (SmolLM2's down projection, 36 tiles),
  // slower than a pass of its own for a wide one (Llama-3.2-1B's, 128 tiles; measured in
  // docs/dev/step-runtime-notes.md, runs 13-14). Not where the paired epilogue runs
  // smaller steps: an activated input takes another kernel than fp16 rows (another order over
  // K), and a row's bits must not depend on how many rows share its step.
  const bool fuse = !paired && down.out <= kFusedActivationMaxOut;
  if (!fuse) activate(act, mlp, ld, T, down.in);
  const cuda::SkinnyIn kind = fuse && act == Activation::silu_mul   ? cuda::SkinnyIn::silu_mul
                              : fuse && act == Activation::gelu_new ? cuda::SkinnyIn::gelu
                                                                    : cuda::SkinnyIn::half;
  skinny_gemm(down, T, cuda::SkinnyInput{kind, mlp, ld, /*up_offset=*/down.in}, residual);
}

void CudaBackend::logits(const Norm& norm, const Linear& w, const StepContext& s) {
  const int R = s.num_logit_rows, H = c_.hidden_size, V = c_.vocab_size;
  float* logits = view<float>(act_.logits);
  if (R == 0) return;  // a prompt chunk that samples nothing
  const int32_t* rows = s.rows_kept ? nullptr : s.arrays.logit_rows;  // x's rows of the logits
  argmax_ready_ = skinny(s.num_tokens) && R <= shape_.max_batch;
  if (argmax_ready_) {
    cuda::SkinnyOutput o{cuda::SkinnyOut::logits, logits, V, nullptr, nullptr, argmax()};
    skinny_gemm(w, R, normed_input(norm, rows, R), o);
    if (s.logits_out)  // the caller's rows (a padded step has more)
      KVINFER_CUDA_CHECK(cudaMemcpyAsync(s.logits_out, logits, sizeof(float) * s.caller_rows * V,
                                         cudaMemcpyDeviceToHost, stream_));
    return;
  }
  norm_rows(rows, norm, R);
  for (int r0 = 0; r0 < R; r0 += shape_.max_batch) {  // more rows than max_batch: logits only, in groups
    const int rows = std::min(shape_.max_batch, R - r0);
    cuda::gemm(blas_, h() + int64_t(r0) * H, H, w.weight, logits, true, V, rows, V, H, 0.0f);
    const int wanted = std::min(rows, s.caller_rows - r0);  // the caller's rows (a padded step has more)
    if (s.logits_out && wanted > 0)
      KVINFER_CUDA_CHECK(cudaMemcpyAsync(s.logits_out + int64_t(r0) * V, logits, sizeof(float) * wanted * V,
                                         cudaMemcpyDeviceToHost, stream_));
  }
}

void CudaBackend::sample(const StepContext& s) {
  cuda::sample(view<float>(act_.logits), s.num_logit_rows, c_.vocab_size, s.arrays, view<int32_t>(act_.history),
               shape_.max_context, argmax_ready_ ? argmax() : nullptr, argmax_tiles(), view<int32_t>(act_.sampled),
               stream_);
}

void CudaBackend::capture_hidden(int index, const StepContext& s) {
  if (!s.hidden_out) return;
  const size_t n = size_t(s.num_tokens) * c_.hidden_size;
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(s.hidden_out + index * n, x(), sizeof(float) * n,
                                     cudaMemcpyDeviceToHost, stream_));
}

void CudaBackend::norm_gemm(const Norm& norm, const Linear& w, half_t* out, int64_t ld, int T) {
  norm_rows(nullptr, norm, T);
  cuda::gemm(blas_, h(), c_.hidden_size, w.weight, out, false, ld, T, w.out, w.in, 0.0f);
  if (w.bias) cuda::bias_add(out, ld, w.bias, T, w.out, stream_);
}

void CudaBackend::residual_gemm(const half_t* src, int64_t ld, const Linear& w, int T) {
  cuda::gemm(blas_, src, ld, w.weight, x(), true, c_.hidden_size, T, w.out, w.in, 1.0f);
  if (w.bias) cuda::bias_add(x(), c_.hidden_size, w.bias, T, w.out, stream_);
}

void CudaBackend::activate(Activation act, half_t* src, int64_t ld, int T, int in) {
  if (act == Activation::silu_mul) cuda::silu_mul(src, ld, src, ld, T, in, stream_);
  if (act == Activation::gelu_new) cuda::gelu_new(src, int64_t(T) * ld, stream_);
}

cuda::SkinnyInput CudaBackend::normed_input(const Norm& norm, const int32_t* rows, int count) {
  if (c_.norm == NormKind::RMSNorm && c_.hidden_size % cuda::kSkinnyTile == 0) {
    cuda::SkinnyInput in{cuda::SkinnyIn::rms_norm, x(), c_.hidden_size};
    in.rows = rows, in.ss = x_ss(), in.norm_weight = norm.weight, in.eps = c_.norm_eps;
    in.norm_in_kernel = count <= kSkinnyFuseMaxRows;
    return in;
  }
  norm_rows(rows, norm, count);
  return cuda::SkinnyInput{cuda::SkinnyIn::half, h(), c_.hidden_size};
}

void CudaBackend::skinny_gemm(const Linear& w, int rows, const cuda::SkinnyInput& in, const cuda::SkinnyOutput& out) {
  cuda::skinny_gemm(w.weight, w.out, w.in, rows, in, out,
                    cuda::SkinnyWorkspace{view<float>(act_.skinny), view<int32_t>(act_.counters),
                                          view<half_t>(act_.normed)},
                    stream_);
}

void CudaBackend::norm_rows(const int32_t* rows, const Norm& n, int count) {
  if (c_.norm == NormKind::RMSNorm)
    cuda::rms_norm(x(), rows, n.weight, h(), count, c_.hidden_size, c_.norm_eps, stream_);
  else
    cuda::layer_norm(x(), rows, n.weight, n.bias, h(), count, c_.hidden_size, c_.norm_eps, stream_);
}

}  // namespace kvinfer::cuda_backend
