#include "runtime/runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/errors.h"
#include "runtime/staging.h"

namespace kvinfer {

namespace {

KVCacheConfig cache_config(const ModelConfig& c, const RunnerShape& s) {
  s.validate(c);
  return {c.num_layers, s.max_context, c.num_kv_heads, c.head_dim, s.max_batch, s.block_size, s.num_blocks};
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

}  // namespace

Runner::Runner(const ModelConfig& config, const Device& device, const RunnerShape& shape,
               std::shared_ptr<VramTracker> tracker, RunnerOptions options)
    : config_(config),
      shape_(shape),
      device_(device),
      options_(options),
      specs_(weight_layout(config)),
      loaded_(specs_.size(), 0),
      weights_(weight_bytes(config), device, "weights", tracker, /*zero=*/false),
      cache_(cache_config(config, shape), device, weights_.tracker()),
      views_(model_weights(config, specs_, weights_.data())),
      slot_seen_(shape.max_batch),
      written_by_(cache_.num_blocks()) {
  for (size_t i = 0; i < specs_.size(); ++i) spec_index_[specs_[i].name] = i;
  const BackendInit init{config_, shape_, device_, weights_.tracker(), cache_, options_};
  backend_ = device.is_cuda() ? make_cuda_backend(init) : make_cpu_backend(init);
}

Runner::~Runner() { release(); }

bool Runner::released() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return weights_.empty();
}

void Runner::check_usable() const {
  KVINFER_CHECK_ARG(!weights_.empty(), "this model was closed (its memory was released)");
}

void Runner::set_weight(const std::string& name, const half_t* data, const std::vector<int64_t>& shape) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  auto it = spec_index_.find(name);
  KVINFER_CHECK_ARG(it != spec_index_.end(), "model ", config_.architecture, " has no weight '",
                    name, "'");
  const TensorSpec& spec = specs_[it->second];
  KVINFER_CHECK_ARG(shape == spec.shape, "weight '", name, "' has shape ", shape_str(shape),
                    ", expected ", shape_str(spec.shape));
  copy_bytes(weights_.as<char>() + spec.offset, device_, data, Device::cpu(), spec.bytes());
  if (!loaded_[it->second]) ++loaded_count_;
  loaded_[it->second] = 1;
}

std::vector<std::string> Runner::missing_weights() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (size_t i = 0; i < specs_.size(); ++i)
    if (!loaded_[i]) out.push_back(specs_[i].name);
  return out;
}

GraphStats Runner::capture_graphs() {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  KVINFER_CHECK_ARG(loaded_count_ == specs_.size(), "capture_graphs: not every weight is loaded");
  KVINFER_CHECK_ARG(in_flight_.empty(), "capture_graphs: steps are in flight");
  if (!options_.cuda_graphs) return graph_stats_;
  graph_stats_ = backend_->capture_graphs(
      [this](const StepContext& step) { run_decoder(*backend_, config_, views_, step); });
  return graph_stats_;
}

void Runner::validate(const StepBatch& b) const {
  check_usable();
  const int T = b.num_tokens, B = b.num_seqs, R = b.num_logit_rows;
  KVINFER_CHECK_ARG(B >= 1 && B <= shape_.max_batch, "sequences in this step=", B,
                    " must be in [1, max_batch=", shape_.max_batch, "]");
  KVINFER_CHECK_ARG(T >= 1 && T <= shape_.max_step_tokens, "tokens in this step=", T,
                    " must be in [1, max_step_tokens=", shape_.max_step_tokens, "]");
  KVINFER_CHECK_ARG(b.tokens && b.query_starts && b.cached_lengths && b.kv_slots && (R == 0 || b.logit_rows),
                    "a step needs tokens, query_starts, cached_lengths and kv_slots");
  KVINFER_CHECK_ARG(b.query_starts[0] == 0 && b.query_starts[B] == T, "query_starts must run from 0 to ",
                    T, ", got ", b.query_starts[0], " .. ", b.query_starts[B]);
  std::vector<uint8_t>& seen = slot_seen_;  // scratch: no allocation per step
  std::fill(seen.begin(), seen.end(), 0);
  for (int q = 0; q < B; ++q) {
    const int slot = b.kv_slots[q], n = b.query_starts[q + 1] - b.query_starts[q];
    KVINFER_CHECK_ARG(slot >= 0 && slot < shape_.max_batch, "sequence ", q, ": kv slot=", slot,
                      " is out of range [0, ", shape_.max_batch, ")");
    KVINFER_CHECK_ARG(!seen[slot], "kv slot ", slot, " appears twice in one step");
    seen[slot] = 1;
    KVINFER_CHECK_ARG(n >= 1, "sequence ", q, " has ", n, " new tokens; each needs at least 1");
    KVINFER_CHECK_ARG(b.cached_lengths[q] >= 0, "sequence ", q, ": cached length ", b.cached_lengths[q],
                      " must be >= 0");
    if (static_cast<int64_t>(b.cached_lengths[q]) + n > shape_.max_context)
      throw ContextOverflowError(str("sequence ", q, " holds ", b.cached_lengths[q], " tokens; ", n,
                                     " more exceed max_context=", shape_.max_context));
  }
  check_blocks(b);
  for (int t = 0; t < T; ++t) {
    const int from = b.prev_sample_row ? b.prev_sample_row[t] : -1;
    if (from >= 0) {
      KVINFER_CHECK_ARG(from < last_sampled_rows_, "token ", t, " takes row ", from,
                        " of the previous step's samples, which had ", last_sampled_rows_, " rows");
      continue;
    }
    KVINFER_CHECK_ARG(from == -1, "prev_sample_row[", t, "]=", from, " must be -1 or a row index");
    KVINFER_CHECK_ARG(b.tokens[t] >= 0 && b.tokens[t] < config_.vocab_size, "token id ", b.tokens[t],
                      " at position ", t, " is out of range [0, ", config_.vocab_size, ")");
  }
  KVINFER_CHECK_ARG(R >= 0 && R <= T, "logit rows=", R, " must be in [0, tokens=", T, "]");
  for (int r = 0; r < R; ++r)
    KVINFER_CHECK_ARG(b.logit_rows[r] >= 0 && b.logit_rows[r] < T && (r == 0 || b.logit_rows[r] > b.logit_rows[r - 1]),
                      "logit_rows must be ascending token indices in [0, ", T, "); row ", r, " is ",
                      b.logit_rows[r]);
  if (b.sampling) {
    KVINFER_CHECK_ARG(R <= shape_.max_batch, "sampled rows=", R, " exceed max_batch=", shape_.max_batch);
    for (int r = 0; r < R; ++r) {
      const SamplingArgs& a = b.sampling[r];
      KVINFER_CHECK_ARG(a.temperature >= 0 && a.top_k >= 0 && a.top_p > 0 && a.top_p <= 1 &&
                            a.min_p >= 0 && a.min_p <= 1 && a.repetition_penalty > 0 &&
                            std::isfinite(a.presence_penalty) && std::isfinite(a.frequency_penalty) &&
                            a.output_start >= 0,
                        "sampling arguments of row ", r, " are out of range");
    }
  }
  check_logit_bias(b);
  if (loaded_count_ != specs_.size()) {
    std::vector<std::string> missing;
    for (size_t i = 0; i < specs_.size(); ++i)
      if (!loaded_[i]) missing.push_back(specs_[i].name);
    throw std::invalid_argument(str("weight '", missing.front(), "' was never loaded (", missing.size(),
                                    " missing)"));
  }
}

// Each sampled row's biases are its own run of the step's logit_bias array, ids distinct and in
// the vocabulary (two threads adding to one logit would race), biases finite or -inf.
void Runner::check_logit_bias(const StepBatch& b) const {
  const int R = b.sampling ? b.num_logit_rows : 0, n = b.num_logit_bias;
  KVINFER_CHECK_ARG(n >= 0 && n <= shape_.max_batch * kMaxLogitBiasPerRow && (n == 0 || b.logit_bias),
                    "logit biases=", n, " must be in [0, max_batch x ", kMaxLogitBiasPerRow, "]");
  KVINFER_CHECK_ARG(n == 0 || b.sampling, "logit biases need sampling arguments");
  for (int r = 0; r < R; ++r) {
    const SamplingArgs& a = b.sampling[r];
    if (a.bias_count == 0) continue;
    KVINFER_CHECK_ARG(a.bias_count > 0 && a.bias_count <= kMaxLogitBiasPerRow && a.bias_start >= 0 &&
                          static_cast<int64_t>(a.bias_start) + a.bias_count <= n,
                      "row ", r, ": logit biases [", a.bias_start, ", ", int64_t(a.bias_start) + a.bias_count,
                      ") are not within the step's ", n, " (at most ", kMaxLogitBiasPerRow, " per row)");
    std::vector<int32_t>& ids = bias_ids_;
    ids.clear();
    for (int i = a.bias_start; i < a.bias_start + a.bias_count; ++i) {
      const LogitBias& e = b.logit_bias[i];
      KVINFER_CHECK_ARG(e.token >= 0 && e.token < config_.vocab_size, "row ", r, ": logit bias token id ", e.token,
                        " is out of range [0, ", config_.vocab_size, ")");
      KVINFER_CHECK_ARG(std::isfinite(e.bias) || e.bias == -std::numeric_limits<float>::infinity(), "row ", r,
                        ": logit bias ", e.bias, " of token ", e.token, " must be finite or -inf");
      ids.push_back(e.token);
    }
    std::sort(ids.begin(), ids.end());
    const auto dup = std::adjacent_find(ids.begin(), ids.end());
    KVINFER_CHECK_ARG(dup == ids.end(), "row ", r, ": token ", dup == ids.end() ? 0 : *dup,
                      " has two logit biases");
  }
}

// Every block a sequence reads is in the pool, and no block is written by two sequences of one
// step (their writes would race). Without block tables, each slot's own blocks must exist.
void Runner::check_blocks(const StepBatch& b) const {
  const KVLayout kv = cache_.layout();
  const int pool = cache_.num_blocks(), B = b.num_seqs;
  if (!b.block_tables) {
    for (int q = 0; q < B; ++q)
      KVINFER_CHECK_ARG(static_cast<int64_t>(b.kv_slots[q] + 1) * kv.table_stride <= pool, "sequence ", q,
                        ": slot ", b.kv_slots[q], " has no blocks of its own (", pool, " blocks of ",
                        kv.block_size(), " tokens hold ", pool / kv.table_stride,
                        " slots of max_context); pass block_tables");
    return;
  }
  KVINFER_CHECK_ARG(b.block_table_width >= 1, "block_table_width=", b.block_table_width, " must be >= 1");
  if (++write_stamp_ == 0) {  // wrapped: forget every mark
    std::fill(written_by_.begin(), written_by_.end(), std::pair<uint32_t, int>{0, 0});
    write_stamp_ = 1;
  }
  for (int q = 0; q < B; ++q) {
    const int n = b.query_starts[q + 1] - b.query_starts[q], end = b.cached_lengths[q] + n;
    const int used = (end + kv.block_size() - 1) >> kv.block_shift;
    KVINFER_CHECK_ARG(used <= b.block_table_width, "sequence ", q, " holds ", end, " tokens in ", used,
                      " blocks of ", kv.block_size(), " but its block table has ", b.block_table_width, " entries");
    const int32_t* row = b.block_tables + static_cast<int64_t>(q) * b.block_table_width;
    for (int i = 0; i < used; ++i)
      KVINFER_CHECK_ARG(row[i] >= 0 && row[i] < pool, "sequence ", q, ": block table entry ", i, "=", row[i],
                        " is out of range [0, num_blocks=", pool, ")");
    for (int i = b.cached_lengths[q] >> kv.block_shift; i < used; ++i) {
      auto& mark = written_by_[row[i]];
      KVINFER_CHECK_ARG(mark.first != write_stamp_ || mark.second == q, "block ", row[i], " is written by ",
                        "sequences ", mark.second, " and ", q, " in one step");
      mark = {write_stamp_, q};
    }
  }
}

void Runner::launch_locked(const StepBatch& b, float* logits, float* hidden_states) {
  validate(b);
  KVINFER_CHECK_ARG(b.num_logit_rows <= shape_.max_batch || logits, "logit rows=", b.num_logit_rows,
                    " exceed max_batch=", shape_.max_batch, "; more rows are possible only when their "
                    "logits are copied out");
  KVINFER_CHECK_ARG(static_cast<int>(in_flight_.size()) < Backend::kTickets, Backend::kTickets,
                    " steps are in flight: collect() one before launching another");
  // A step whose sampling leaves its logits as they were (greedy rows without penalties or
  // biases) may copy them out after a graph replay (tests compare replays with op-by-op steps).
  bool untouched = true;
  for (int r = 0; b.sampling && r < b.num_logit_rows; ++r)
    untouched = untouched && b.sampling[r].temperature == 0 && b.sampling[r].repetition_penalty == 1.0f &&
                b.sampling[r].bias_count == 0 && !b.sampling[r].penalises_output();
  const bool graphable = !hidden_states && (!logits || untouched) && b.num_logit_rows <= shape_.max_batch;
  // A decode step that samples every sequence replays the graph of its (padded) batch size.
  const bool plain_decode = b.decode() && b.sampling && b.num_logit_rows == b.num_seqs && graphable;
  StepPadding pad;
  pad.seqs = plain_decode ? backend_->graph_batch(b.num_seqs) : 0;
  StepContext step;
  bool leading = true;  // still in the run of one-token sequences the step starts with
  for (int q = 0; q < b.num_seqs; ++q) {
    const int n = b.query_starts[q + 1] - b.query_starts[q];
    step.max_query_len = std::max(step.max_query_len, n);
    if (pad.seqs == 0) {  // a decode graph is captured without the lengths hint
      step.max_keys = std::max(step.max_keys, b.cached_lengths[q] + n);
      step.total_keys += b.cached_lengths[q] + n;
    }
    leading = leading && n == 1;
    if (leading) {
      step.leading_decodes = q + 1;
      step.leading_max_keys = std::max(step.leading_max_keys, b.cached_lengths[q] + 1);
      step.leading_total_keys += b.cached_lengths[q] + 1;
    }
  }
  if (b.decode()) step.leading_decodes = step.leading_max_keys = 0, step.leading_total_keys = 0;
  // A prompt step that samples (or samples nothing) is padded to the backend's token and row counts,
  // and replays that shape's graph where one was captured.
  Backend::PromptShape prompt;
  if (!b.decode() && graphable && (b.sampling || b.num_logit_rows == 0))
    prompt = backend_->prompt_shape(b.num_tokens, b.num_logit_rows, step.leading_decodes);
  pad.tokens = prompt.tokens, pad.rows = prompt.rows, pad.seq_room = prompt.seq_room;
  const int ticket = next_ticket_;
  const StepLayout layout = stage_step(b, cache_.layout(), pad, backend_->staging(ticket));
  step.arrays = backend_->upload(layout, ticket);
  step.num_tokens = std::max({b.num_tokens, pad.seqs, pad.tokens});
  step.num_seqs = std::max(b.num_seqs, pad.seqs);
  step.num_logit_rows = std::max({b.num_logit_rows, pad.seqs, pad.rows});
  step.caller_rows = b.num_logit_rows;
  step.sample = b.sampling != nullptr || pad.rows > 0;
  step.replay = pad.seqs > 0 || prompt.graph;
  step.logits_out = logits;
  step.hidden_out = hidden_states;
  backend_->run(step, [this](const StepContext& s) { run_decoder(*backend_, config_, views_, s); });
  const int rows = step.sample ? b.num_logit_rows : 0;
  backend_->finish(rows, ticket);
  in_flight_.push_back({ticket, rows});
  next_ticket_ = (next_ticket_ + 1) % Backend::kTickets;
  last_sampled_rows_ = rows;
}

int Runner::collect_locked(int32_t* tokens) {
  KVINFER_CHECK_ARG(!in_flight_.empty(), "collect(): no step is in flight");
  const InFlight f = in_flight_.front();
  in_flight_.pop_front();
  const int32_t* sampled = backend_->wait(f.ticket);
  if (tokens) std::memcpy(tokens, sampled, 4 * size_t(f.rows));
  return f.rows;
}

void Runner::launch(const StepBatch& batch) {
  std::lock_guard<std::mutex> lock(mutex_);
  launch_locked(batch, nullptr, nullptr);
}

int Runner::collect(int32_t* tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  return collect_locked(tokens);
}

int Runner::step(const StepBatch& batch, int32_t* tokens, float* logits, float* hidden_states) {
  std::lock_guard<std::mutex> lock(mutex_);
  KVINFER_CHECK_ARG(in_flight_.empty(), "step(): collect() the steps in flight first");
  launch_locked(batch, logits, hidden_states);
  return collect_locked(tokens);
}

void Runner::copy_blocks(const int32_t* src, const int32_t* dst, int count) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  const int pool = cache_.num_blocks();
  KVINFER_CHECK_ARG(count >= 0 && count <= pool, "copy_blocks: count=", count, " must be in [0, ", pool, "]");
  std::vector<int32_t> targets(dst, dst + count);
  for (int i = 0; i < count; ++i)
    KVINFER_CHECK_ARG(src[i] >= 0 && src[i] < pool && dst[i] >= 0 && dst[i] < pool, "copy_blocks: pair ", i,
                      " (", src[i], " -> ", dst[i], ") is out of range [0, num_blocks=", pool, ")");
  std::sort(targets.begin(), targets.end());
  KVINFER_CHECK_ARG(std::adjacent_find(targets.begin(), targets.end()) == targets.end(),
                    "copy_blocks: a destination block appears twice");
  for (int i = 0; i < count; ++i)
    KVINFER_CHECK_ARG(!std::binary_search(targets.begin(), targets.end(), src[i]), "copy_blocks: block ", src[i],
                      " is both a source and a destination");
  const KVLayout kv = cache_.layout();
  for (int layer = 0; layer < config_.num_layers; ++layer)
    for (half_t* base : {cache_.k_layer(layer), cache_.v_layer(layer)})
      for (int i = 0; i < count; ++i)
        backend_->copy_in_cache(base + dst[i] * kv.block_stride, base + src[i] * kv.block_stride, kv.block_stride);
}

int Runner::steps_in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(in_flight_.size());
}

void Runner::release() noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (backend_) backend_->drain();
  in_flight_.clear();
  backend_.reset();
  cache_.release();
  weights_.reset();
}

}  // namespace kvinfer
