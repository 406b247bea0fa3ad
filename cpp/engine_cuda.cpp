// The CUDA forward pass: the CPU engine's step on the GPU, one stream, no allocation. fp16 feeds
// every GEMM (cuBLAS, fp32 accumulation); the residual stream stays fp32 and the output and down
// projections accumulate into it (beta = 1). Only the per-step metadata goes up and, after
// sample(), token ids come down.
#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"

#if KVINFER_WITH_CUDA
#include "cublas_loader.h"
#include "cuda/attention.h"
#include "cuda/elementwise.h"
#include "cuda/gemm.h"
#include "cuda/kv_append.h"
#include "cuda/sampling.h"
#include "cuda_check.h"
#endif

namespace kvinfer {

size_t gemm_workspace_bytes(bool cuda) { return cuda ? size_t{32} << 20 : 0; }  // NVIDIA's Hopper advice

#if KVINFER_WITH_CUDA

struct CudaContext {
  Device device;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceMemory workspace;
};

void CudaContextDeleter::operator()(CudaContext* c) const noexcept {
  if (!c) return;
  int previous = -1;
  cudaGetDevice(&previous);
  cudaSetDevice(c->device.index);
  if (c->stream) cudaStreamSynchronize(c->stream);
  if (c->blas && cublas::available()) cublas::api().destroy(c->blas);
  if (c->stream) cudaStreamDestroy(c->stream);
  if (previous >= 0) cudaSetDevice(previous);
  delete c;
}

CudaContextPtr make_cuda_context(const Device& device, std::shared_ptr<VramTracker> tracker) {
  DeviceGuard guard(device);
  CudaContextPtr ctx(new CudaContext{device, nullptr, nullptr, {}});
  KVINFER_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  const auto& blas = cublas::api();
  CUBLAS_CHECK(blas.create(&ctx->blas));
  CUBLAS_CHECK(blas.set_stream(ctx->blas, ctx->stream));
  ctx->workspace = DeviceMemory(gemm_workspace_bytes(true), device, "workspace", std::move(tracker), false);
  CUBLAS_CHECK(blas.set_workspace(ctx->blas, ctx->workspace.data(), ctx->workspace.bytes()));
  return ctx;
}

size_t decode_partial_bytes(const ModelConfig& c, const EngineShape& s) {
  return cuda::decode_workspace_bytes(s.max_batch, c.num_heads, c.head_dim);
}

void Engine::forward_cuda(const int32_t* tokens, int T, const int32_t* seq_slots,
                          const int32_t* seq_starts, int batch, float* all_logits,
                          float* hidden_states) {
  const ModelConfig& c = config_;
  DeviceGuard guard(device_);
  cudaStream_t st = cuda_->stream;
  cublasHandle_t blas = cuda_->blas;
  float* x = view<float>(act_.x);            // [T][hidden] fp32 residual
  half_t* h = view<half_t>(act_.h);          // [T][hidden]
  half_t* qkv = view<half_t>(act_.qkv);      // [T][qkv_dim]
  half_t* attn = view<half_t>(act_.attn);    // [T][q_dim]
  half_t* mlp = view<half_t>(act_.mlp);      // [T][mlp_in_dim]
  float* logits = view<float>(act_.logits);  // [max_batch][vocab]
  const float* inv_freq = view<float>(act_.inv_freq);

  // metadata: tokens, positions, token_slots [T]; seq_slots [B]; seq_starts [B+1]; last_rows [B]
  int32_t* m = meta_host_.data();
  std::memcpy(m, tokens, 4 * size_t(T));
  int max_rows = 0;
  cuda::DecodeLengths lengths;  // keys each sequence attends to at its last row
  for (int b = 0; b < batch; ++b) {
    const int cached = cache_.length(seq_slots[b]);
    const int keys = cached + (seq_starts[b + 1] - seq_starts[b]);
    lengths.max_keys = std::max(lengths.max_keys, keys);
    lengths.total_keys += keys;
    for (int t = seq_starts[b]; t < seq_starts[b + 1]; ++t) {
      m[T + t] = cached + (t - seq_starts[b]);
      m[2 * T + t] = seq_slots[b];
    }
    m[3 * T + b] = seq_slots[b];
    m[3 * T + 2 * batch + 1 + b] = seq_starts[b + 1] - 1;
    max_rows = std::max(max_rows, seq_starts[b + 1] - seq_starts[b]);
  }
  std::memcpy(m + 3 * T + batch, seq_starts, 4 * size_t(batch + 1));
  int32_t* d_meta = view<int32_t>(act_.meta);
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(d_meta, m, 4 * size_t(3 * T + 3 * batch + 1),
                                     cudaMemcpyHostToDevice, st));
  const int32_t *d_tokens = d_meta, *d_pos = d_meta + T, *d_token_slots = d_meta + 2 * T;
  const int32_t *d_seq_slots = d_meta + 3 * T, *d_seq_starts = d_seq_slots + batch;
  const int32_t* d_last_rows = d_seq_starts + batch + 1;

  const int H = c.hidden_size, qkv_dim = c.qkv_dim(), q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const int I = c.intermediate_size, mlp_dim = c.mlp_in_dim();
  cuda::embedding(d_tokens, embed_, pos_embed_, d_pos, d_token_slots, view<int32_t>(act_.history),
                  shape_.max_context, x, T, H, st);
  auto capture = [&](int index) {
    if (hidden_states)
      KVINFER_CUDA_CHECK(cudaMemcpyAsync(hidden_states + int64_t(index) * T * H, x,
                                         sizeof(float) * T * H, cudaMemcpyDeviceToHost, st));
  };
  auto norm = [&](const float* in, const int32_t* rows, const half_t* w, const half_t* b, half_t* out, int n) {
    if (c.norm == NormKind::RMSNorm) cuda::rms_norm(in, rows, w, out, n, H, c.norm_eps, st);
    else cuda::layer_norm(in, rows, w, b, out, n, H, c.norm_eps, st);
  };
  capture(0);

  const KVLayout layout = cache_.layout();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const cuda::DecodeSplits splits = cuda::decode_splits(c.num_kv_heads);  // the model's chunking
  const bool decode = T == batch;  // one new token per sequence
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    norm(x, nullptr, w.attn_norm_w, w.attn_norm_b, h, T);
    cuda::gemm(blas, h, H, w.qkv_w, qkv, false, qkv_dim, T, qkv_dim, H, 0.0f);
    if (w.qkv_b) cuda::bias_add(qkv, qkv_dim, w.qkv_b, T, qkv_dim, st);
    if (c.positions == PositionKind::Rope)
      cuda::rope(qkv, qkv + q_dim, qkv_dim, d_pos, T, c.num_heads, c.num_kv_heads, c.head_dim,
                 inv_freq, 1.0f, st);
    for (int b = 0; b < batch; ++b) cache_.begin_append(l, seq_slots[b], seq_starts[b + 1] - seq_starts[b]);
    cuda::kv_append(cache_.k_layer(l), cache_.v_layer(l), layout, c.num_kv_heads, c.head_dim,
                    qkv + q_dim, qkv + q_dim + kv_dim, qkv_dim, d_seq_slots, d_seq_starts,
                    cache_.device_lengths(), batch, max_rows, st);
    if (decode)
      cuda::attention_decode(qkv, qkv_dim, cache_.k_layer(l), cache_.v_layer(l), layout, d_seq_slots,
                             d_pos, batch, c.num_heads, c.num_kv_heads, c.head_dim, scale,
                             view<float>(act_.decode), attn, q_dim, st, splits, lengths);
    else
      cuda::attention_prefill(qkv, qkv_dim, cache_.k_layer(l), cache_.v_layer(l), layout, d_seq_slots,
                              d_seq_starts, d_pos, batch, max_rows, c.num_heads, c.num_kv_heads,
                              c.head_dim, scale, attn, q_dim, st);
    cuda::gemm(blas, attn, q_dim, w.o_w, x, true, H, T, H, q_dim, 1.0f);
    if (w.o_b) cuda::bias_add(x, H, w.o_b, T, H, st);

    norm(x, nullptr, w.mlp_norm_w, w.mlp_norm_b, h, T);
    cuda::gemm(blas, h, H, w.mlp_in_w, mlp, false, mlp_dim, T, mlp_dim, H, 0.0f);
    if (w.mlp_in_b) cuda::bias_add(mlp, mlp_dim, w.mlp_in_b, T, mlp_dim, st);
    if (c.mlp == MlpKind::SwiGLU) cuda::silu_mul(mlp, mlp_dim, mlp, mlp_dim, T, I, st);
    else cuda::gelu_new(mlp, int64_t(T) * I, st);
    cuda::gemm(blas, mlp, mlp_dim, w.down_w, x, true, H, T, H, I, 1.0f);
    if (w.down_b) cuda::bias_add(x, H, w.down_b, T, H, st);
    capture(l + 1);
  }

  if (all_logits) {
    // every row, through the logits buffer in groups of max_batch rows
    norm(x, nullptr, final_norm_w_, final_norm_b_, h, T);
    for (int t0 = 0; t0 < T; t0 += shape_.max_batch) {
      const int rows = std::min(shape_.max_batch, T - t0);
      cuda::gemm(blas, h + int64_t(t0) * H, H, lm_head_, logits, true, c.vocab_size, rows, c.vocab_size, H, 0.0f);
      KVINFER_CUDA_CHECK(cudaMemcpyAsync(all_logits + int64_t(t0) * c.vocab_size, logits,
                                         sizeof(float) * rows * c.vocab_size, cudaMemcpyDeviceToHost, st));
    }
  }
  norm(x, d_last_rows, final_norm_w_, final_norm_b_, h, batch);
  cuda::gemm(blas, h, H, lm_head_, logits, true, c.vocab_size, batch, c.vocab_size, H, 0.0f);
  KVINFER_CUDA_CHECK(cudaStreamSynchronize(st));  // host buffers filled; errors surface here
  cache_.commit(seq_slots, seq_starts, batch);
}

void Engine::sample_cuda(const SamplingArgs* args, int batch, int32_t* out_tokens) {
  DeviceGuard guard(device_);
  cudaStream_t st = cuda_->stream;
  // args, slots and history lengths up; token ids down
  int32_t* d_rows = view<int32_t>(act_.meta) + sample_meta_offset(shape_);  // [B] slots, [B] lengths
  SamplingArgs* d_args = view<SamplingArgs>(act_.args);
  int32_t* d_sampled = view<int32_t>(act_.sampled);
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(d_args, args, sizeof(SamplingArgs) * batch, cudaMemcpyHostToDevice, st));
  std::memcpy(meta_host_.data(), last_slots_.data(), 4 * size_t(batch));
  std::memcpy(meta_host_.data() + batch, last_lengths_.data(), 4 * size_t(batch));
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(d_rows, meta_host_.data(), 8 * size_t(batch), cudaMemcpyHostToDevice, st));
  cuda::sample(view<float>(act_.logits), batch, config_.vocab_size, d_args, view<int32_t>(act_.history),
               shape_.max_context, d_rows, d_rows + batch, d_sampled, st);
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(out_tokens, d_sampled, 4 * size_t(batch), cudaMemcpyDeviceToHost, st));
  KVINFER_CUDA_CHECK(cudaStreamSynchronize(st));
  last_batch_ = 0;
}

#else  // CPU-only build

struct CudaContext {};
void CudaContextDeleter::operator()(CudaContext* c) const noexcept { delete c; }
CudaContextPtr make_cuda_context(const Device&, std::shared_ptr<VramTracker>) {
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
}
size_t decode_partial_bytes(const ModelConfig&, const EngineShape&) { return 0; }
void Engine::forward_cuda(const int32_t*, int, const int32_t*, const int32_t*, int, float*, float*) {
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
}
void Engine::sample_cuda(const SamplingArgs*, int, int32_t*) {
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
}

#endif

}  // namespace kvinfer
