// The CUDA backend: the layer recipe's ops on one stream with nothing allocated per step. fp16
// feeds every GEMM (fp32 accumulation); the residual stream stays fp32 and the output and down
// projections accumulate into it. Steps of at most kSkinnyMaxRows rows (decode) run every
// projection as a skinny GEMM with the norm, the MLP activation, the residual add and the LM
// head's argmax fused in (skinny_gemm.h); larger steps use cuBLAS and separate kernels. A step's fields go up in one asynchronous copy from pinned
// staging, its sampled ids come down into pinned memory, and an event per ticket says when they
// are there. Decode steps and padded prompt steps replay CUDA graphs captured at load (step_graphs.h).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/attention.h"
#include "backend/cuda/elementwise.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kv_write.h"
#include "backend/cuda/prompt_mlp.h"
#include "backend/cuda/sampling.h"
#include "backend/cuda/skinny_gemm.h"
#include "backend/cuda/step_graphs.h"
#include "backend/cpu/cpu_ops.h"
#include "core/cublas_loader.h"
#include "core/cuda_check.h"
#include "core/device_memory.h"
#include "core/errors.h"
#include "runtime/backend.h"

namespace kvinfer {

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

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendInit& init)
      : c_(init.config),
        shape_(init.shape),
        device_(init.device),
        cache_(init.cache),
        batch_invariant_(init.options.batch_invariant),
        act_(activation_layout(init.config, init.shape, DeviceKind::CUDA)),
        splits_(cuda::decode_splits(init.config.num_kv_heads)),
        stage_bytes_(step_layout(init.shape.max_step_tokens, init.shape.max_batch, init.shape.max_step_tokens,
                                init.shape.blocks_per_seq(), init.shape.max_batch * kMaxLogitBiasPerRow).bytes) {
    DeviceGuard guard(device_);
    prompt_ladder_ = cuda::prompt_token_ladder(shape_.max_step_tokens);
    prompt_rows_ = cuda::prompt_row_ladder(shape_.max_batch);
    try {
      KVINFER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      const auto& blas = cublas::api();
      CUBLAS_CHECK(blas.create(&blas_));
      CUBLAS_CHECK(blas.set_stream(blas_, stream_));
      workspace_ = DeviceMemory(gemm_workspace_bytes(DeviceKind::CUDA), device_, "workspace", init.tracker, false);
      CUBLAS_CHECK(blas.set_workspace(blas_, workspace_.data(), workspace_.bytes()));
      memory_ = DeviceMemory(act_.total, device_, "activations", init.tracker, /*zero=*/true);
      for (int i = 0; i < kTickets; ++i) {
        KVINFER_CUDA_CHECK(cudaHostAlloc(&staging_[i], stage_bytes_, cudaHostAllocDefault));
        KVINFER_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&out_[i]), 4 * size_t(shape_.max_batch),
                                         cudaHostAllocDefault));
        KVINFER_CUDA_CHECK(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming));
      }
      if (c_.positions == PositionKind::Rope) {
        std::vector<float> inv(c_.head_dim / 2);
        cpu::rope_inv_freq(inv.data(), c_.head_dim, c_.rope_theta, c_.rope_scaling);
        KVINFER_CUDA_CHECK(cudaMemcpy(view<float>(act_.inv_freq), inv.data(), inv.size() * 4,
                                      cudaMemcpyHostToDevice));
      }
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~CudaBackend() override { destroy(); }

  void* staging(int ticket) override { return staging_[ticket]; }

  StepArrays upload(const StepLayout& layout, int ticket) override {
    DeviceGuard guard(device_);
    KVINFER_CUDA_CHECK(cudaMemcpyAsync(view<char>(act_.step), staging_[ticket], layout.bytes,
                                       cudaMemcpyHostToDevice, stream_));
    return layout.at(view<char>(act_.step));
  }

  int graph_batch(int num_seqs) const override { return graphs_.decode_batch(num_seqs); }

  PromptShape prompt_shape(int num_tokens, int num_rows, int leading_decodes) const override {
    // steps of the skinny GEMMs, and mixed steps whose decodes the decode kernel takes (sized on the
    // host), run as they are
    if (num_tokens <= cuda::kSkinnyMaxRows || skinny(num_tokens) || (leading_decodes > 0 && split_decodes()))
      return {};
    for (int t : prompt_ladder_)
      if (t >= num_tokens)
        for (int rows : prompt_rows_)
          if (rows >= num_rows) return {t, rows, prompt_seq_room(), graphs_.has(cuda::GraphKey{0, t, rows})};
    return {};
  }

  void run(const StepContext& step, const Recipe& recipe) override {
    DeviceGuard guard(device_);
    if (step.replay) {
      const cuda::GraphKey key = step.decode() ? cuda::GraphKey{step.num_seqs, 0, 0}
                                               : cuda::GraphKey{0, step.num_tokens, step.num_logit_rows};
      graphs_.launch(key, stream_, cuda::AttentionGridArgs{c_.num_heads, step.max_query_len, step.num_seqs});
      if (step.logits_out)  // after the sampling: the runner asks only where it left them as they were
        KVINFER_CUDA_CHECK(cudaMemcpyAsync(step.logits_out, view<float>(act_.logits),
                                           sizeof(float) * step.caller_rows * c_.vocab_size,
                                           cudaMemcpyDeviceToHost, stream_));
      return;
    }
    recipe(step);
  }

  GraphStats capture_graphs(const Recipe& recipe) override {
    DeviceGuard guard(device_);
    GraphStats stats;
    graphs_.clear();
    KVINFER_CUDA_CHECK(cudaStreamSynchronize(stream_));
    size_t free0 = 0, free1 = 0, total = 0;
    KVINFER_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
    const auto t0 = std::chrono::steady_clock::now();
    for (int b : cuda::decode_graph_ladder(shape_.max_batch)) {
      const StepContext step = dummy_decode(b);
      graphs_.capture(cuda::GraphKey{b, 0, 0}, stream_, [&] { recipe(step); });
      stats.batch_sizes.push_back(b);
    }
    // KVINFER_PROMPT_GRAPHS=0: prompt steps run op by op, padded alike (to measure what the graphs give)
    const char* prompt_graphs = std::getenv("KVINFER_PROMPT_GRAPHS");
    const bool prompts = !(prompt_graphs && std::strcmp(prompt_graphs, "0") == 0);
    for (int t : prompts ? prompt_ladder_ : std::vector<int>{}) {
      for (int rows : prompt_rows_) {
        const StepContext step = dummy_prompt(t, rows);
        graphs_.capture(cuda::GraphKey{0, t, rows}, stream_, [&] { recipe(step); });
      }
      stats.prompt_tokens.push_back(t);
    }
    KVINFER_CUDA_CHECK(cudaStreamSynchronize(stream_));
    stats.capture_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    KVINFER_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
    stats.device_bytes = free0 > free1 ? free0 - free1 : 0;
    return stats;
  }

  void finish(int rows, int ticket) override {
    DeviceGuard guard(device_);
    if (rows > 0)
      KVINFER_CUDA_CHECK(cudaMemcpyAsync(out_[ticket], view<int32_t>(act_.sampled), 4 * size_t(rows),
                                         cudaMemcpyDeviceToHost, stream_));
    KVINFER_CUDA_CHECK(cudaEventRecord(done_[ticket], stream_));
  }

  void copy_in_cache(half_t* dst, const half_t* src, int64_t elements) override {
    DeviceGuard guard(device_);
    KVINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(half_t) * static_cast<size_t>(elements),
                                       cudaMemcpyDeviceToDevice, stream_));
  }

  const int32_t* wait(int ticket) override {
    DeviceGuard guard(device_);
    KVINFER_CUDA_CHECK(cudaEventSynchronize(done_[ticket]));  // a kernel's failure surfaces here
    return out_[ticket];
  }

  void drain() noexcept override {
    if (!stream_) return;
    DeviceGuard guard(device_);
    cudaStreamSynchronize(stream_);
  }

  // ---- the recipe's ops ----------------------------------------------------------------------
  void embed(const half_t* table, const half_t* pos_table, const StepContext& s) override {
    cuda::embedding(s.arrays, s.num_tokens, view<int32_t>(act_.sampled), table, pos_table,
                    view<int32_t>(act_.history), shape_.max_context, x(), c_.hidden_size,
                    skinny(s.num_tokens) ? x_ss() : nullptr, stream_);
  }

  void attention_inputs(int layer, const Norm& norm, const Linear& w, const StepContext& s) override {
    const int T = s.num_tokens;
    const float* inv_freq = c_.positions == PositionKind::Rope ? view<float>(act_.inv_freq) : nullptr;
    half_t* qkv = buffer(Buffer::qkv);
    if (skinny(T)) {
      // RoPE and the K/V write in the projection's epilogue where the Hopper kernel runs it
      cuda::SkinnyOutput o{cuda::SkinnyOut::rope_kv, qkv, c_.qkv_dim(), w.bias};
      o.rope = cuda::SkinnyRopeKV{c_.num_heads, c_.num_kv_heads, c_.head_dim, inv_freq, cache_.k_layer(layer),
                                  cache_.v_layer(layer), cache_.layout(), s.arrays};
      if (T <= kSkinnyFuseMaxRows && cuda::skinny_paired_supported(w.out, o)) return skinny_gemm(w, T, normed_input(norm, nullptr, T), o);
      skinny_gemm(w, T, normed_input(norm, nullptr, T), cuda::SkinnyOutput{cuda::SkinnyOut::half, qkv, c_.qkv_dim(), w.bias});
    } else {
      norm_gemm(norm, w, qkv, c_.qkv_dim(), T);
    }
    cuda::rope_kv_write(qkv, c_.qkv_dim(), c_.num_heads, c_.num_kv_heads, c_.head_dim, inv_freq,
                        cache_.k_layer(layer), cache_.v_layer(layer), cache_.layout(), s.arrays, T, stream_);
  }

  void attention(int layer, const StepContext& s) override {
    const float scale = 1.0f / std::sqrt(static_cast<float>(c_.head_dim));
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

  void attention_output(const Linear& w, const StepContext& s) override {
    const int T = s.num_tokens;
    if (skinny(T)) {
      cuda::SkinnyInput i{cuda::SkinnyIn::half, buffer(Buffer::attn), c_.q_dim()};
      cuda::SkinnyOutput o{cuda::SkinnyOut::residual, x(), c_.hidden_size, w.bias, x_ss()};
      return skinny_gemm(w, T, i, o);
    }
    residual_gemm(buffer(Buffer::attn), c_.q_dim(), w, T);
  }

  void mlp(const Norm& norm, const Linear& in, Activation act, const Linear& down, const StepContext& s) override {
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

  void logits(const Norm& norm, const Linear& w, const StepContext& s) override {
    const int R = s.num_logit_rows, H = c_.hidden_size, V = c_.vocab_size;
    float* logits = view<float>(act_.logits);
    if (R == 0) return;  // a prompt chunk that samples nothing
    argmax_ready_ = skinny(s.num_tokens) && R <= shape_.max_batch;
    if (argmax_ready_) {
      cuda::SkinnyOutput o{cuda::SkinnyOut::logits, logits, V, nullptr, nullptr, argmax()};
      skinny_gemm(w, R, normed_input(norm, s.arrays.logit_rows, R), o);
      if (s.logits_out)  // the caller's rows (a padded step has more)
        KVINFER_CUDA_CHECK(cudaMemcpyAsync(s.logits_out, logits, sizeof(float) * s.caller_rows * V,
                                           cudaMemcpyDeviceToHost, stream_));
      return;
    }
    norm_rows(s.arrays.logit_rows, norm, R);
    for (int r0 = 0; r0 < R; r0 += shape_.max_batch) {  // more rows than max_batch: logits only, in groups
      const int rows = std::min(shape_.max_batch, R - r0);
      cuda::gemm(blas_, h() + int64_t(r0) * H, H, w.weight, logits, true, V, rows, V, H, 0.0f);
      const int wanted = std::min(rows, s.caller_rows - r0);  // the caller's rows (a padded step has more)
      if (s.logits_out && wanted > 0)
        KVINFER_CUDA_CHECK(cudaMemcpyAsync(s.logits_out + int64_t(r0) * V, logits, sizeof(float) * wanted * V,
                                           cudaMemcpyDeviceToHost, stream_));
    }
  }

  void sample(const StepContext& s) override {
    cuda::sample(view<float>(act_.logits), s.num_logit_rows, c_.vocab_size, s.arrays, view<int32_t>(act_.history),
                 shape_.max_context, argmax_ready_ ? argmax() : nullptr, argmax_tiles(), view<int32_t>(act_.sampled),
                 stream_);
  }

  void capture_hidden(int index, const StepContext& s) override {
    if (!s.hidden_out) return;
    const size_t n = size_t(s.num_tokens) * c_.hidden_size;
    KVINFER_CUDA_CHECK(cudaMemcpyAsync(s.hidden_out + index * n, x(), sizeof(float) * n,
                                       cudaMemcpyDeviceToHost, stream_));
  }

 private:
  bool split_decodes() const {
    return !batch_invariant_ && cuda::attention_decode_supports(c_.head_dim, c_.num_heads, c_.num_kv_heads);
  }

  template <class T>
  T* view(size_t offset) const { return reinterpret_cast<T*>(memory_.as<char>() + offset); }
  float* x() const { return view<float>(act_.x); }
  half_t* h() const { return view<half_t>(act_.h); }
  half_t* buffer(Buffer b) const {
    switch (b) {
      case Buffer::qkv: return view<half_t>(act_.qkv);
      case Buffer::attn: return view<half_t>(act_.attn);
      case Buffer::mlp: return view<half_t>(act_.mlp);
    }
    return nullptr;
  }
  int64_t stride(Buffer b) const {
    switch (b) {
      case Buffer::qkv: return c_.qkv_dim();
      case Buffer::attn: return c_.q_dim();
      case Buffer::mlp: return c_.mlp_in_dim();
    }
    return 0;
  }
  // out = norm(x) W^T + bias by cuBLAS (steps of many rows)
  void norm_gemm(const Norm& norm, const Linear& w, half_t* out, int64_t ld, int T) {
    norm_rows(nullptr, norm, T);
    cuda::gemm(blas_, h(), c_.hidden_size, w.weight, out, false, ld, T, w.out, w.in, 0.0f);
    if (w.bias) cuda::bias_add(out, ld, w.bias, T, w.out, stream_);
  }

  // x += src W^T + bias by cuBLAS (steps of many rows)
  void residual_gemm(const half_t* src, int64_t ld, const Linear& w, int T) {
    cuda::gemm(blas_, src, ld, w.weight, x(), true, c_.hidden_size, T, w.out, w.in, 1.0f);
    if (w.bias) cuda::bias_add(x(), c_.hidden_size, w.bias, T, w.out, stream_);
  }

  // The activation in place, in the first `in` columns of each of T rows (silu_mul reads the up
  // half at + in).
  void activate(Activation act, half_t* src, int64_t ld, int T, int in) {
    if (act == Activation::silu_mul) cuda::silu_mul(src, ld, src, ld, T, in, stream_);
    if (act == Activation::gelu_new) cuda::gelu_new(src, int64_t(T) * ld, stream_);
  }

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
  cuda::SkinnyInput normed_input(const Norm& norm, const int32_t* rows, int count) {
    if (c_.norm == NormKind::RMSNorm && c_.hidden_size % cuda::kSkinnyTile == 0) {
      cuda::SkinnyInput in{cuda::SkinnyIn::rms_norm, x(), c_.hidden_size};
      in.rows = rows, in.ss = x_ss(), in.norm_weight = norm.weight, in.eps = c_.norm_eps;
      in.norm_in_kernel = count <= kSkinnyFuseMaxRows;
      return in;
    }
    norm_rows(rows, norm, count);
    return cuda::SkinnyInput{cuda::SkinnyIn::half, h(), c_.hidden_size};
  }

  void skinny_gemm(const Linear& w, int rows, const cuda::SkinnyInput& in, const cuda::SkinnyOutput& out) {
    cuda::skinny_gemm(w.weight, w.out, w.in, rows, in, out,
                      cuda::SkinnyWorkspace{view<float>(act_.skinny), view<int32_t>(act_.counters),
                                            view<half_t>(act_.normed)},
                      stream_);
  }

  // h[i] = norm(x[rows ? rows[i] : i]) for n rows
  void norm_rows(const int32_t* rows, const Norm& n, int count) {
    if (c_.norm == NormKind::RMSNorm)
      cuda::rms_norm(x(), rows, n.weight, h(), count, c_.hidden_size, c_.norm_eps, stream_);
    else
      cuda::layer_norm(x(), rows, n.weight, n.bias, h(), count, c_.hidden_size, c_.norm_eps, stream_);
  }

  // A valid decode step of b sequences, uploaded: token 0 at position 0 of slots 0..b-1, greedy,
  // all in KV block 0. (It writes position 0 of block 0, which holds nothing yet when graphs are
  // captured; every dummy sequence writes the same values there.)
  StepContext dummy_decode(int b) {
    const int W = cache_.layout().table_stride;
    const StepLayout layout = step_layout(b, b, b, W);
    StepArrays host = layout.at(staging_[0]);
    for (int i = 0; i < b; ++i) {
      host.tokens[i] = 0, host.prev_sample_row[i] = -1, host.positions[i] = 0, host.token_seq[i] = i;
      host.query_starts[i] = i, host.cached_lengths[i] = 0, host.kv_slots[i] = i, host.logit_rows[i] = i;
      host.block_tables[static_cast<int64_t>(i) * W] = 0;
      host.sampling[i] = SamplingArgs{};
    }
    host.query_starts[b] = b;
    StepContext step;
    step.arrays = upload(layout, 0);
    step.num_tokens = step.num_seqs = step.num_logit_rows = b;
    step.max_query_len = 1;
    step.sample = true;
    return step;
  }

  // Sequences a padded prompt step's layout leaves room for: the fields' offsets depend on it, and
  // a graph's kernels read them where they were at capture (StepPadding::seq_room).
  int prompt_seq_room() const { return shape_.max_batch; }

  // A prompt step of `tokens` (padding but for token 0 at position 0 of slot 0, KV block 0, as in
  // dummy_decode) that samples `rows` rows (greedy, all of token 0), uploaded, in the layout of
  // the steps that will replay it.
  StepContext dummy_prompt(int tokens, int rows) {
    const int W = cache_.layout().table_stride;
    const StepLayout layout = step_layout(tokens, prompt_seq_room(), rows, W);
    StepArrays host = layout.at(staging_[0]);
    for (int t = 0; t < tokens; ++t)
      host.tokens[t] = 0, host.prev_sample_row[t] = -1, host.positions[t] = t == 0 ? 0 : -1, host.token_seq[t] = 0;
    host.query_starts[0] = 0, host.query_starts[1] = 1, host.cached_lengths[0] = 0, host.kv_slots[0] = 0;
    host.block_tables[0] = 0;
    for (int r = 0; r < rows; ++r) host.logit_rows[r] = 0, host.sampling[r] = SamplingArgs{};
    StepContext step;
    step.arrays = upload(layout, 0);
    step.num_tokens = tokens;
    step.num_seqs = 1;
    step.num_logit_rows = rows;
    step.max_query_len = 1;
    step.sample = true;
    return step;
  }

  void destroy() noexcept {
    DeviceGuard guard(device_);
    if (stream_) cudaStreamSynchronize(stream_);
    graphs_.clear();
    for (int i = 0; i < kTickets; ++i) {
      if (staging_[i]) cudaFreeHost(staging_[i]);
      if (out_[i]) cudaFreeHost(out_[i]);
      if (done_[i]) cudaEventDestroy(done_[i]);
      staging_[i] = nullptr, out_[i] = nullptr, done_[i] = nullptr;
    }
    if (blas_ && cublas::available()) cublas::api().destroy(blas_);
    blas_ = nullptr;
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

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

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const BackendInit& init) {
  return std::make_unique<CudaBackend>(init);
}

}  // namespace kvinfer
