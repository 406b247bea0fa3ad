// The CUDA backend: the layer recipe's ops on one stream with nothing allocated per step. fp16
// feeds every GEMM (fp32 accumulation); the residual stream stays fp32 and the output and down
// projections accumulate into it. Steps of at most kSkinnyMaxRows rows (decode) run every
// projection as a skinny GEMM with the norm, the MLP activation, the residual add and the LM
// head's argmax fused in (skinny_gemm.h); larger steps use cuBLAS and separate kernels. A step's
// fields go up in one asynchronous copy from pinned staging, its sampled ids come down into pinned
// memory, and an event per ticket says when they are there. Decode steps and padded prompt steps
// replay CUDA graphs captured at load (step_graphs.h).
//
// The class: here; its lifecycle, staging, graphs and sampled ids: cuda_backend.cpp; the layer
// recipe's ops (embedding, projections, attention, MLP, logits, sampling): cuda_backend_ops.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <vector>

#include "backend/cuda/attention.h"
#include "backend/cuda/skinny_gemm.h"
#include "backend/cuda/step_graphs.h"
#include "core/cublas_loader.h"
#include "core/device_memory.h"
#include "runtime/backend.h"

namespace kvinfer::cuda_backend {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendInit& init);
  ~CudaBackend() override { destroy(); }

  void* staging(int ticket) override { return staging_[ticket]; }

  StepArrays upload(const StepLayout& layout, int ticket) override;

  int graph_batch(int num_seqs) const override { return graphs_.decode_batch(num_seqs); }

  PromptShape prompt_shape(int num_tokens, int num_rows, int leading_decodes) const override;

  void run(const StepContext& step, const Recipe& recipe) override;

  GraphStats capture_graphs(const Recipe& recipe) override;

  void finish(int rows, int ticket) override;

  void copy_in_cache(half_t* dst, const half_t* src, int64_t elements) override;

  const int32_t* wait(int ticket) override;

  void drain() noexcept override;

  // ---- the recipe's ops (cuda_backend_ops.cpp) -----------------------------------------------
  void embed(const half_t* table, const half_t* pos_table, const StepContext& s) override;

  void attention_inputs(int layer, const Norm& norm, const Linear& w, const HeadNorms& head_norms,
                        const StepContext& s) override;

  void attention(int layer, const StepContext& s) override;

  // (post norms are refused at construction: not on CUDA yet)
  void attention_output(const Linear& w, const Norm& post, const StepContext& s) override;

  void mlp(const Norm& norm, const Linear& in, Activation act, const Linear& down, const Norm& post,
           const StepContext& s) override;

  bool keep_logit_rows(const StepContext& s) override;
  void logits(const Norm& norm, const Linear& w, const StepContext& s) override;

  void sample(const StepContext& s) override;

  void capture_hidden(int index, const StepContext& s) override;

 private:
  bool split_decodes() const {
    return !batch_invariant_ && cuda::attention_decode_supports(c_.head_dim, c_.num_heads, c_.num_kv_heads);
  }

  template <class T>
  T* view(size_t offset) const { return reinterpret_cast<T*>(memory_.as<char>() + offset); }
  float* x() const { return view<float>(act_.x); }
  half_t* h() const { return view<half_t>(act_.h); }
  half_t* buffer(Buffer b) const { return view<half_t>(buffer_offset(act_, b)); }
  int64_t stride(Buffer b) const { return buffer_stride(c_, b); }
  // out = norm(x) W^T + bias by cuBLAS (steps of many rows)
  void norm_gemm(const Norm& norm, const Linear& w, half_t* out, int64_t ld, int T);

  // x += src W^T + bias by cuBLAS (steps of many rows)
  void residual_gemm(const half_t* src, int64_t ld, const Linear& w, int T);

  // The activation in place, in the first `in` columns of each of T rows (silu_mul reads the up
  // half at + in).
  void activate(Activation act, half_t* src, int64_t ld, int T, int in);

  // Steps of few rows take the skinny GEMMs, where every projection's K and the residual width
  // allow 16-byte loads and 16-column sums of squares (without batch invariance: up to
  // kCublasDecodeMinRows rows; cuBLAS is faster from there).
  bool skinny(int rows) const {
    const bool shapes = c_.hidden_size % cuda::kSkinnyTile == 0 && c_.q_dim() % 8 == 0 &&
                        c_.intermediate_size % 8 == 0;
    return shapes && rows <= cuda::kSkinnyMaxRows && (batch_invariant_ || rows < cuda::kCublasDecodeMinRows);
  }
  float* x_ss() const { return view<float>(act_.x_ss); }
  int2* argmax() const { return view<int2>(act_.argmax); }
  int argmax_tiles() const { return (c_.vocab_size + cuda::kSkinnyTile - 1) / cuda::kSkinnyTile; }

  // The input of a skinny GEMM that normalises rows of x (rows[i], or i): RMSNorm fused in, from the
  // sums of squares the producers of x left; LayerNorm into h first.
  cuda::SkinnyInput normed_input(const Norm& norm, const int32_t* rows, int count);

  void skinny_gemm(const Linear& w, int rows, const cuda::SkinnyInput& in, const cuda::SkinnyOutput& out);

  // h[i] = norm(x[rows ? rows[i] : i]) for n rows
  void norm_rows(const int32_t* rows, const Norm& n, int count);

  // A valid decode step of b sequences, uploaded: token 0 at position 0 of slots 0..b-1, greedy,
  // all in KV block 0. (It writes position 0 of block 0, which holds nothing yet when graphs are
  // captured; every dummy sequence writes the same values there.)
  StepContext dummy_decode(int b);

  // Sequences a padded prompt step's layout leaves room for: the fields' offsets depend on it, and
  // a graph's kernels read them where they were at capture (StepPadding::seq_room).
  int prompt_seq_room() const { return shape_.max_batch; }

  // A prompt step of `tokens` (padding but for token 0 at position 0 of slot 0, KV block 0, as in
  // dummy_decode) that samples `rows` rows (greedy, all of token 0), uploaded, in the layout of
  // the steps that will replay it.
  StepContext dummy_prompt(int tokens, int rows);

  void destroy() noexcept;

  const ModelConfig& c_;
  RunnerShape shape_;
  Device device_;
  const KVCache& cache_;
  const bool batch_invariant_;  // RunnerOptions::batch_invariant
  ActivationLayout act_;
  cuda::DecodeSplits splits_;  // the model's decode chunking
  size_t stage_bytes_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  DeviceMemory workspace_;
  DeviceMemory memory_;
  std::array<void*, kTickets> staging_{};
  std::array<int32_t*, kTickets> out_{};
  std::array<cudaEvent_t, kTickets> done_{};
  cuda::StepGraphs graphs_;
  std::vector<int> prompt_ladder_;  // token counts prompt steps are padded to
  std::vector<int> prompt_rows_;    // sampled rows they are padded to
  bool argmax_ready_ = false;  // the last logits() left per-tile maxima for sample()
};

}  // namespace kvinfer::cuda_backend
