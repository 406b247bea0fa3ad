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

// Skinny GEMMs (skinny_gemm.h): at most kSkinnyMaxRows rows, tiles of kSkinnyTile weight rows.
constexpr int kSkinnyMaxRows = 64;  // more rows go to cuBLAS
// Without batch invariance (RunnerOptions::batch_invariant), decode steps of this many rows and
// more go to cuBLAS too (faster from 16 rows: docs/dev/step-runtime-notes.md, run 17).
constexpr int kCublasDecodeMinRows = 16;
constexpr int kSkinnyTile = 16;     // output columns (rows of W) per tile; also the sums-of-squares group
constexpr int kSkinnySlice = 32;    // columns of K per lane step
constexpr int kSkinnyTargetUnits = 256;  // (tile, K range) blocks to aim for: about 2 per SM
constexpr int kSkinnyNormInBlockRows = 8;  // more rows: RMSNorm into fp16 rows first, then the GEMM
constexpr int kSkinnyWideTiles = 8;        // tiles per block of the wide kernel (a warp each)
constexpr int kSkinnyWideMinBlocks = 128;  // fewer blocks of whole K ranges than this: a block per quarter
constexpr int kSkinnyWideMinVocab = 32768;  // the automatic choice takes the wide kernel from this many outputs

// How K is split: `splits` contiguous ranges of k_per_split columns (a multiple of 32), each summed
// as four quarters folded in order, the ranges then folded in order by the block that finishes a
// tile last. A function of N and K alone: the reduction order of every output, whatever M is.
struct SkinnyPlan {
  int tiles = 0, splits = 1, k_per_split = 0;
};
inline SkinnyPlan skinny_plan(int N, int K) {
  SkinnyPlan p;
  p.tiles = (N + kSkinnyTile - 1) / kSkinnyTile;
  const int slices = (K + kSkinnySlice - 1) / kSkinnySlice;
  // split while there are few blocks and every range keeps at least 8 slices (2 per warp)
  while (static_cast<int64_t>(p.tiles) * p.splits < kSkinnyTargetUnits && slices >= 16 * p.splits) p.splits *= 2;
  const int per = (slices + p.splits - 1) / p.splits;
  p.k_per_split = per * kSkinnySlice;
  p.splits = (slices + per - 1) / per;  // no empty range
  return p;
}
// The Hopper kernel (sm90/skinny_gemm_wgmma.cu): blocks of kSkinnyWgmmaRows weight rows (groups),
// each K range walked in stages of kSkinnyWgmmaCols columns; K split (the ranges of a group are one
// cluster, at most kSkinnyWgmmaMaxSplits) while that leaves every range at least 4 stages and
// there are at most two blocks per SM of a 132-SM GPU. No workspace: the cluster folds the ranges.
constexpr int kSkinnyWgmmaRows = 64, kSkinnyWgmmaCols = 64, kSkinnyWgmmaTargetBlocks = 264, kSkinnyWgmmaMaxSplits = 8;
struct SkinnyWgmmaPlan {
  int groups = 0, splits = 1, k_per_split = 0;
};
inline SkinnyWgmmaPlan skinny_wgmma_plan(int N, int K) {
  SkinnyWgmmaPlan p;
  p.groups = (N + kSkinnyWgmmaRows - 1) / kSkinnyWgmmaRows;
  const int chunks = (K + kSkinnyWgmmaCols - 1) / kSkinnyWgmmaCols;
  while (static_cast<int64_t>(p.groups) * p.splits * 2 <= kSkinnyWgmmaTargetBlocks && chunks >= 8 * p.splits &&
         p.splits < kSkinnyWgmmaMaxSplits)
    p.splits *= 2;
  const int per = (chunks + p.splits - 1) / p.splits;
  p.k_per_split = per * kSkinnyWgmmaCols;
  p.splits = (chunks + per - 1) / per;  // no empty range
  return p;
}
// Floats of the split partials of one call, and tile counters (both 0 without splits).
inline size_t skinny_partial_floats(int N, int K) {
  const SkinnyPlan p = skinny_plan(N, K);
  return p.splits > 1 ? static_cast<size_t>(p.tiles) * p.splits * kSkinnyTile * kSkinnyMaxRows : 0;
}
// The wide kernel (skinny_gemm_wide.cu) gives a block kSkinnyWideTiles tiles and a
// whole K range, or, where that makes fewer than kSkinnyWideMinBlocks blocks, one quarter of a
// range: then the four quarter blocks of a range form a cluster and fold through each other's
// shared memory. (Whole ranges therefore only ever come one per tile: splits == 1.)
inline bool skinny_wide_quarters(int N, int K) {
  const SkinnyPlan p = skinny_plan(N, K);
  const int64_t groups = (p.tiles + kSkinnyWideTiles - 1) / kSkinnyWideTiles;
  return groups * p.splits < kSkinnyWideMinBlocks;
}
// Counters: one per group of tiles of a narrow block (at most one per tile), and four per group of
// a wide one (each quarter block finishes its quarter of the group's outputs).
inline int skinny_counters(int N, int K) {
  const SkinnyPlan p = skinny_plan(N, K);
  const int wide = (p.tiles + kSkinnyWideTiles - 1) / kSkinnyWideTiles * 4;
  return p.splits > 1 ? (p.tiles > wide ? p.tiles : wide) : 0;
}

}  // namespace kvinfer::cuda
