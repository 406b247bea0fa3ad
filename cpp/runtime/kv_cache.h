// KVCache: the fp16 key/value cache of every layer for max_batch sequence slots, in one
// zero-initialised DeviceMemory (purpose "kv_cache"), with each slot's length tracked here.
//
// Layout (layer-strided; element offsets, fp16 elements):
//   layer l:  K block  half k[max_batch][num_kv_heads][max_context][head_dim]
//             V block  half v[max_batch][num_kv_heads][max_context][head_dim]   (right after K)
//   layer l+1 follows V of layer l.
// A head's positions are contiguous, so decode attention streams one (slot, kv_head) as a single
// [length][head_dim] matrix, and the query heads of a GQA group share those reads.
//
// Lengths, for direct use of a cache (append / commit / keys): the cache tracks each slot's committed
// length on the host. A step appends the new tokens of a slot to every layer at the slot's current
// length, then commit(slot, tokens) advances the length once. Only committed positions can be
// read; appending past max_context throws before anything is written. The step runtime
// (runtime/runner.h) does not use these lengths: its steps carry each sequence's cached length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/device_memory.h"
#include "core/half.h"
#include "types/kv_layout.h"

namespace kvinfer {

struct KVCacheConfig {
  int num_layers = 0;
  int max_context = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_batch = 1;  // sequence slots

  // Throws std::invalid_argument naming the first field that is not > 0.
  void validate() const;
  bool operator==(const KVCacheConfig& o) const {
    return num_layers == o.num_layers && max_context == o.max_context &&
           num_kv_heads == o.num_kv_heads && head_dim == o.head_dim && max_batch == o.max_batch;
  }
};

class KVCache {
 public:
  // 2 (K and V) * layers * slots * context * kv_heads * head_dim * 2 bytes. The one formula for
  // the cache's size: the allocator and the memory planner both use it. Validates the config.
  static size_t size_bytes(const KVCacheConfig& config);
  static KVLayout layout(const KVCacheConfig& config);

  KVCache(const KVCacheConfig& config, const Device& device,
          std::shared_ptr<VramTracker> tracker = nullptr);

  const KVCacheConfig& config() const { return config_; }
  const Device& device() const { return memory_.device(); }
  size_t nbytes() const { return memory_.bytes(); }
  KVLayout layout() const { return layout(config_); }

  // Start of slot `slot` in layer `layer`'s K / V block: [kv_head][pos][head_dim]. Bounds-checked.
  half_t* k(int layer, int slot) const;
  half_t* v(int layer, int slot) const;
  // Whole K / V block of a layer: [slot][kv_head][pos][head_dim]. Bounds-checked.
  half_t* k_layer(int layer) const { return k(layer, 0); }
  half_t* v_layer(int layer) const { return v(layer, 0); }

  int length(int slot) const;
  const std::vector<int32_t>& lengths() const { return lengths_; }

  // Checks that `tokens` more fit in `slot` (ContextOverflowError naming the slot, its length, the
  // tokens and the capacity) and that `layer` has not been appended this step; then records it.
  void begin_append(int layer, int slot, int tokens);
  // Writes K/V of `tokens` tokens, host arrays [tokens][num_kv_heads][head_dim] contiguous, at the
  // slot's current length. Nothing is written when it throws.
  void append(int layer, int slot, const half_t* k, const half_t* v, int tokens);
  // Advances the slot's length by `tokens`, which must equal what every layer appended this step.
  void commit(int slot, int tokens);
  // commit() for several slots at once (seq_starts[b+1] - seq_starts[b] tokens for seq_slots[b]),
  // all checked before any length changes.
  void commit(const int32_t* seq_slots, const int32_t* seq_starts, int batch);
  // Tokens appended to the slot since the last commit (0: none pending).
  int pending(int slot) const;

  // Copies the committed K / V of a slot to host memory [length][num_kv_heads][head_dim].
  void read_keys(int layer, int slot, half_t* out) const;
  void read_values(int layer, int slot, half_t* out) const;
  // The first `length` positions of a slot, whatever its committed length.
  void read(int layer, int slot, int length, bool keys, half_t* out) const;

  void clear(int slot);  // length 0, pending appends dropped
  void reset();          // clear every slot
  void release() noexcept;  // free the memory now; the cache is unusable afterwards

 private:
  void check_layer(int layer) const;
  void check_slot(int slot) const;
  half_t* block(int layer, int slot, int which) const;
  void copy_rows(const half_t* src, int length, half_t* out) const;

  KVCacheConfig config_;
  KVLayout layout_;
  DeviceMemory memory_;          // half [num_layers][2][max_batch][num_kv_heads][max_context][head_dim]
  std::vector<int32_t> lengths_;       // [max_batch] committed tokens per slot
  std::vector<int32_t> pending_;       // [max_batch] tokens appended this step (0: none)
  std::vector<uint8_t> appended_;      // [max_batch][num_layers] layer appended this step
};

}  // namespace kvinfer
