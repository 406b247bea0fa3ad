// Decode attention's launch (the kernel: decode_kernel.cuh): the instance for the head dimension,
// GQA group and pipeline depth, and the launch shape decode_launch (decode_plan.cu) picks: the
// persistent grid, or one block per piece of a row.
#include "backend/cuda/attention.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>

#include "backend/cuda/common.cuh"
#include "backend/cuda/decode_common.cuh"
#include "backend/cuda/decode_heads.h"
#include "backend/cuda/decode_merge.cuh"
#include "backend/cuda/decode_share.cuh"
#include "backend/cuda/decode_kernel.cuh"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

using namespace decode;

// Resident blocks per SM of one kernel instance, asked once (it also raises the shared-memory limit).
template <int D, bool kTall, int kStages>
static int blocks_per_sm() {
  static int blocks = 0;
  static std::once_flag once;
  std::call_once(once, [] {
    KVINFER_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<D, kTall, kStages>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem_bytes<D, kTall, kStages>())));
    KVINFER_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_kernel<D, kTall, kStages>,
                                                                     kThreads, smem_bytes<D, kTall, kStages>()));
  });
  return blocks;
}

// One launch: the persistent grid (as many blocks as fit at once) or one block per piece of a row.
template <int D, bool kTall, int kStages>
static void launch_shape(const DecodeArgs& a, int sms, cudaStream_t stream) {
  const int slots = sms * blocks_per_sm<D, kTall, kStages>();  // (which also raises the shared-memory limit)
  // the persistent grid: never more blocks than the batch can have items (a small batch in a
  // captured graph would otherwise start hundreds of blocks with nothing to do)
  const int64_t most_items = static_cast<int64_t>(a.batch) * a.num_kv_heads * a.plan.max_splits;
  const int grid = a.row_pieces > 0 ? a.batch * a.num_kv_heads * a.row_pieces
                                    : static_cast<int>(std::min<int64_t>(slots, most_items));
  launch_dependent(decode_kernel<D, kTall, kStages>, dim3(grid), dim3(kThreads), smem_bytes<D, kTall, kStages>(),
                   stream, a);
}

// Only the kernels decode_launch can pick are built: 2 stages only at head_dim > 64, groups <= 8.
template <int D, bool kTall>
static void launch_stages(const DecodeArgs& a, int stages, int sms, cudaStream_t stream) {
  if constexpr (D > 64 && !kTall) {
    if (stages == 2) return launch_shape<D, kTall, 2>(a, sms, stream);
  }
  if (stages == 4) launch_shape<D, kTall, 4>(a, sms, stream);
  else launch_shape<D, kTall, 3>(a, sms, stream);
}

template <int D>
static void launch_decode(DecodeArgs a, DecodeLengths lengths, cudaStream_t stream) {
  int device = 0, sms = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  KVINFER_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const DecodeLaunch l = decode_launch(a.batch, a.num_heads, a.num_kv_heads, D, sms, a.plan, lengths);
  a.row_pieces = l.row_pieces;
  a.piece_chunks = l.piece_chunks;
  if (a.group > 8) launch_stages<D, true>(a, l.stages, sms, stream);
  else launch_stages<D, false>(a, l.stages, sms, stream);
  KVINFER_CUDA_CHECK_LAUNCH();
}

bool attention_decode_supports(int head_dim, int num_heads, int num_kv_heads) {
  return decode_heads_supported(head_dim, num_heads, num_kv_heads);
}

void attention_decode(const half_t* q, int64_t q_stride, const half_t* k_cache,
                      const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                      const int32_t* positions, int batch, int num_heads, int num_kv_heads,
                      int head_dim, float scale, float* workspace, half_t* out, int64_t out_stride,
                      cudaStream_t stream, DecodeSplits plan, DecodeLengths lengths) {
  if (batch == 0) return;
  KVINFER_CHECK_ARG(plan.min_chunk >= 64 && plan.max_splits >= 1 && plan.max_splits <= kDecodeMaxSplits &&
                        plan.growth_keys >= 0 && plan.growth_keys <= (1 << 20) && plan.min_splits >= 0 &&
                        plan.min_splits <= kDecodeMaxSplits,
                    "attention_decode: min_chunk=", plan.min_chunk, " max_splits=", plan.max_splits,
                    " growth_keys=", plan.growth_keys, " min_splits=", plan.min_splits,
                    " (need min_chunk >= 64, 1 <= max_splits <= ", kDecodeMaxSplits,
                    ", 0 <= growth_keys <= 2^20, 0 <= min_splits <= ", kDecodeMaxSplits, ")");
  KVINFER_CHECK_ARG(lengths.max_keys >= 0 && lengths.total_keys >= 0, "attention_decode: max_keys=",
                    lengths.max_keys, " total_keys=", lengths.total_keys, " (lengths hint: >= 0, 0 when unknown)");
  KVINFER_CHECK_ARG(num_kv_heads > 0 && num_heads % num_kv_heads == 0, "num_heads=", num_heads,
                    " is not a multiple of num_kv_heads=", num_kv_heads);
  const int group = num_heads / num_kv_heads;
  KVINFER_CHECK_ARG(attention_decode_supports(head_dim, num_heads, num_kv_heads), "attention_decode: head_dim=",
                    head_dim, " with a GQA group of ", group, " query heads per KV head is not supported (head_dim "
                    "32, 64, 80, 96 or 128; groups of 1..16)");
  KVINFER_CHECK_ARG(q_stride % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 && out_stride % 2 == 0 &&
                        reinterpret_cast<uintptr_t>(out) % 4 == 0,
                    "attention_decode: q rows must be 16-byte aligned and out rows 4-byte aligned (q_stride=",
                    q_stride, " out_stride=", out_stride, ")");
  KVINFER_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % 16 == 0,
                    "attention_decode: the workspace must be 16-byte aligned");
  const DecodeArgs a{reinterpret_cast<const __half*>(q), q_stride, reinterpret_cast<const __half*>(k_cache),
                     reinterpret_cast<const __half*>(v_cache), layout, block_tables, positions, batch, num_heads,
                     num_kv_heads, group, head_dim, scale * kLog2e, plan, 0, 0, workspace,
                     decode_record_floats(num_heads, head_dim),
                     reinterpret_cast<__half*>(out), out_stride};
  switch (head_dim) {
    case 32: return launch_decode<32>(a, lengths, stream);
    case 64: return launch_decode<64>(a, lengths, stream);
    case 80: return launch_decode<80>(a, lengths, stream);
    case 96: return launch_decode<96>(a, lengths, stream);
    case 128: return launch_decode<128>(a, lengths, stream);
    default:
      throw std::invalid_argument(str("attention_decode: head_dim=", head_dim,
                                      " is not supported (32, 64, 80, 96, 128)"));
  }
}

}  // namespace kvinfer::cuda
