// Decode attention's host plan: how a model chunks a context (decode_splits) and which launch shape
// a step's lengths pick (decode_launch). Neither changes a result bit. The measurements behind each
// rule: docs/dev/decode-attention-tuning.md.
#include "backend/cuda/decode_common.cuh"

namespace kvinfer::cuda {

using decode::split_plan;

DecodeSplits decode_splits(int num_kv_heads) {
  if (num_kv_heads >= 8) return DecodeSplits{};
  return DecodeSplits{128, 32, 32, 16};
}

DecodeLaunch decode_launch(int batch, int num_heads, int num_kv_heads, int head_dim, int num_sms,
                           DecodeSplits splits, DecodeLengths lengths) {
  DecodeLaunch l;
  if (lengths.max_keys <= 0) return l;  // unknown: the persistent grid, 3 stages
  const int64_t rows = static_cast<int64_t>(batch) * num_kv_heads;
  int max_splits = 0, chunk = 0;  // the longest row's chunk count bounds every row's
  split_plan(lengths.max_keys, splits, max_splits, chunk);
  const int64_t items = rows * max_splits;
  // Rows of similar length (the mean at least half the longest): a piece's size is set by the
  // longest row, and one long row among short ones would be streamed by few blocks.
  const bool similar = 2 * lengths.total_keys >= static_cast<int64_t>(batch) * lengths.max_keys;
  if (items <= num_sms) {
    // a block per chunk, each on an SM of its own, with its whole chunk in flight at once. The
    // persistent grid gives the same blocks the same single chunks, but first scans the batch
    // for them.
    l.row_pieces = max_splits;
    l.piece_chunks = 1;
    l.stages = 4;
  } else if (similar && rows >= num_sms &&
             (lengths.max_keys <= kRowBlocksMaxKeys || (head_dim > 64 && 5 * rows >= 6 * num_sms))) {
    // a whole row per block. Rows longer than 4K only at head_dim > 64 (2 stages, below) and with
    // at least 1.2 rows per SM: below that the persistent grid's even shares win.
    l.row_pieces = 1;
    l.piece_chunks = max_splits;
  } else if (similar && rows >= kRowPiecesMinRows && rows < num_sms) {
    // equal pieces of rows, about one block per SM at head_dim > 64 and three at 64 (with half the
    // bytes per tile)
    const int64_t target = static_cast<int64_t>(num_sms) * (head_dim <= 64 ? 3 : 1);
    l.piece_chunks = static_cast<int>((items + target - 1) / target);
    l.row_pieces = (max_splits + l.piece_chunks - 1) / l.piece_chunks;
  }
  // At least a row per SM: 2 stages at head_dim > 64. The DRAM is the limit there, and fewer bytes
  // queued per block stream it as fast or faster (not so at head_dim 64). Not for more than 8 heads
  // per KV head: a second n-tile takes so many registers that one block fills an SM at any stage
  // count, and 2 stages would only halve its bytes in flight.
  if (items > num_sms && rows >= num_sms && head_dim > 64 && num_heads <= 8 * num_kv_heads) l.stages = 2;
  return l;
}

}  // namespace kvinfer::cuda
