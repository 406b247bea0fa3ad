// CUDA graphs of whole steps, captured at load and replayed per step: decode steps for a ladder
// of batch sizes, prompt steps for a ladder of token counts and sampled rows. The launch a step's
// lengths shape is prefill attention's grid, so a prompt graph records its attention nodes while it
// is captured and resizes them on each replay; every other launch reads the step's fields at the
// fixed addresses of the capture.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <vector>

#include "backend/cuda/attention.h"

namespace kvinfer::cuda {

// Batch sizes that get a decode graph: every size up to max_batch runs in the smallest that holds it.
std::vector<int> decode_graph_ladder(int max_batch);

// Token counts that prompt steps are padded to, a graph each: the step's GEMMs run at that many
// rows, so the rungs bound the padding (at most 1/8 of a step from 512 tokens on; a 160-token
// chunk after a cached prefix runs at 192 rows, not 256).
std::vector<int> prompt_token_ladder(int max_step_tokens);

// Sampled rows a prompt step is padded to (the smallest that holds its rows): the LM head and the
// sampler run every one of them.
std::vector<int> prompt_row_ladder(int max_batch);

// Which graph: a decode graph of `batch` sequences (tokens 0), or a prompt graph of `tokens`
// tokens and `rows` sampled rows (batch 0).
struct GraphKey {
  int batch = 0;
  int tokens = 0;
  int rows = 0;
  bool operator==(const GraphKey& o) const { return batch == o.batch && tokens == o.tokens && rows == o.rows; }
};

// What a replayed prompt step's attention grid depends on.
struct AttentionGridArgs {
  int num_heads = 0;
  int max_query_len = 0;
  int num_seqs = 0;
};

class StepGraphs {
 public:
  StepGraphs() = default;
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;
  ~StepGraphs() { clear(); }

  // Runs `step` once on `stream` (every kernel's one-time set-up happens outside the capture), then
  // captures it as the graph of `key`. While both run, capturing_tokens() is key.tokens.
  void capture(GraphKey key, cudaStream_t stream, const std::function<void()>& step);

  // > 0 while a prompt graph of that many tokens is captured or warmed up: its attention kernel is
  // chosen for the longest sequence its steps may hold.
  int capturing_tokens() const { return capturing_tokens_; }

  // Called right after each prefill attention launch: while a prompt graph is captured, the launch
  // (the capture's last node) is recorded to be resized per replay.
  void attention_launched(cudaStream_t stream, PrefillKernel kernel);

  bool has(GraphKey key) const { return find(key) != nullptr; }

  // The smallest decode graph that holds num_seqs sequences; 0: none.
  int decode_batch(int num_seqs) const;

  // Launches the graph of `key` on `stream`, its attention nodes resized for `grid`.
  void launch(GraphKey key, cudaStream_t stream, const AttentionGridArgs& grid);

  void clear() noexcept;

 private:
  // A prompt graph's attention launch: the node to resize per step, and its parameters as the
  // executable graph holds them (captured, then with the grid last set).
  struct AttentionNode {
    cudaGraphNode_t node = nullptr;
    cudaKernelNodeParams params{};
    PrefillKernel kernel = PrefillKernel::mma;
  };
  struct Graph {
    GraphKey key;
    cudaGraph_t graph = nullptr;  // kept while exec lives: its nodes name the launches to resize
    cudaGraphExec_t exec = nullptr;
    std::vector<AttentionNode> attention;
  };
  Graph* find(GraphKey key);
  const Graph* find(GraphKey key) const;

  std::vector<Graph> graphs_;
  int capturing_tokens_ = 0;
  bool recording_ = false;  // capturing a prompt graph: attention launches go to recorded_
  std::vector<AttentionNode> recorded_;
};

}  // namespace kvinfer::cuda
