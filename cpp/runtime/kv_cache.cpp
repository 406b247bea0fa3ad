#include "runtime/kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer {

void KVCacheConfig::validate() const {
  auto positive = [](const char* name, int value) {
    KVINFER_CHECK_ARG(value > 0, "KVCacheConfig.", name, "=", value, " must be > 0");
  };
  positive("num_layers", num_layers);
  positive("max_context", max_context);
  positive("num_kv_heads", num_kv_heads);
  positive("head_dim", head_dim);
  positive("max_batch", max_batch);
  KVINFER_CHECK_ARG(block_size > 0 && block_size <= (1 << 16) && (block_size & (block_size - 1)) == 0,
                    "KVCacheConfig.block_size=", block_size, " must be a power of two in [1, 65536]");
  KVINFER_CHECK_ARG(num_blocks >= 0, "KVCacheConfig.num_blocks=", num_blocks, " must be >= 0 (0: ",
                    "max_batch x blocks per sequence)");
  pool_blocks();
}

int KVCacheConfig::pool_blocks() const {
  if (num_blocks > 0) return num_blocks;
  const int64_t blocks = static_cast<int64_t>(max_batch) * blocks_per_seq();
  KVINFER_CHECK_ARG(blocks <= std::numeric_limits<int32_t>::max(), "KV cache of ", max_batch, " slots x ",
                    blocks_per_seq(), " blocks needs more than 2^31 - 1 blocks");
  return static_cast<int>(blocks);
}

size_t KVCache::size_bytes(const KVCacheConfig& c) {
  c.validate();
  size_t bytes = 2 * sizeof(half_t);
  for (int factor : {c.num_layers, c.pool_blocks(), c.block_size, c.num_kv_heads, c.head_dim}) {
    KVINFER_CHECK_ARG(bytes <= SIZE_MAX / static_cast<size_t>(factor), "KV cache of ", c.num_layers,
                      " layers x ", c.pool_blocks(), " blocks x ", c.block_size, " tokens x ",
                      c.num_kv_heads, " kv_heads x ", c.head_dim, " head_dim overflows 64-bit sizes");
    bytes *= static_cast<size_t>(factor);
  }
  return bytes;
}

KVLayout KVCache::layout(const KVCacheConfig& c) {
  c.validate();
  const int64_t head = static_cast<int64_t>(c.block_size) * c.head_dim;
  int shift = 0;
  while ((1 << shift) < c.block_size) ++shift;
  return {head * c.num_kv_heads, head, c.head_dim, shift, c.blocks_per_seq(), c.pool_blocks()};
}

KVCache::KVCache(const KVCacheConfig& config, const Device& device,
                 std::shared_ptr<VramTracker> tracker)
    : config_(config),
      layout_(layout(config)),
      memory_(size_bytes(config), device, "kv_cache", tracker, /*zero=*/true),
      lengths_(config.max_batch, 0),
      pending_(config.max_batch, 0),
      appended_(static_cast<size_t>(config.max_batch) * config.num_layers, 0) {}

void KVCache::check_layer(int layer) const {
  if (layer < 0 || layer >= config_.num_layers)
    throw std::out_of_range(str("layer=", layer, " is out of range [0, ", config_.num_layers, ")"));
}

void KVCache::check_slot(int slot) const {
  if (slot < 0 || slot >= config_.max_batch)
    throw std::out_of_range(str("slot=", slot, " is out of range [0, ", config_.max_batch, ")"));
  if (static_cast<int64_t>(slot + 1) * config_.blocks_per_seq() > num_blocks())
    throw std::out_of_range(str("slot=", slot, " has no blocks of its own: ", num_blocks(), " blocks hold ",
                                num_blocks() / config_.blocks_per_seq(), " slots of ", config_.blocks_per_seq()));
}

half_t* KVCache::pool(int layer, int which) const {
  check_layer(layer);
  const int64_t pool_elems = layout_.block_stride * num_blocks();
  return memory_.as<half_t>() + (2 * static_cast<int64_t>(layer) + which) * pool_elems;
}

std::vector<int32_t> KVCache::slot_table(int slot) const {
  check_slot(slot);
  std::vector<int32_t> table(config_.blocks_per_seq());
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(slot * table.size() + i);
  return table;
}

void KVCache::copy_rows(half_t* pool, const int32_t* table, int first, int count, const half_t* in,
                        half_t* out) const {
  const int heads = config_.num_kv_heads, dim = config_.head_dim, bs = config_.block_size;
  const size_t row = sizeof(half_t) * dim;
  // runs of positions inside one block: [p, p + n) with n <= block_size
  for (int p = first; p < first + count;) {
    const int n = std::min(first + count - p, bs - (p & (bs - 1)));
    for (int h = 0; h < heads; ++h) {
      half_t* cache = pool + layout_.at(table, h, p);
      const int64_t at = (static_cast<int64_t>(p - first) * heads + h) * dim;  // in the host rows
      if (!device().is_cuda()) {
        for (int t = 0; t < n; ++t)
          out ? std::memcpy(out + at + int64_t(t) * heads * dim, cache + int64_t(t) * dim, row)
              : std::memcpy(cache + int64_t(t) * dim, in + at + int64_t(t) * heads * dim, row);
        continue;
      }
#if KVINFER_WITH_CUDA
      DeviceGuard guard(device());
      if (out)
        KVINFER_CUDA_CHECK(cudaMemcpy2D(out + at, row * heads, cache, row, row, n, cudaMemcpyDeviceToHost));
      else
        KVINFER_CUDA_CHECK(cudaMemcpy2D(cache, row, in + at, row * heads, row, n, cudaMemcpyHostToDevice));
#endif
    }
    p += n;
  }
}

int KVCache::length(int slot) const {
  check_slot(slot);
  return lengths_[slot];
}

int KVCache::pending(int slot) const {
  check_slot(slot);
  return pending_[slot];
}

void KVCache::begin_append(int layer, int slot, int tokens) {
  check_layer(layer);
  check_slot(slot);
  KVINFER_CHECK_ARG(tokens > 0, "tokens=", tokens, " must be > 0");
  if (static_cast<int64_t>(lengths_[slot]) + tokens > config_.max_context)
    throw ContextOverflowError(str("KV cache slot ", slot, " holds ", lengths_[slot],
                                   " tokens; appending ", tokens, " would exceed its capacity of ",
                                   config_.max_context, " (max_context)"));
  uint8_t& done = appended_[static_cast<size_t>(slot) * config_.num_layers + layer];
  KVINFER_CHECK_ARG(!done, "layer ", layer, " of slot ", slot,
                    " was already appended this step; commit(slot, tokens) first");
  KVINFER_CHECK_ARG(pending_[slot] == 0 || pending_[slot] == tokens, "slot ", slot, ": appending ",
                    tokens, " tokens to layer ", layer, " but other layers got ", pending_[slot],
                    " this step");
  done = 1;
  pending_[slot] = tokens;
}

void KVCache::append(int layer, int slot, const half_t* k_src, const half_t* v_src, int tokens) {
  begin_append(layer, slot, tokens);
  try {
    const std::vector<int32_t> table = slot_table(slot);
    copy_rows(pool(layer, 0), table.data(), lengths_[slot], tokens, k_src, nullptr);
    copy_rows(pool(layer, 1), table.data(), lengths_[slot], tokens, v_src, nullptr);
  } catch (...) {
    // The step is not consistent any more; the caller may retry this layer.
    appended_[static_cast<size_t>(slot) * config_.num_layers + layer] = 0;
    throw;
  }
}

void KVCache::commit(int slot, int tokens) {
  const int32_t starts[2] = {0, tokens};
  commit(&slot, starts, 1);
}

void KVCache::commit(const int32_t* seq_slots, const int32_t* seq_starts, int batch) {
  for (int b = 0; b < batch; ++b) {  // check everything first: a failed commit changes nothing
    const int slot = seq_slots[b], tokens = seq_starts[b + 1] - seq_starts[b];
    check_slot(slot);
    KVINFER_CHECK_ARG(tokens > 0, "tokens=", tokens, " must be > 0");
    KVINFER_CHECK_ARG(pending_[slot] == tokens, "commit(slot=", slot, ", tokens=", tokens,
                      "): this step appended ", pending_[slot], " tokens");
    auto first = appended_.begin() + static_cast<size_t>(slot) * config_.num_layers;
    auto missing = std::find(first, first + config_.num_layers, 0);
    KVINFER_CHECK_ARG(missing == first + config_.num_layers, "commit(slot=", slot, "): layer ",
                      missing - first, " was not appended this step");
  }
  for (int b = 0; b < batch; ++b) {
    const int slot = seq_slots[b];
    lengths_[slot] += seq_starts[b + 1] - seq_starts[b];
    pending_[slot] = 0;
    auto first = appended_.begin() + static_cast<size_t>(slot) * config_.num_layers;
    std::fill(first, first + config_.num_layers, 0);
  }
}

void KVCache::read_keys(int layer, int slot, half_t* out) const {
  read(layer, slot, length(slot), true, out);
}

void KVCache::read_values(int layer, int slot, half_t* out) const {
  read(layer, slot, length(slot), false, out);
}

void KVCache::read(int layer, int slot, int length, bool keys, half_t* out) const {
  KVINFER_CHECK_ARG(length >= 0 && length <= config_.max_context, "length=", length,
                    " is out of range [0, max_context=", config_.max_context, "]");
  const std::vector<int32_t> table = slot_table(slot);
  copy_rows(pool(layer, keys ? 0 : 1), table.data(), 0, length, nullptr, out);
}

void KVCache::read_blocks(int layer, const int32_t* table, int length, bool keys, half_t* out) const {
  KVINFER_CHECK_ARG(length >= 0 && length <= config_.max_context, "length=", length,
                    " is out of range [0, max_context=", config_.max_context, "]");
  for (int i = 0; i < (length + config_.block_size - 1) / config_.block_size; ++i)
    KVINFER_CHECK_ARG(table[i] >= 0 && table[i] < num_blocks(), "block table entry ", i, "=", table[i],
                      " is out of range [0, num_blocks=", num_blocks(), ")");
  copy_rows(pool(layer, keys ? 0 : 1), table, 0, length, nullptr, out);
}

void KVCache::clear(int slot) {
  check_slot(slot);
  lengths_[slot] = 0;
  pending_[slot] = 0;
  auto first = appended_.begin() + static_cast<size_t>(slot) * config_.num_layers;
  std::fill(first, first + config_.num_layers, 0);
}

void KVCache::reset() {
  std::fill(lengths_.begin(), lengths_.end(), 0);
  std::fill(pending_.begin(), pending_.end(), 0);
  std::fill(appended_.begin(), appended_.end(), 0);
}

void KVCache::release() noexcept {
  memory_.reset();
  config_.max_batch = 0;  // every slot index is out of range from now on
  lengths_.clear();
  pending_.clear();
  appended_.clear();
}


}  // namespace kvinfer
