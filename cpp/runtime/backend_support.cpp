// Which models the CUDA backend runs: a property of the model and of the kernels written so far,
// compiled into every build (the planner and device="auto" ask it on machines without CUDA too).
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/decode_heads.h"
#include "runtime/backend.h"

namespace kvinfer {

std::string cuda_unsupported(const ModelConfig& c) {
  // q/k-norm on CUDA is opt-in until its GPU tests have run (the CPU backend's is checked against HF)
  const char* qk_norm_cuda = std::getenv("KVINFER_QK_NORM_CUDA");
  if (c.qk_norm && !(qk_norm_cuda && std::strcmp(qk_norm_cuda, "1") == 0))
    return c.architecture + " (q/k-norm) is not yet verified on CUDA: load it with device=\"cpu\", or set"
                            " KVINFER_QK_NORM_CUDA=1 to run the CUDA path anyway";
  // Gemma's layer (GeGLU, scaled embedding, post-norms, soft-capping) runs on the CPU backend only
  if (c.mlp == MlpKind::GeGLU || c.embed_scale != 1.0f || c.post_norms || c.attn_softcap != 0 || c.logit_softcap != 0)
    return c.architecture + " (GeGLU, embedding scale, post-norms or soft-capping) is not yet implemented on CUDA:"
                            " load it with device=\"cpu\"";
  if (!cuda::decode_heads_supported(c.head_dim, c.num_heads, c.num_kv_heads))
    return c.architecture + " with head_dim=" + std::to_string(c.head_dim) + " and " + std::to_string(c.num_heads) +
           " query heads over " + std::to_string(c.num_kv_heads) + " KV heads: the CUDA decode kernel runs head_dim 32,"
           " 64, 80, 96 or 128 with up to 16 query heads a KV head; load it with device=\"cpu\"";
  return "";
}

}  // namespace kvinfer
