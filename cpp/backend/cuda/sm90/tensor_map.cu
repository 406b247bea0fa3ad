// Host code only (tensor_map.h); built with the sm_90a kernels that use it.
#include "backend/cuda/sm90/tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <string>

#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer::cuda {

namespace {
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    KVINFER_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !p)
      throw CudaError("the CUDA driver has no cuTensorMapEncodeTiled (driver for CUDA 12.0 or later needed)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}
}  // namespace

CUtensorMap tma_map_2d(const void* p, int64_t rows, int64_t cols, int64_t ld, int box_rows, int box_cols,
                       TmaBox kind) {
  CUtensorMap map;
  const bool fp32 = kind == TmaBox::fp32;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * (fp32 ? 4 : 2)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode_tiled()(&map, fp32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                                    const_cast<void*>(p), dims, strides, box, element_strides,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    kind == TmaBox::swizzled ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw CudaError("cuTensorMapEncodeTiled failed (" + std::to_string(int(r)) + ") for " + std::to_string(rows) +
                    " x " + std::to_string(cols) + " elements of row stride " + std::to_string(ld) + ", boxes of " +
                    std::to_string(box_rows) + " x " + std::to_string(box_cols));
  return map;
}

}  // namespace kvinfer::cuda
