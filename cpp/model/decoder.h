// The layer recipe of every supported model, written once against DecoderOps, the small set of
// operations a backend (backend/cpu, backend/cuda) implements on its own buffers. What differs
// between model families is data: the ModelConfig fields the ops read and the weights present.
#pragma once

#include <cstdint>
#include <vector>

#include "core/half.h"
#include "model/model_config.h"
#include "types/step_batch.h"

namespace kvinfer {

// y = x W^T (+ bias), W [out][in] fp16.
struct Linear {
  const half_t* weight = nullptr;
  const half_t* bias = nullptr;  // [out] or null
  int out = 0, in = 0;
};
struct Norm {
  const half_t* weight = nullptr;
  const half_t* bias = nullptr;  // LayerNorm only
};
// RMSNorm of each q head and each k head over head_dim, before RoPE (ModelConfig::qk_norm);
// weights null where the model has none.
struct HeadNorms {
  Norm q, k;
  bool present() const { return q.weight != nullptr && k.weight != nullptr; }
};
struct LayerWeights {
  Norm attn_norm;
  Linear qkv;  // rows: q heads, then k heads, then v heads
  HeadNorms head_norms;
  Linear o;
  Norm post_attn_norm;  // of the attention output, before the residual add (null where none)
  Norm mlp_norm;
  Linear mlp_in;  // gate rows then up rows (SwiGLU, GeGLU), or fc (GeluNew)
  Linear down;
  Norm post_mlp_norm;  // of the MLP output, before the residual add (null where none)
};
struct ModelWeights {
  const half_t* embed = nullptr;
  const half_t* pos_embed = nullptr;  // learned positions only
  std::vector<LayerWeights> layers;
  Norm final_norm;
  Linear lm_head;  // the embedding when tied
};
// Views of the tensors of `layout` inside the weight allocation at `base`.
ModelWeights model_weights(const ModelConfig& config, const std::vector<TensorSpec>& layout,
                           const void* base);

// A step as the ops see it.
struct StepContext {
  StepArrays arrays;  // the fields, where the ops read them (host on the CPU, device on CUDA)
  int num_tokens = 0, num_seqs = 0, num_logit_rows = 0;
  int caller_rows = 0;    // logits rows the caller asked for: num_logit_rows less a graph's padding
  int max_query_len = 0;  // most new tokens of one sequence (a prefill's grid size)
  // Keys the longest sequence attends to, and the sum over sequences: picks decode attention's
  // launch shape, never a result. 0 when unknown (a step captured in a CUDA graph).
  int max_keys = 0;
  int64_t total_keys = 0;
  // A step that is not a decode step but starts with sequences of one new token each (a mixed
  // step's decodes, which the scheduler puts first; or one-token prompt chunks): how many, and
  // their keys as above. Their rows are rows 0..leading_decodes - 1. 0 in a decode step.
  int leading_decodes = 0;
  int leading_max_keys = 0;
  int64_t leading_total_keys = 0;
  bool sample = false;             // sample every logits row
  // The residual stream holds the logits rows alone, in order (rows 0..num_logit_rows - 1): the
  // last layer ran on them after its K/V were written (run_decoder). num_tokens is then their count.
  bool rows_kept = false;
  bool replay = false;             // a step of exactly the shape of a captured graph (decode or prompt)
  float* logits_out = nullptr;     // host [R][vocab], or null: logits stay where they are
  float* hidden_out = nullptr;     // host [num_layers + 1][T][hidden], or null (tests)
  bool decode() const { return !rows_kept && num_tokens == num_seqs; }
};

enum class Buffer { qkv, attn, mlp };
enum class Activation { none, silu_mul, gelu_mul, gelu_new };  // applied to a projection's input

class DecoderOps {
 public:
  virtual ~DecoderOps() = default;
  // x = table[token] * embed_scale (+ pos_table[position]); each token id is recorded in its slot's
  // history.
  virtual void embed(const half_t* table, const half_t* pos_table, const StepContext& step) = 0;
  // Attention's inputs for the step's tokens: qkv = norm(x) W^T + bias; each q and k head normed
  // by head_norms where present; with RoPE the q and k heads rotated at each token's position; q
  // left in Buffer::qkv for attention, k and v written into the layer's cache at each token's
  // position.
  virtual void attention_inputs(int layer, const Norm& norm, const Linear& qkv, const HeadNorms& head_norms,
                                const StepContext& step) = 0;
  // attn = causal softmax(softcap(q K^T * attention_scale())) V over each sequence's cached
  // positions (ModelConfig: the scale, and the soft-cap where attn_softcap is set).
  virtual void attention(int layer, const StepContext& step) = 0;
  // Rows 0..R-1 of the residual stream and of attn = its logits rows (R = num_logit_rows, their
  // order): what the rest of the last layer and the logits need, once its K/V are written. False
  // where the backend does not (the step then goes on with every row).
  virtual bool keep_logit_rows(const StepContext& step) = 0;
  // x += post(attn W^T + bias), post the RMSNorm `post` where its weight is given, else nothing
  virtual void attention_output(const Linear& o, const Norm& post, const StepContext& step) = 0;
  // x += post(act(norm(x) W_in^T + bias) W_down^T + bias) (silu_mul / gelu_mul: silu / gelu_tanh of
  // the first half of the projection's columns times the second half; post as above)
  virtual void mlp(const Norm& norm, const Linear& in, Activation act, const Linear& down, const Norm& post,
                   const StepContext& step) = 0;
  // logits[r] = softcap(norm(x[logit_rows[r]]) W^T) (x[r] where step.rows_kept; the soft-cap where
  // logit_softcap is set), copied to step.logits_out when it is given.
  virtual void logits(const Norm& norm, const Linear& w, const StepContext& step) = 0;
  // One token id per logits row, into the step's sampled-token buffer.
  virtual void sample(const StepContext& step) = 0;
  // step.hidden_out[index] = x (the residual stream after the embedding or a layer).
  virtual void capture_hidden(int index, const StepContext& step) = 0;
};

// The forward step (and sampling) of a decoder-only transformer.
void run_decoder(DecoderOps& ops, const ModelConfig& config, const ModelWeights& weights,
                 const StepContext& step);

}  // namespace kvinfer
