// The head shapes the decode attention kernel runs (attention_decode.cu instantiates these head
// dims), without CUDA headers: the engine asks before it builds a backend (runtime/backend.h).
#pragma once

namespace kvinfer::cuda {

// head_dim 32, 64, 80, 96 or 128; up to 16 query heads a KV head
constexpr bool decode_heads_supported(int head_dim, int num_heads, int num_kv_heads) {
  return (head_dim == 32 || head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128) &&
         num_kv_heads > 0 && num_heads % num_kv_heads == 0 && num_heads / num_kv_heads <= 16;
}

}  // namespace kvinfer::cuda
