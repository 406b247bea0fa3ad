// Dispatch of the prompt step's fused gate/up projection (prompt_mlp.h) to its Hopper kernel.
#include "backend/cuda/prompt_mlp.h"

#include <cstdlib>
#include <cstring>

#include "core/errors.h"

#if KVINFER_WITH_SM90A
#include "backend/cuda/sm90/prompt_mlp_wgmma.h"
#include "backend/cuda/sm90/skinny_wgmma.h"
#endif

namespace kvinfer::cuda {

bool prompt_mlp_enabled() {
  // read at each prompt step's MLP (not cached: a process may set it between loads, as the tests do)
  const char* v = std::getenv("KVINFER_PROMPT_MLP");
  return !(v && std::strcmp(v, "0") == 0);
}

bool prompt_mlp_gate_up_supported(int I, int K) {
#if KVINFER_WITH_SM90A
  // sm_90a code runs on compute capability 9.0: the current device's, asked each time (a process
  // may drive several GPUs)
  return I > 0 && I % 128 == 0 && K > 0 && K % 64 == 0 && skinny_wgmma_runs();
#else
  (void)I, (void)K;
  return false;
#endif
}

void prompt_mlp_gate_up(const half_t* x, int64_t ldx, const half_t* w, int I, int K, int M, half_t* out,
                        int64_t ldo, cudaStream_t stream) {
  KVINFER_CHECK_ARG(prompt_mlp_gate_up_supported(I, K), "prompt_mlp_gate_up: I=", I, " K=", K,
                    " (needs a Hopper build and device, I a multiple of 128, K of 64)");
  KVINFER_CHECK_ARG(M >= 0 && ldx >= K && ldo >= I && ldx % 8 == 0 && ldo % 2 == 0 &&
                        reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(out) % 4 == 0,
                    "prompt_mlp_gate_up: M=", M, " ldx=", ldx, " ldo=", ldo,
                    " (rows of x 16-byte aligned, ldx >= K, ldo >= I and even)");
  if (M == 0) return;
#if KVINFER_WITH_SM90A
  prompt_mlp_gate_up_wgmma(x, ldx, w, I, K, M, out, ldo, stream);
#else
  (void)stream;
#endif
}

}  // namespace kvinfer::cuda
