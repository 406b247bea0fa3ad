// The inputs of one step of the model: which tokens run, where each belongs, what is already
// cached, and which rows are sampled with what arguments.
//
// StepBatch is what a caller hands to the runner (host memory, read during the call). The runner
// expands it into StepArrays, the named fields every op and kernel reads, packed into one region
// of host staging memory and sent to the device with a single copy (on the CPU the staging region
// is what the ops read). The packing depends only on the counts, so a step of the same shape
// always finds each field at the same address: a captured CUDA graph replays against it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "types/sampling_args.h"

namespace kvinfer {

struct StepBatch {
  int num_tokens = 0;      // T: new tokens in this step, sequence after sequence
  int num_seqs = 0;        // B
  int num_logit_rows = 0;  // R: rows whose logits are computed (and sampled when `sampling`)
  const int32_t* tokens = nullptr;          // [T] token ids
  // [T] or null. prev_sample_row[t] >= 0: token t is the one the previous step sampled for that
  // row (it never leaves the device); tokens[t] is then ignored. -1: tokens[t].
  const int32_t* prev_sample_row = nullptr;
  const int32_t* query_starts = nullptr;    // [B + 1] sequence b owns tokens [q[b], q[b+1])
  const int32_t* cached_lengths = nullptr;  // [B] tokens of sequence b already in the KV cache
  // [B] sequence b's slot: its row of token history (repetition penalty), and its blocks when no
  // block tables are given (slot s owns blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq)).
  const int32_t* kv_slots = nullptr;
  // [B][block_table_width] or null: the KV cache blocks of sequence b in position order; entries
  // 0 .. ceil((cached_lengths[b] + new tokens) / block_size) - 1 are read, the rest never.
  const int32_t* block_tables = nullptr;
  int block_table_width = 0;
  const int32_t* logit_rows = nullptr;      // [R] token indices, ascending
  const SamplingArgs* sampling = nullptr;   // [R] or null: logits only, nothing sampled
  // [num_logit_bias]: the rows' logit biases (SamplingArgs::bias_start / bias_count index them)
  const LogitBias* logit_bias = nullptr;
  int num_logit_bias = 0;

  bool decode() const { return num_tokens == num_seqs; }  // one new token per sequence
};

// The step's fields as the ops read them, all at fixed offsets of one region (StepLayout).
// positions and token_seq are expanded from query_starts and cached_lengths by the runner.
struct StepArrays {
  int32_t* tokens;           // [T] (resolved on the device from prev_sample_row)
  int32_t* prev_sample_row;  // [T]
  int32_t* positions;        // [T] absolute position of each token in its sequence (-1: padding, staging.h)
  int32_t* token_seq;        // [T] the sequence each token belongs to
  int32_t* query_starts;     // [B + 1]
  int32_t* cached_lengths;   // [B]
  int32_t* kv_slots;         // [B]
  int32_t* block_tables;     // [B][KVLayout::table_stride] (entries past a sequence's end: stale)
  int32_t* logit_rows;       // [R]
  SamplingArgs* sampling;    // [R] (R <= max_batch when sampling)
  LogitBias* logit_bias;     // [num_logit_bias]
};

// Byte offsets of the StepArrays fields for T tokens, B sequences with block-table rows of
// `table_stride` entries, R logit rows and `num_logit_bias` biases, each field 16-byte aligned;
// `bytes` is the region's size. The biases come last, so no other field moves with their count.
struct StepLayout {
  size_t tokens, prev_sample_row, positions, token_seq, query_starts, cached_lengths, kv_slots,
      block_tables, logit_rows, sampling, logit_bias, bytes;
  StepArrays at(void* base) const;
};
StepLayout step_layout(int num_tokens, int num_seqs, int num_logit_rows, int table_stride, int num_logit_bias = 0);

}  // namespace kvinfer
