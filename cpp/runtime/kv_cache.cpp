#include "runtime/kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
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
}

size_t KVCache::size_bytes(const KVCacheConfig& c) {
  c.validate();
  size_t bytes = 2 * sizeof(half_t);
  for (int factor : {c.num_layers, c.max_batch, c.max_context, c.num_kv_heads, c.head_dim}) {
    KVINFER_CHECK_ARG(bytes <= SIZE_MAX / static_cast<size_t>(factor), "KV cache of ", c.num_layers,
                      " layers x ", c.max_batch, " slots x ", c.max_context, " tokens x ",
                      c.num_kv_heads, " kv_heads x ", c.head_dim, " head_dim overflows 64-bit sizes");
    bytes *= static_cast<size_t>(factor);
  }
  return bytes;
}

KVLayout KVCache::layout(const KVCacheConfig& c) {
  const int64_t head = static_cast<int64_t>(c.max_context) * c.head_dim;
  return {head * c.num_kv_heads, head, c.head_dim};
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
}

half_t* KVCache::block(int layer, int slot, int which) const {
  check_layer(layer);
  check_slot(slot);
  const int64_t layer_stride = 2 * layout_.slot_stride * config_.max_batch;
  return memory_.as<half_t>() + layer * layer_stride + which * layout_.slot_stride * config_.max_batch +
         slot * layout_.slot_stride;
}

half_t* KVCache::k(int layer, int slot) const { return block(layer, slot, 0); }
half_t* KVCache::v(int layer, int slot) const { return block(layer, slot, 1); }

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
  const int heads = config_.num_kv_heads, dim = config_.head_dim;
  if (!device().is_cuda()) {  // host rows [token][head][dim] -> [head][pos][dim]
    for (int t = 0; t < tokens; ++t)
      for (int h = 0; h < heads; ++h) {
        const int64_t at = h * layout_.head_stride + (lengths_[slot] + t) * layout_.pos_stride;
        const int64_t from = (static_cast<int64_t>(t) * heads + h) * dim;
        std::memcpy(k(layer, slot) + at, k_src + from, sizeof(half_t) * dim);
        std::memcpy(v(layer, slot) + at, v_src + from, sizeof(half_t) * dim);
      }
    return;
  }
#if KVINFER_WITH_CUDA
  // Host rows [token][head][dim] -> device [head][pos][dim]: one strided copy per head.
  try {
    DeviceGuard guard(device());
    const int64_t at = static_cast<int64_t>(lengths_[slot]) * layout_.pos_stride;
    for (int h = 0; h < heads; ++h) {
      for (auto [dst, src] : {std::pair{k(layer, slot), k_src}, std::pair{v(layer, slot), v_src}})
        KVINFER_CUDA_CHECK(cudaMemcpy2D(dst + h * layout_.head_stride + at, sizeof(half_t) * dim,
                                        src + h * dim, sizeof(half_t) * heads * dim,
                                        sizeof(half_t) * dim, tokens, cudaMemcpyHostToDevice));
    }
  } catch (...) {
    // The step is not consistent any more; the caller may retry this layer.
    appended_[static_cast<size_t>(slot) * config_.num_layers + layer] = 0;
    throw;
  }
#endif
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

void KVCache::copy_rows(const half_t* src, int length, half_t* out) const {
  const int heads = config_.num_kv_heads, dim = config_.head_dim;
  if (!device().is_cuda()) {
    for (int h = 0; h < heads; ++h)
      for (int p = 0; p < length; ++p)
        std::memcpy(out + (static_cast<int64_t>(p) * heads + h) * dim,
                    src + h * layout_.head_stride + p * layout_.pos_stride, sizeof(half_t) * dim);
    return;
  }
#if KVINFER_WITH_CUDA
  if (length == 0) return;
  DeviceGuard guard(device());
  for (int h = 0; h < heads; ++h)
    KVINFER_CUDA_CHECK(cudaMemcpy2D(out + h * dim, sizeof(half_t) * heads * dim,
                                    src + h * layout_.head_stride, sizeof(half_t) * dim,
                                    sizeof(half_t) * dim, length, cudaMemcpyDeviceToHost));
#endif
}

void KVCache::read_keys(int layer, int slot, half_t* out) const {
  copy_rows(k(layer, slot), lengths_[slot], out);
}

void KVCache::read_values(int layer, int slot, half_t* out) const {
  copy_rows(v(layer, slot), lengths_[slot], out);
}

void KVCache::read(int layer, int slot, int length, bool keys, half_t* out) const {
  KVINFER_CHECK_ARG(length >= 0 && length <= config_.max_context, "length=", length,
                    " is out of range [0, max_context=", config_.max_context, "]");
  copy_rows(keys ? k(layer, slot) : v(layer, slot), length, out);
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
