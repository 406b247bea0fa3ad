// KVCache: the fp16 key/value cache of every layer as a pool of fixed-size blocks, in one
// zero-initialised DeviceMemory (purpose "kv_cache").
//
// Layout (layer-strided; element offsets, fp16 elements):
//   layer l:  K pool  half k[num_blocks][num_kv_heads][block_size][head_dim]
//             V pool  half v[num_blocks][num_kv_heads][block_size][head_dim]   (right after K)
//   layer l+1 follows V of layer l.
// A sequence's positions live in the blocks its block table lists (types/kv_layout.h). Inside a
// block a head's rows are contiguous, so decode attention streams a sequence's (kv_head) rows
// block_size at a time, and the query heads of a GQA group share those reads.
//
// Slots, for direct use of a cache (append / commit / read) and for steps without block tables:
// slot s owns blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq). The cache tracks each slot's
// committed length on the host. A step appends the new tokens of a slot to every layer at the
// slot's current length, then commit(slot, tokens) advances the length once. Only committed
// positions can be read; appending past max_context throws before anything is written. The step
// runtime (runtime/runner.h) does not use these lengths: its steps carry each sequence's cached
// length and blocks.
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
  int max_batch = 1;    // sequence slots
  int block_size = 16;  // tokens per block, a power of two
  int num_blocks = 0;   // blocks in the pool; 0: max_batch * blocks_per_seq() (a slot's own each)

  // Throws std::invalid_argument naming the first field out of range.
  void validate() const;
  int blocks_per_seq() const { return (max_context + block_size - 1) / block_size; }
  // num_blocks, or what 0 stands for (64-bit checked: std::invalid_argument when it overflows int).
  int pool_blocks() const;
  bool operator==(const KVCacheConfig& o) const {
    return num_layers == o.num_layers && max_context == o.max_context &&
           num_kv_heads == o.num_kv_heads && head_dim == o.head_dim && max_batch == o.max_batch &&
           block_size == o.block_size && pool_blocks() == o.pool_blocks();
  }
};

class KVCache {
 public:
  // 2 (K and V) * layers * blocks * block_size * kv_heads * head_dim * 2 bytes. The one formula
  // for the cache's size: the allocator and the memory planner both use it. Validates the config.
  static size_t size_bytes(const KVCacheConfig& config);
  static KVLayout layout(const KVCacheConfig& config);

  KVCache(const KVCacheConfig& config, const Device& device,
          std::shared_ptr<VramTracker> tracker = nullptr);

  const KVCacheConfig& config() const { return config_; }
  const Device& device() const { return memory_.device(); }
  size_t nbytes() const { return memory_.bytes(); }
  KVLayout layout() const { return layout(config_); }

  int num_blocks() const { return config_.pool_blocks(); }
  // Layer `layer`'s K / V pool: [block][kv_head][block_size][head_dim]. Bounds-checked.
  half_t* k_layer(int layer) const { return pool(layer, 0); }
  half_t* v_layer(int layer) const { return pool(layer, 1); }

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
  // The first `length` positions of the sequence whose blocks `table` lists (ceil(length /
  // block_size) entries, each checked), to host memory [length][num_kv_heads][head_dim].
  void read_blocks(int layer, const int32_t* table, int length, bool keys, half_t* out) const;

  void clear(int slot);  // length 0, pending appends dropped
  void reset();          // clear every slot
  void release() noexcept;  // free the memory now; the cache is unusable afterwards

 private:
  void check_layer(int layer) const;
  void check_slot(int slot) const;
  half_t* pool(int layer, int which) const;
  std::vector<int32_t> slot_table(int slot) const;  // the slot's own blocks
  // Rows [first, first + count) of the sequence of `table` between the pool `pool` and host rows
  // [count][num_kv_heads][head_dim]: out of the cache into `out`, or (out null) from `in` into it.
  void copy_rows(half_t* pool, const int32_t* table, int first, int count, const half_t* in, half_t* out) const;

  KVCacheConfig config_;
  KVLayout layout_;
  DeviceMemory memory_;          // half [num_layers][2][num_blocks][num_kv_heads][block_size][head_dim]
  std::vector<int32_t> lengths_;       // [max_batch] committed tokens per slot
  std::vector<int32_t> pending_;       // [max_batch] tokens appended this step (0: none)
  std::vector<uint8_t> appended_;      // [max_batch][num_layers] layer appended this step
};

}  // namespace kvinfer
