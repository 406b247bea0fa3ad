// Sizes of the CUDA kernels' workspaces, as plain arithmetic (no CUDA headers), so that the memory
// planner of a build without the CUDA backend predicts a CUDA engine's bytes exactly.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvinfer::cuda {

constexpr int kDecodeMaxSplits = 64;  // chunk slots per (sequence, query head) in the workspace

// Decode attention, per sequence: chunk states o [num_heads][kDecodeMaxSplits][head_dim] and
// (m, l) [num_heads][kDecodeMaxSplits][2], then int32 row counters (num_heads, padded to 4).
inline int64_t decode_record_floats(int num_heads, int head_dim) {
  return static_cast<int64_t>(num_heads) * kDecodeMaxSplits * (head_dim + 2) + (num_heads + 3) / 4 * 4;
}
inline size_t decode_workspace_bytes(int batch, int num_heads, int head_dim) {
  return static_cast<size_t>(batch) * decode_record_floats(num_heads, head_dim) * sizeof(float);
}

}  // namespace kvinfer::cuda
