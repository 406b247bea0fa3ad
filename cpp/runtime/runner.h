// Runner: one model's weights, its KV cache and a backend's activation buffers, all allocated at
// construction (purposes "weights", "kv_cache", "activations" and, on CUDA, "workspace"); a step
// then allocates nothing.
//
// A step (types/step_batch.h) runs the forward pass of every sequence in it and samples the rows
// it asks for, in one call: launch() enqueues it and returns (at once on CUDA), collect() waits
// for the oldest step in flight and hands back its token ids. Nothing is carried from one step to
// the next but the KV cache, the slots' token history and the sampled ids that the next step may
// take as its input tokens (prev_sample_row), so a decode loop can enqueue step n + 1 before it
// reads step n's tokens. Every public method takes one lock: one runner is safe to share between
// threads (their steps are serialised, never interleaved inside a step).
#pragma once

#include <array>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/device_memory.h"
#include "model/decoder.h"
#include "model/model_config.h"
#include "runtime/activations.h"
#include "runtime/backend.h"
#include "runtime/kv_cache.h"
#include "types/step_batch.h"

namespace kvinfer {

class Runner {
 public:
  Runner(const ModelConfig& config, const Device& device, const RunnerShape& shape,
         std::shared_ptr<VramTracker> tracker = nullptr, RunnerOptions options = {});
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  const ModelConfig& config() const { return config_; }
  const RunnerShape& shape() const { return shape_; }
  const Device& device() const { return device_; }
  const std::vector<TensorSpec>& weight_specs() const { return specs_; }

  // Copies one fp16 tensor (host memory, row-major) into the weight allocation. Throws for an
  // unknown name or a shape that differs from the spec (both named in the message).
  void set_weight(const std::string& name, const half_t* data, const std::vector<int64_t>& shape);
  std::vector<std::string> missing_weights() const;

  // Captures the decode step for a ladder of batch sizes up to max_batch (CUDA with cuda_graphs;
  // otherwise a no-op). Needs every weight loaded.
  GraphStats capture_graphs();
  const GraphStats& graph_stats() const { return graph_stats_; }

  // Validates the step (nothing runs when it throws) and enqueues it. At most two steps are in
  // flight: collect() the oldest before launching a third.
  void launch(const StepBatch& batch);
  // Waits for the oldest step in flight; writes its sampled ids ([R], when it sampled) to
  // `tokens` and returns R.
  int collect(int32_t* tokens);
  // launch() + collect() of one step; logits ([R][vocab]) and hidden states ([num_layers + 1]
  // [T][hidden], the residual stream after the embedding and each layer) are copied to the host
  // when given.
  int step(const StepBatch& batch, int32_t* tokens, float* logits = nullptr,
           float* hidden_states = nullptr);
  int steps_in_flight() const;
  // Copies KV-cache block src[i] to dst[i] in every layer, K and V (copy-on-write of a shared
  // block), ordered after the steps in flight and before the next. Sources and destinations in
  // the pool, no destination twice or among the sources; nothing is copied when it throws.
  void copy_blocks(const int32_t* src, const int32_t* dst, int count);

  // Frees weights, cache and activations now (waits for steps in flight); later calls throw.
  void release() noexcept;
  bool released() const;
  // The KV cache storage (tests read it; its per-slot lengths are not used by steps).
  const KVCache& cache() const { return cache_; }

 private:
  void check_usable() const;
  void validate(const StepBatch& batch) const;
  void check_blocks(const StepBatch& batch) const;
  void check_logit_bias(const StepBatch& batch) const;
  void launch_locked(const StepBatch& batch, float* logits, float* hidden_states);
  int collect_locked(int32_t* tokens);

  ModelConfig config_;
  RunnerShape shape_;
  Device device_;
  RunnerOptions options_;
  std::vector<TensorSpec> specs_;
  std::unordered_map<std::string, size_t> spec_index_;
  std::vector<uint8_t> loaded_;
  size_t loaded_count_ = 0;
  DeviceMemory weights_;  // fp16 tensors at specs_[i].offset
  KVCache cache_;
  ModelWeights views_;
  std::unique_ptr<Backend> backend_;
  GraphStats graph_stats_;

  struct InFlight {
    int ticket;
    int rows;  // sampled rows (0: none)
  };
  std::deque<InFlight> in_flight_;
  int next_ticket_ = 0;
  int last_sampled_rows_ = 0;  // rows the latest launched step sampled (prev_sample_row's range)
  mutable std::vector<uint8_t> slot_seen_;  // validate() scratch [max_batch]
  // check_blocks() scratch [num_blocks]: (step stamp, sequence) of the last write of each block
  mutable std::vector<std::pair<uint32_t, int>> written_by_;
  mutable uint32_t write_stamp_ = 0;
  mutable std::vector<int32_t> bias_ids_;  // check_logit_bias() scratch
  mutable std::mutex mutex_;
};

}  // namespace kvinfer
