#include "types/step_batch.h"

#include <algorithm>
#include <cstring>

#include "runtime/staging.h"

namespace kvinfer {

StepLayout step_layout(int num_tokens, int num_seqs, int num_logit_rows, int table_stride, int num_logit_bias) {
  StepLayout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t offset = at;
    at += (bytes + 15) / 16 * 16;
    return offset;
  };
  const size_t T = num_tokens, B = num_seqs, R = num_logit_rows;
  l.tokens = take(T * 4);
  l.prev_sample_row = take(T * 4);
  l.positions = take(T * 4);
  l.token_seq = take(T * 4);
  l.query_starts = take((B + 1) * 4);
  l.cached_lengths = take(B * 4);
  l.kv_slots = take(B * 4);
  l.block_tables = take(B * static_cast<size_t>(table_stride) * 4);
  l.logit_rows = take(R * 4);
  l.sampling = take(R * sizeof(SamplingArgs));
  l.logit_bias = take(static_cast<size_t>(num_logit_bias) * sizeof(LogitBias));
  l.bytes = at;
  return l;
}

StepArrays StepLayout::at(void* base) const {
  char* p = static_cast<char*>(base);
  auto i32 = [&](size_t offset) { return reinterpret_cast<int32_t*>(p + offset); };
  return StepArrays{i32(tokens),         i32(prev_sample_row), i32(positions),
                    i32(token_seq),      i32(query_starts),    i32(cached_lengths),
                    i32(kv_slots),       i32(block_tables),    i32(logit_rows),
                    reinterpret_cast<SamplingArgs*>(p + sampling), reinterpret_cast<LogitBias*>(p + logit_bias)};
}

StepLayout stage_step(const StepBatch& b, const KVLayout& kv, const StepPadding& pad, void* region) {
  const int B = std::max(b.num_seqs, pad.seqs);
  const int T = std::max({b.num_tokens, pad.seqs, pad.tokens});
  const int R = std::max({b.num_logit_rows, pad.seqs, pad.rows});
  const int W = kv.table_stride;
  const StepLayout layout = step_layout(T, std::max(B, pad.seq_room), R, W, b.num_logit_bias);
  const StepArrays s = layout.at(region);
  for (int q = 0; q < b.num_seqs; ++q)
    for (int t = b.query_starts[q]; t < b.query_starts[q + 1]; ++t) {
      s.tokens[t] = b.tokens[t];
      s.prev_sample_row[t] = b.prev_sample_row ? b.prev_sample_row[t] : -1;
      s.positions[t] = b.cached_lengths[q] + (t - b.query_starts[q]);
      s.token_seq[t] = q;
    }
  std::memcpy(s.query_starts, b.query_starts, 4 * size_t(b.num_seqs + 1));
  std::memcpy(s.cached_lengths, b.cached_lengths, 4 * size_t(b.num_seqs));
  std::memcpy(s.kv_slots, b.kv_slots, 4 * size_t(b.num_seqs));
  for (int q = 0; q < b.num_seqs; ++q) {  // only the entries the step reads
    const int used = (b.cached_lengths[q] + b.query_starts[q + 1] - b.query_starts[q] + kv.block_size() - 1) >>
                     kv.block_shift;
    int32_t* row = s.block_tables + static_cast<int64_t>(q) * W;
    if (b.block_tables)
      std::memcpy(row, b.block_tables + static_cast<int64_t>(q) * b.block_table_width, 4 * size_t(used));
    else
      for (int i = 0; i < used; ++i) row[i] = b.kv_slots[q] * W + i;
  }
  if (b.num_logit_rows > 0)  // (a chunk that samples nothing may pass no rows: memcpy from null is undefined)
    std::memcpy(s.logit_rows, b.logit_rows, 4 * size_t(b.num_logit_rows));
  if (b.sampling && b.num_logit_rows > 0) std::memcpy(s.sampling, b.sampling, sizeof(SamplingArgs) * b.num_logit_rows);
  if (b.num_logit_bias > 0) std::memcpy(s.logit_bias, b.logit_bias, sizeof(LogitBias) * b.num_logit_bias);
  for (int p = b.num_seqs; p < B; ++p) {  // decode padding: one token, one row per sequence
    const int last = b.num_seqs - 1;
    s.tokens[p] = s.tokens[last];
    s.prev_sample_row[p] = s.prev_sample_row[last];
    s.positions[p] = s.positions[last];
    s.token_seq[p] = p;
    s.query_starts[p + 1] = p + 1;
    s.cached_lengths[p] = s.cached_lengths[last];
    s.kv_slots[p] = s.kv_slots[last];
    std::memcpy(s.block_tables + static_cast<int64_t>(p) * W, s.block_tables + static_cast<int64_t>(last) * W,
                4 * size_t(W));
    s.logit_rows[p] = p;
    s.sampling[p] = s.sampling[last];
  }
  for (int t = std::max(b.num_tokens, pad.seqs); t < T; ++t) {  // prompt padding: tokens of no sequence
    s.tokens[t] = 0;
    s.prev_sample_row[t] = -1;
    s.positions[t] = -1;
    s.token_seq[t] = 0;
  }
  for (int r = std::max(b.num_logit_rows, pad.seqs); r < R; ++r) {
    const bool any = b.num_logit_rows > 0;
    s.logit_rows[r] = any ? s.logit_rows[b.num_logit_rows - 1] : b.num_tokens - 1;
    s.sampling[r] = any && b.sampling ? s.sampling[b.num_logit_rows - 1] : SamplingArgs{};
  }
  return layout;
}

}  // namespace kvinfer
