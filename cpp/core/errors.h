// Exception types of the native core and the checking macros that raise them.
//
// Python sees: std::invalid_argument -> ValueError, std::out_of_range -> IndexError,
// OutOfMemoryError -> kvinfer.OutOfMemoryError (a MemoryError), CudaError -> kvinfer.CudaError,
// ContextOverflowError -> kvinfer.ContextOverflowError (a ValueError). Nothing here exits or aborts.
#pragma once

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>

namespace kvinfer {

// A CUDA runtime / cuBLAS call failed. The message carries the statement, file:line and device.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An allocation failed or would exceed a budget. The message names the bytes requested, the
// purpose, what is in use per purpose and the budget or free device memory.
class OutOfMemoryError : public std::runtime_error {
 public:
  OutOfMemoryError(const std::string& message, size_t requested, std::string purpose)
      : std::runtime_error(message), requested_(requested), purpose_(std::move(purpose)) {}
  size_t requested() const { return requested_; }
  const std::string& purpose() const { return purpose_; }

 private:
  size_t requested_;
  std::string purpose_;
};

// Tokens do not fit in a sequence's context (KV cache capacity or model context).
class ContextOverflowError : public std::length_error {
 public:
  using std::length_error::length_error;
};

// "1,234,567"
std::string format_bytes(size_t bytes);

namespace detail {
// "/home/x/kvinfer/cuda/rmsnorm.cu" -> "cuda/rmsnorm.cu": messages name the source, not the build host.
std::string source_path(const std::string& file);

inline void append_all(std::ostringstream&) {}
template <class T, class... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}
}  // namespace detail

// Builds a message from pieces: str("q.shape[2]=", d, " != head_dim=", h).
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append_all(os, args...);
  return os.str();
}

}  // namespace kvinfer

// Argument check: throws std::invalid_argument with the message pieces.
#define KVINFER_CHECK_ARG(cond, ...)                                 \
  do {                                                               \
    if (!(cond)) throw std::invalid_argument(::kvinfer::str(__VA_ARGS__)); \
  } while (0)
