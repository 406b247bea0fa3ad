// Causal attention over the fp16 KV cache on the GPU (same math as cpu::attention).
//
// attention_prefill: rows of any number of sequences, each a run of consecutive positions of one
// slot (a prompt chunk, possibly after cached tokens). Query tiles against key tiles with an online
// softmax, QK^T and PV on tensor cores (fp16 in, fp32 accumulate), scores and output in registers:
// on Hopper for head_dim 64 and 128 with warpgroup MMAs, K/V by TMA and warp specialisation
// (sm90/attention_prefill_ws.cu), else FlashAttention-2 style with mma.sync (attention_prefill.cu). head_dim 32, 64, 80, 96, 128 or 256.
//
// attention_decode: one query row per sequence (slots of different lengths in one launch). The
// context is split into chunks whose size depends only on the sequence's own length (and the
// model's chunking plan); a persistent grid streams the chunks' K/V tiles once for all query heads
// of a GQA group (tensor cores, up to 16 query heads per KV head). A sequence's chunks are always
// folded in chunk order, in registers when one block holds them all, else by the block that
// completes the row, so results never depend on the batch composition.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "backend/cuda/workspace.h"
#include "core/half.h"
#include "types/kv_layout.h"

namespace kvinfer::cuda {

// q: [T][q_stride] with num_heads*head_dim query values per row; out: [T][out_stride].
// Sequence b: rows [seq_starts[b], seq_starts[b+1]), its K/V in the blocks of row b of
// block_tables ([batch][layout.table_stride]); positions[t] is row t's absolute position;
// max_seq_rows bounds the rows of one sequence (grid size).
// kernel: the same math either way, in other instructions (tests run each). automatic: ws where
// prefill_ws_available(head_dim, layout), else mma (KVINFER_PREFILL=mma|ws|ws_overlap|ws_overlap_192 in the
// environment forces one); ws where it is not available is an error. ws: the warp-specialised
// Hopper kernel (TMA producer, ping-pong consumers); ws_overlap: the same with each warpgroup's
// softmax under its own P V; ws_overlap_192 (head_dim 64): that with three consumer warpgroups,
// 192 query rows a block. The three give the same bits.
enum class PrefillKernel { automatic, mma, ws, ws_overlap, ws_overlap_192 };
// Built for sm_90a, this device (compute capability 9.0) and head_dim (64 or 128) run the Hopper
// kernel, and it reads this cache layout (blocks of >= 16 positions, pool size known).
bool prefill_ws_available(int head_dim, const KVLayout& layout);
// The kernel `automatic` runs for sequences of up to max_seq_rows rows (KVINFER_PREFILL forces one
// where it runs), and the launch grid of a resolved kernel for `batch` sequences of up to
// max_seq_rows rows: a block per head and query tile of each sequence (a CUDA graph resizes its
// captured launch to a step's sequences with it; blocks past a sequence's rows return at once).
PrefillKernel prefill_kernel_for(int head_dim, const KVLayout& layout, int max_seq_rows);
dim3 prefill_grid(PrefillKernel kernel, int num_heads, int max_seq_rows, int batch);
void attention_prefill(const half_t* q, int64_t q_stride, const half_t* k_cache,
                       const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                       const int32_t* seq_starts, const int32_t* positions, int batch,
                       int max_seq_rows, int num_heads, int num_kv_heads, int head_dim, float scale,
                       half_t* out, int64_t out_stride, cudaStream_t stream,
                       PrefillKernel kernel = PrefillKernel::automatic);

// Decode: row b is sequence b (row b of block_tables, position positions[b]). `workspace` holds
// decode_workspace_bytes(batch, num_heads, head_dim) bytes, 16-byte aligned, zeroed once before its
// first use: chunk states of rows shared between blocks and counters that every call returns to
// zero. One workspace serves calls of any batch up to the one it was sized for (same heads and
// head_dim), one call at a time.
// How a context is cut into chunks: splits = min(max_splits, ceil(n / min_chunk),
// max(min_splits, ceil(sqrt(n / growth_keys)))), chunk = ceil(n / splits) rounded up to 64 keys.
// A function of n and the model alone, so never of the batch. The square root lets chunk length
// and count grow together (a chunk is at least sqrt(growth_keys * n) keys): a row's time is its
// chunk's tiles plus the fold of its chunk states, and every chunk state a block writes is counted
// and read back. The defaults' measurements: docs/dev/decode-attention-tuning.md.
struct DecodeSplits {
  int min_chunk = 256;
  int max_splits = 32;   // <= kDecodeMaxSplits
  int growth_keys = 32;  // 0: no square-root bound
  int min_splits = 0;    // <= kDecodeMaxSplits: the square-root bound is at least this
};
// The chunking of a model with num_kv_heads KV heads. A lone sequence is num_kv_heads rows of
// chunks spread over the SMs, and at batch 1 its time is that of one chunk's tiles: with fewer
// than 8 KV heads, chunks are 128 keys up to 2K keys and at least 16 up to 8K; from 8 on, the
// defaults (docs/dev/decode-attention-tuning.md has the measurements behind both).
DecodeSplits decode_splits(int num_kv_heads);
// What the caller knows of the batch's lengths (keys per sequence, n = position + 1): the longest
// and the sum, 0 when unknown. It picks the launch shape only, never the results: any hint, even a
// wrong one, gives the same bits (a wrong one may be slower).
struct DecodeLengths {
  int max_keys = 0;
  int64_t total_keys = 0;
};
// Launch shape: the persistent grid (blocks take contiguous shares of the chunks, so a few long
// sequences spread over every SM), or, with enough rows (batch * num_kv_heads) of similar length,
// one block per piece of a row (a run of its chunks; a whole row when there are more rows than
// SMs) in a grid the hardware schedules: an SM that streams faster takes more blocks, where fixed
// shares leave it idle at the end, and a row is cut in as few places as the SMs allow
// (docs/dev/decode-attention-tuning.md). With no more chunks than SMs, a block per chunk (each block has an SM to
// itself) and a deeper copy pipeline; a shallower one with a row per SM (the DRAM is the limit).
// None of this changes a result bit.
constexpr int kRowBlocksMaxKeys = 4096;  // longer rows are whole-row blocks only at head_dim > 64
constexpr int kRowPiecesMinRows = 16;
struct DecodeLaunch {
  int row_pieces = 0;    // pieces per row, 0: the persistent grid
  int piece_chunks = 0;  // chunks per piece
  int stages = 3;        // K/V tiles in flight per block: 2, 3 or 4 (no result bit depends on it)
};
DecodeLaunch decode_launch(int batch, int num_heads, int num_kv_heads, int head_dim, int num_sms,
                           DecodeSplits splits, DecodeLengths lengths);
// Whether attention_decode runs this shape (head_dim 32, 64, 80, 96 or 128; up to 16 query heads a
// KV head).
bool attention_decode_supports(int head_dim, int num_heads, int num_kv_heads);
void attention_decode(const half_t* q, int64_t q_stride, const half_t* k_cache,
                      const half_t* v_cache, const KVLayout& layout, const int32_t* block_tables,
                      const int32_t* positions, int batch, int num_heads, int num_kv_heads,
                      int head_dim, float scale, float* workspace, half_t* out, int64_t out_stride,
                      cudaStream_t stream, DecodeSplits splits = {}, DecodeLengths lengths = {});

}  // namespace kvinfer::cuda
