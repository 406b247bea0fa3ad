// DeviceMemory: owns one allocation on the CPU (page-aligned anonymous mapping) or on a CUDA
// device (cudaMalloc), registered with a VramTracker under a purpose label for its lifetime.
//
// Move-only. Alignment is at least kAlignment bytes on both devices so that views carved out of
// one allocation at kAlignment-multiples are aligned for any vector load.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/device.h"
#include "core/vram_tracker.h"

namespace kvinfer {

class DeviceMemory {
 public:
  static constexpr size_t kAlignment = 256;

  DeviceMemory() = default;
  // Reserves `bytes` under `purpose` with `tracker` (the default tracker when null), then
  // allocates. Throws OutOfMemoryError if the budget or the device cannot hold it; nothing stays
  // counted then. `zero` fills the memory with zero bytes (CPU memory is always zero: it comes
  // from fresh pages).
  DeviceMemory(size_t bytes, const Device& device, std::string purpose,
               std::shared_ptr<VramTracker> tracker = nullptr, bool zero = true);
  ~DeviceMemory();

  DeviceMemory(DeviceMemory&& other) noexcept;
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* data() const { return data_; }
  template <class T>
  T* as() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }
  const Device& device() const { return device_; }
  const std::string& purpose() const { return purpose_; }
  const std::shared_ptr<VramTracker>& tracker() const { return tracker_; }
  bool empty() const { return data_ == nullptr; }

  // Frees now (idempotent). Never throws.
  void reset() noexcept;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  std::string purpose_;
  std::shared_ptr<VramTracker> tracker_;
};

// Copies between any two of host / device memory (the runtime works out the direction).
void copy_bytes(void* dst, const Device& dst_device, const void* src, const Device& src_device,
                size_t bytes);

}  // namespace kvinfer
