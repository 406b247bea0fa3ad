// How the runner lays a StepBatch out for the ops (types/step_batch.h): positions and token_seq
// expanded from the per-sequence fields, everything packed by step_layout().
#pragma once

#include "types/kv_layout.h"
#include "types/step_batch.h"

namespace kvinfer {

// Writes the fields of `batch` into `region` (step_layout(...).bytes, 16-byte aligned) and
// returns their layout. padded > 0 (a decode step run by a graph of that many sequences) adds
// copies of the last sequence up to `padded`: they compute and write exactly what it does, and
// their sampled ids are never returned.
// Block-table rows are `kv.table_stride` entries; a sequence without a block table (batch.block_tables
// null) gets its slot's own blocks.
StepLayout stage_step(const StepBatch& batch, const KVLayout& kv, int padded, void* region);

}  // namespace kvinfer
