// How the runner stages a step (runtime/staging.h): a decode step padded to a graph's batch, and a
// prompt step padded to a graph's tokens and sampled rows. Padding must never name a position a
// real token owns (the KV write and the history skip position -1) and must repeat a real sampled
// row, so that a padded step computes and keeps exactly what the step itself does.
#include <gtest/gtest.h>

#include <vector>

#include "runtime/staging.h"

namespace kvinfer {
namespace {

constexpr int kTableStride = 8;
const KVLayout kKV{/*block_stride=*/4 * 16 * 64, /*head_stride=*/16 * 64, /*head_dim=*/64, /*block_shift=*/4,
                   kTableStride, /*num_blocks=*/64};

struct TwoPrompts {  // 5 tokens after 3 cached, and 7 new tokens; the second samples its last token
  std::vector<int32_t> tokens{11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 26, 27};
  std::vector<int32_t> query_starts{0, 5, 12}, cached{3, 0}, slots{2, 5}, rows{11};
  std::vector<int32_t> tables{7, 9, 1, 2};  // width 2
  std::vector<SamplingArgs> sampling{SamplingArgs{}};
  StepBatch batch() {
    sampling[0].temperature = 0.7f, sampling[0].seed = 42;
    StepBatch b;
    b.num_tokens = 12, b.num_seqs = 2, b.num_logit_rows = 1;
    b.tokens = tokens.data(), b.query_starts = query_starts.data(), b.cached_lengths = cached.data();
    b.kv_slots = slots.data(), b.block_tables = tables.data(), b.block_table_width = 2;
    b.logit_rows = rows.data(), b.sampling = sampling.data();
    return b;
  }
};

std::vector<char> region_for(int tokens, int seqs, int rows) {
  return std::vector<char>(step_layout(tokens, seqs, rows, kTableStride).bytes + 16);
}

TEST(Staging, UnpaddedPromptStepExpandsPositionsAndSequences) {
  TwoPrompts p;
  auto region = region_for(12, 2, 1);
  const StepArrays s = stage_step(p.batch(), kKV, StepPadding{}, region.data()).at(region.data());
  const std::vector<int32_t> positions{3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6};
  for (int t = 0; t < 12; ++t) {
    EXPECT_EQ(s.positions[t], positions[t]) << t;
    EXPECT_EQ(s.token_seq[t], t < 5 ? 0 : 1) << t;
    EXPECT_EQ(s.tokens[t], p.tokens[t]) << t;
  }
  EXPECT_EQ(s.block_tables[0], 7);
  EXPECT_EQ(s.block_tables[kTableStride], 1);
}

TEST(Staging, PromptPaddingKeepsNothingAndRepeatsTheLastSampledRow) {
  TwoPrompts p;
  const StepBatch b = p.batch();
  auto region = region_for(128, 2, 16);
  const StepLayout layout = stage_step(b, kKV, StepPadding{0, 128, 16}, region.data());
  ASSERT_EQ(layout.bytes, step_layout(128, 2, 16, kTableStride).bytes);
  const StepArrays s = layout.at(region.data());
  EXPECT_EQ(s.query_starts[0], 0);
  EXPECT_EQ(s.query_starts[2], 12) << "padding tokens must belong to no sequence";
  EXPECT_EQ(s.positions[11], 6);
  for (int t = 12; t < 128; ++t) {
    ASSERT_EQ(s.positions[t], -1) << t;
    ASSERT_EQ(s.prev_sample_row[t], -1) << t;
    ASSERT_EQ(s.tokens[t], 0) << t;
  }
  for (int r = 0; r < 16; ++r) {
    ASSERT_EQ(s.logit_rows[r], 11) << r;
    ASSERT_EQ(s.sampling[r].seed, 42u) << r;
    ASSERT_FLOAT_EQ(s.sampling[r].temperature, 0.7f) << r;
  }
}

TEST(Staging, PromptPaddingLaysFieldsOutAsTheGraphWasCaptured) {
  // A graph captured with room for 8 sequences reads each field at the offset it had then: a step
  // of 2 sequences padded with the same room has the capture's layout (the first GPU run of the
  // prompt graphs read block tables at a one-sequence layout's offsets).
  TwoPrompts p;
  auto region = region_for(128, 8, 16);
  const StepLayout layout = stage_step(p.batch(), kKV, StepPadding{0, 128, 16, 8}, region.data());
  const StepLayout captured = step_layout(128, 8, 16, kTableStride);
  EXPECT_EQ(layout.block_tables, captured.block_tables);
  EXPECT_EQ(layout.logit_rows, captured.logit_rows);
  EXPECT_EQ(layout.sampling, captured.sampling);
  EXPECT_NE(step_layout(128, 2, 16, kTableStride).block_tables, captured.block_tables) << "the test must matter";
  const StepArrays s = layout.at(region.data());
  EXPECT_EQ(s.block_tables[0], 7);
  EXPECT_EQ(s.block_tables[kTableStride], 1);
  EXPECT_EQ(s.logit_rows[15], 11);
}

TEST(Staging, PromptStepThatSamplesNothingGetsGreedyRowsOfItsLastToken) {
  TwoPrompts p;
  StepBatch b = p.batch();
  b.num_logit_rows = 0, b.logit_rows = nullptr, b.sampling = nullptr;
  auto region = region_for(256, 2, 1);
  const StepArrays s = stage_step(b, kKV, StepPadding{0, 256, 1}, region.data()).at(region.data());
  EXPECT_EQ(s.logit_rows[0], 11);
  EXPECT_EQ(s.sampling[0].temperature, 0.0f);
  EXPECT_EQ(s.positions[255], -1);
}

TEST(Staging, DecodePaddingCopiesTheLastSequence) {
  std::vector<int32_t> tokens{5, 6, 7}, qs{0, 1, 2, 3}, cached{10, 20, 30}, slots{0, 1, 2}, rows{0, 1, 2};
  std::vector<SamplingArgs> sampling(3);
  sampling[2].seed = 9;
  StepBatch b;
  b.num_tokens = b.num_seqs = b.num_logit_rows = 3;
  b.tokens = tokens.data(), b.query_starts = qs.data(), b.cached_lengths = cached.data(), b.kv_slots = slots.data();
  b.logit_rows = rows.data(), b.sampling = sampling.data();
  auto region = region_for(4, 4, 4);
  const StepArrays s = stage_step(b, kKV, StepPadding{4, 0, 0}, region.data()).at(region.data());
  EXPECT_EQ(s.positions[3], 30);
  EXPECT_EQ(s.tokens[3], 7);
  EXPECT_EQ(s.kv_slots[3], 2);
  EXPECT_EQ(s.query_starts[4], 4);
  EXPECT_EQ(s.logit_rows[3], 3);
  EXPECT_EQ(s.sampling[3].seed, 9u);
  EXPECT_EQ(s.block_tables[3 * kTableStride], 2 * kTableStride) << "the last slot's own blocks";
}

}  // namespace
}  // namespace kvinfer
