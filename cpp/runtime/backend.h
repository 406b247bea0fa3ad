// What the runner asks of a backend beyond the layer recipe's ops: where a step's fields are read,
// how a step runs (op by op, or a captured graph), and how its sampled token ids come back.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/vram_tracker.h"
#include "model/decoder.h"
#include "runtime/activations.h"
#include "runtime/kv_cache.h"
#include "types/step_batch.h"

namespace kvinfer {

struct RunnerOptions {
  bool cuda_graphs = true;  // decode steps replay captured graphs (CUDA; see capture_graphs)
  // Decode rows whose bits do not depend on what else shares the step (CUDA: the skinny GEMMs at
  // every batch size). false: cuBLAS from cuda::kCublasDecodeMinRows rows, faster there, and a
  // row's last bits then depend on the batch size (and on the graph bucket it replays in).
  bool batch_invariant = true;
};

// What capturing the graphs did.
struct GraphStats {
  std::vector<int> batch_sizes;    // decode: one graph per size
  std::vector<int> prompt_tokens;  // prompt steps: graphs per token count (for 1, 4, 16 and max_batch sampled rows)
  double capture_seconds = 0;
  size_t device_bytes = 0;  // device memory the graphs took (cudaMemGetInfo before and after)
};

using Recipe = std::function<void(const StepContext&)>;

class Backend : public DecoderOps {
 public:
  static constexpr int kTickets = 2;  // steps in flight at most

  // Host memory where the runner stages the fields of the step with this ticket (pinned on CUDA,
  // so that their upload is asynchronous): step_layout(max_step_tokens, max_batch,
  // max_step_tokens, blocks_per_seq, max_batch * kMaxLogitBiasPerRow).bytes each.
  virtual void* staging(int ticket) = 0;
  // The step's fields where the ops read them: the staging region itself (CPU) or its device copy,
  // sent with one asynchronous copy (CUDA).
  virtual StepArrays upload(const StepLayout& layout, int ticket) = 0;
  // The batch size a decode step of `num_seqs` sequences runs at: the smallest captured graph
  // that holds it (the runner pads the batch), or 0 when it runs op by op.
  virtual int graph_batch(int num_seqs) const { return 0; }
  // The token count and sampled rows a prompt step (not a decode step) of this many tokens, rows
  // and leading one-token sequences runs at, padded (staging.h), and whether a captured graph of
  // that shape runs it; all 0: as it is, op by op. Padded whether graphs are on or off, so
  // that both give the same bits.
  struct PromptShape {
    int tokens = 0, rows = 0;
    int seq_room = 0;  // StepPadding::seq_room: the layout a graph of this shape reads
    bool graph = false;
  };
  virtual PromptShape prompt_shape(int num_tokens, int num_rows, int leading_decodes) const { return {}; }
  // Runs the step: the graph captured for its shape when graph_batch() or prompt_shape() chose one
  // (step.replay), else recipe(step).
  virtual void run(const StepContext& step, const Recipe& recipe) { recipe(step); }
  // Captures the decode step for a ladder of batch sizes up to max_batch, and prompt steps for a
  // ladder of token counts up to max_step_tokens (CUDA).
  virtual GraphStats capture_graphs(const Recipe& recipe) { return {}; }
  // After run(): the first `num_rows` sampled ids go to the host buffer of `ticket`
  // (asynchronously on CUDA).
  virtual void finish(int num_rows, int ticket) = 0;
  // Waits for the step of `ticket`; its sampled ids (host).
  virtual const int32_t* wait(int ticket) = 0;
  // Waits for everything in flight; never throws (used before memory is freed).
  virtual void drain() noexcept {}
  // Copies `elements` fp16 values within the KV cache, after every step enqueued before it and
  // before any enqueued after (CPU: steps have run by the time launch returns).
  virtual void copy_in_cache(half_t* dst, const half_t* src, int64_t elements) = 0;
};

struct BackendInit {
  const ModelConfig& config;
  const RunnerShape& shape;
  const Device& device;
  std::shared_ptr<VramTracker> tracker;
  const KVCache& cache;
  RunnerOptions options;
};
std::unique_ptr<Backend> make_cpu_backend(const BackendInit& init);
// Throws std::invalid_argument in a build without the CUDA backend, or for a model it cannot run.
std::unique_ptr<Backend> make_cuda_backend(const BackendInit& init);
// Why the CUDA backend cannot run this model ("" where it can), in any build: its message when it
// refuses the model (a build without CUDA refuses every model, for that reason, first).
std::string cuda_unsupported(const ModelConfig& config);

}  // namespace kvinfer
