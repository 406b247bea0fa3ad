// The CUDA backend's lifecycle (stream, cuBLAS, activation memory, pinned staging), a step's
// upload, graph capture and replay, and the sampled ids' way back (cuda_backend.h).
#include "backend/cuda/cuda_backend.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer {
namespace cuda_backend {

CudaBackend::CudaBackend(const BackendInit& init)
    : c_(init.config),
      shape_(init.shape),
      device_(init.device),
      cache_(init.cache),
      batch_invariant_(init.options.batch_invariant),
      act_(activation_layout(init.config, init.shape, DeviceKind::CUDA)),
      splits_(cuda::decode_splits(init.config.num_kv_heads)),
      stage_bytes_(step_layout(init.shape.max_step_tokens, init.shape.max_batch, init.shape.max_step_tokens,
                              init.shape.blocks_per_seq(), init.shape.max_batch * kMaxLogitBiasPerRow).bytes) {
  const std::string unsupported = cuda_unsupported(c_);
  if (!unsupported.empty()) throw std::invalid_argument(unsupported);
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

StepArrays CudaBackend::upload(const StepLayout& layout, int ticket) {
  DeviceGuard guard(device_);
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(view<char>(act_.step), staging_[ticket], layout.bytes,
                                     cudaMemcpyHostToDevice, stream_));
  return layout.at(view<char>(act_.step));
}

Backend::PromptShape CudaBackend::prompt_shape(int num_tokens, int num_rows, int leading_decodes) const {
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

void CudaBackend::run(const StepContext& step, const Recipe& recipe) {
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

GraphStats CudaBackend::capture_graphs(const Recipe& recipe) {
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

void CudaBackend::finish(int rows, int ticket) {
  DeviceGuard guard(device_);
  if (rows > 0)
    KVINFER_CUDA_CHECK(cudaMemcpyAsync(out_[ticket], view<int32_t>(act_.sampled), 4 * size_t(rows),
                                       cudaMemcpyDeviceToHost, stream_));
  KVINFER_CUDA_CHECK(cudaEventRecord(done_[ticket], stream_));
}

void CudaBackend::copy_in_cache(half_t* dst, const half_t* src, int64_t elements) {
  DeviceGuard guard(device_);
  KVINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(half_t) * static_cast<size_t>(elements),
                                     cudaMemcpyDeviceToDevice, stream_));
}

const int32_t* CudaBackend::wait(int ticket) {
  DeviceGuard guard(device_);
  KVINFER_CUDA_CHECK(cudaEventSynchronize(done_[ticket]));  // a kernel's failure surfaces here
  return out_[ticket];
}

void CudaBackend::drain() noexcept {
  if (!stream_) return;
  DeviceGuard guard(device_);
  cudaStreamSynchronize(stream_);
}

StepContext CudaBackend::dummy_decode(int b) {
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

StepContext CudaBackend::dummy_prompt(int tokens, int rows) {
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

void CudaBackend::destroy() noexcept {
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

}  // namespace cuda_backend

std::unique_ptr<Backend> make_cuda_backend(const BackendInit& init) {
  return std::make_unique<cuda_backend::CudaBackend>(init);
}

}  // namespace kvinfer
