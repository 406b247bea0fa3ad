// Tensor maps for the Hopper kernels' TMA copies (host side), encoded through the driver the CUDA
// runtime loaded (no link against libcuda).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace kvinfer::cuda {

// How a box lands in shared memory: fp16 in the 128-byte swizzled layout wgmma reads (box rows of
// 64 halves), or as stored (fp32 or fp16).
enum class TmaBox { swizzled, fp32, fp16 };

// A row-major [rows][cols] matrix at p (row stride ld elements, 16-byte aligned) copied in boxes of
// box_rows x box_cols; boxes reaching past the matrix read zeros there. CudaError where the driver
// cannot encode it.
CUtensorMap tma_map_2d(const void* p, int64_t rows, int64_t cols, int64_t ld, int box_rows, int box_cols,
                       TmaBox kind = TmaBox::swizzled);

}  // namespace kvinfer::cuda
