// How the runner lays a StepBatch out for the ops (types/step_batch.h): positions and token_seq
// expanded from the per-sequence fields, everything packed by step_layout().
#pragma once

#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer {

// How a step is padded to the shape of a captured graph (0: not padded).
struct StepPadding {
  // A decode step run by a graph of this many sequences: copies of the last sequence (one token
  // and one sampled row each) are added; they compute and write exactly what it does, and their
  // sampled ids are never returned.
  int seqs = 0;
  // A prompt step run at this many tokens and sampled rows. Padding tokens (token 0, position -1)
  // belong to no sequence's query range: no op writes the KV cache or a history for them and
  // attention never reads them. Padding rows repeat the last sampled row (its token and sampling
  // arguments; without one, a greedy row of the last token): their ids are never returned.
  int tokens = 0;
  int rows = 0;
  // The sequences the layout leaves room for (at least the step's): a graph's kernels read each
  // field at the offset it had at capture, and the offsets depend on it (step_layout).
  int seq_room = 0;
};

// Writes the fields of `batch` into `region` (step_layout(...).bytes, 16-byte aligned), padded as
// `pad` says, and returns their layout.
// Block-table rows are `kv.table_stride` entries; a sequence without a block table (batch.block_tables
// null) gets its slot's own blocks.
StepLayout stage_step(const StepBatch& batch, const KVLayout& kv, const StepPadding& pad, void* region);

}  // namespace kvinfer
