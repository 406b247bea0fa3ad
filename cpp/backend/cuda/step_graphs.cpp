#include "backend/cuda/step_graphs.h"

#include "backend/cuda/workspace.h"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

std::vector<int> decode_graph_ladder(int max_batch) {
  std::vector<int> out;
  for (int b : {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256})
    if (b < max_batch) out.push_back(b);
  for (int b = 320; b < max_batch; b += 64) out.push_back(b);
  out.push_back(max_batch);
  return out;
}

std::vector<int> prompt_token_ladder(int max_step_tokens) {
  std::vector<int> out;
  for (int t = 128; t < max_step_tokens; t += t < 1024 ? 64 : t < 2048 ? 128 : t < 4096 ? 256 : 512)
    out.push_back(t);
  if (max_step_tokens > kSkinnyMaxRows) out.push_back(max_step_tokens);
  return out;
}

std::vector<int> prompt_row_ladder(int max_batch) {
  std::vector<int> out;
  for (int r : {1, 4, 16})
    if (r < max_batch) out.push_back(r);
  out.push_back(max_batch);
  return out;
}

void StepGraphs::capture(GraphKey key, cudaStream_t stream, const std::function<void()>& step) {
  struct Reset {  // whatever happens
    StepGraphs& s;
    ~Reset() { s.capturing_tokens_ = 0, s.recording_ = false, s.recorded_.clear(); }
  } reset{*this};
  capturing_tokens_ = key.tokens;
  step();
  KVINFER_CUDA_CHECK(cudaStreamSynchronize(stream));
  Graph g;
  g.key = key;
  recorded_.clear();
  recording_ = key.tokens > 0;
  KVINFER_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    step();
  } catch (...) {
    cudaStreamEndCapture(stream, &g.graph);
    if (g.graph) cudaGraphDestroy(g.graph);
    throw;
  }
  recording_ = false;
  KVINFER_CUDA_CHECK(cudaStreamEndCapture(stream, &g.graph));
  g.attention = std::move(recorded_);
  recorded_.clear();
  for (AttentionNode& a : g.attention) {
    const cudaError_t err = cudaGraphKernelNodeGetParams(a.node, &a.params);
    if (err != cudaSuccess) cudaGraphDestroy(g.graph);
    KVINFER_CUDA_CHECK(err);
  }
  const cudaError_t err = cudaGraphInstantiate(&g.exec, g.graph, 0);
  if (err != cudaSuccess) cudaGraphDestroy(g.graph);
  KVINFER_CUDA_CHECK(err);
  if (g.attention.empty()) {  // nothing to resize: the graph itself is not needed
    cudaGraphDestroy(g.graph);
    g.graph = nullptr;
  }
  const cudaError_t uploaded = cudaGraphUpload(g.exec, stream);
  if (uploaded != cudaSuccess) {
    cudaGraphExecDestroy(g.exec);
    if (g.graph) cudaGraphDestroy(g.graph);
  }
  KVINFER_CUDA_CHECK(uploaded);
  graphs_.push_back(std::move(g));
}

void StepGraphs::attention_launched(cudaStream_t stream, PrefillKernel kernel) {
  if (!recording_) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaGraphNode_t* last = nullptr;
  size_t count = 0;
#if CUDART_VERSION >= 13000
  KVINFER_CUDA_CHECK(cudaStreamGetCaptureInfo(stream, &status, nullptr, nullptr, &last, nullptr, &count));
#else
  KVINFER_CUDA_CHECK(cudaStreamGetCaptureInfo_v2(stream, &status, nullptr, nullptr, &last, &count));
#endif
  cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
  if (status == cudaStreamCaptureStatusActive && count == 1) KVINFER_CUDA_CHECK(cudaGraphNodeGetType(last[0], &type));
  if (type != cudaGraphNodeTypeKernel)
    throw CudaError(str("capturing a prompt graph: the attention launch is not the capture's one last node (", count,
                        " nodes)"));
  AttentionNode a;
  a.node = last[0], a.kernel = kernel;
  recorded_.push_back(a);
}

int StepGraphs::decode_batch(int num_seqs) const {
  for (const Graph& g : graphs_)  // decode graphs, smallest first
    if (g.key.tokens == 0 && g.key.batch >= num_seqs) return g.key.batch;
  return 0;
}

void StepGraphs::launch(GraphKey key, cudaStream_t stream, const AttentionGridArgs& args) {
  Graph* g = find(key);
  KVINFER_CHECK_ARG(g, "no graph was captured for a step of ", key.tokens, " tokens, ", key.batch,
                    " decode sequences and ", key.rows, " sampled rows");
  // The grid of the kernel captured; the rest of each launch reads the step's fields, at fixed addresses
  for (AttentionNode& a : g->attention) {
    const dim3 grid = prefill_grid(a.kernel, args.num_heads, args.max_query_len, args.num_seqs);
    if (grid.x == a.params.gridDim.x && grid.y == a.params.gridDim.y && grid.z == a.params.gridDim.z) continue;
    cudaKernelNodeParams p = a.params;
    p.gridDim = grid;
    KVINFER_CUDA_CHECK(cudaGraphExecKernelNodeSetParams(g->exec, a.node, &p));
    a.params = p;  // only once the graph holds it
  }
  KVINFER_CUDA_CHECK(cudaGraphLaunch(g->exec, stream));
}

void StepGraphs::clear() noexcept {
  for (const Graph& g : graphs_) {
    if (g.exec) cudaGraphExecDestroy(g.exec);
    if (g.graph) cudaGraphDestroy(g.graph);
  }
  graphs_.clear();
}

StepGraphs::Graph* StepGraphs::find(GraphKey key) {
  for (Graph& g : graphs_)
    if (g.key == key) return &g;
  return nullptr;
}

const StepGraphs::Graph* StepGraphs::find(GraphKey key) const {
  for (const Graph& g : graphs_)
    if (g.key == key) return &g;
  return nullptr;
}

}  // namespace kvinfer::cuda
