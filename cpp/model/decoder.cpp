#include "model/decoder.h"

namespace kvinfer {

ModelWeights model_weights(const ModelConfig& c, const std::vector<TensorSpec>& layout,
                           const void* base) {
  ModelWeights w;
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = w.layers[l];
    lw.qkv.out = c.qkv_dim(), lw.qkv.in = c.hidden_size;
    lw.o.out = c.hidden_size, lw.o.in = c.q_dim();
    lw.mlp_in.out = c.mlp_in_dim(), lw.mlp_in.in = c.hidden_size;
    lw.down.out = c.hidden_size, lw.down.in = c.intermediate_size;
  }
  w.lm_head.out = c.vocab_size, w.lm_head.in = c.hidden_size;
  for (const TensorSpec& t : layout) {
    const half_t* p = reinterpret_cast<const half_t*>(static_cast<const char*>(base) + t.offset);
    LayerWeights* lw = t.layer >= 0 ? &w.layers[t.layer] : nullptr;
    switch (t.role) {
      case WeightRole::embed: w.embed = p; break;
      case WeightRole::pos_embed: w.pos_embed = p; break;
      case WeightRole::final_norm: w.final_norm.weight = p; break;
      case WeightRole::final_norm_bias: w.final_norm.bias = p; break;
      case WeightRole::lm_head: w.lm_head.weight = p; break;
      case WeightRole::attn_norm: lw->attn_norm.weight = p; break;
      case WeightRole::attn_norm_bias: lw->attn_norm.bias = p; break;
      case WeightRole::qkv: lw->qkv.weight = p; break;
      case WeightRole::qkv_bias: lw->qkv.bias = p; break;
      case WeightRole::q_norm: lw->head_norms.q.weight = p; break;
      case WeightRole::k_norm: lw->head_norms.k.weight = p; break;
      case WeightRole::o: lw->o.weight = p; break;
      case WeightRole::o_bias: lw->o.bias = p; break;
      case WeightRole::post_attn_norm: lw->post_attn_norm.weight = p; break;
      case WeightRole::mlp_norm: lw->mlp_norm.weight = p; break;
      case WeightRole::mlp_norm_bias: lw->mlp_norm.bias = p; break;
      case WeightRole::mlp_in: lw->mlp_in.weight = p; break;
      case WeightRole::mlp_in_bias: lw->mlp_in.bias = p; break;
      case WeightRole::down: lw->down.weight = p; break;
      case WeightRole::down_bias: lw->down.bias = p; break;
      case WeightRole::post_mlp_norm: lw->post_mlp_norm.weight = p; break;
    }
  }
  if (c.tie_word_embeddings) w.lm_head.weight = w.embed;
  return w;
}

void run_decoder(DecoderOps& ops, const ModelConfig& c, const ModelWeights& w,
                 const StepContext& step) {
  const Activation act = c.mlp == MlpKind::SwiGLU  ? Activation::silu_mul
                         : c.mlp == MlpKind::GeGLU ? Activation::gelu_mul
                                                   : Activation::gelu_new;
  ops.embed(w.embed, w.pos_embed, step);
  ops.capture_hidden(0, step);
  // After the last layer's K/V are written, each row's remaining work reads that row alone, and
  // only the rows whose logits are wanted matter: a prompt step finishes the layer on those rows
  // (none at all for a chunk that samples nothing). Not where every row's state is wanted.
  const bool narrow = !step.decode() && !step.hidden_out && step.num_logit_rows < step.num_tokens;
  StepContext kept = step;
  kept.num_tokens = step.num_logit_rows, kept.rows_kept = true;
  const StepContext* s = &step;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    ops.attention_inputs(l, lw.attn_norm, lw.qkv, lw.head_norms, *s);
    if (l == c.num_layers - 1 && narrow && step.num_logit_rows == 0) return;  // K/V written: all that is used
    ops.attention(l, *s);
    if (l == c.num_layers - 1 && narrow && ops.keep_logit_rows(step)) s = &kept;
    ops.attention_output(lw.o, lw.post_attn_norm, *s);
    ops.mlp(lw.mlp_norm, lw.mlp_in, act, lw.down, lw.post_mlp_norm, *s);
    ops.capture_hidden(l + 1, *s);
  }
  ops.logits(w.final_norm, w.lm_head, *s);
  if (step.sample) ops.sample(*s);
}

}  // namespace kvinfer
