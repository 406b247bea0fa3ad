// VramTracker: bytes held per purpose ("weights", "kv_cache", "activations", "workspace", ...),
// their peaks, live allocation counts and an optional budget. Thread-safe.
//
// DeviceMemory reserves with the tracker *before* allocating, so a budget is never overshot even
// for a moment, and releases on destruction. The tracker counts requested bytes, not the
// allocator's rounding, so its figures are the ones a memory plan can predict exactly.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/device.h"

namespace kvinfer {

struct PurposeStats {
  size_t bytes = 0;             // held now
  size_t peak_bytes = 0;        // most held at once
  size_t allocations = 0;       // live allocations
  size_t total_allocations = 0; // allocations ever made
};

class VramTracker {
 public:
  explicit VramTracker(std::optional<size_t> budget_bytes = std::nullopt) : budget_(budget_bytes) {}
  VramTracker(const VramTracker&) = delete;
  VramTracker& operator=(const VramTracker&) = delete;

  // The process-wide tracker used when none is given.
  static std::shared_ptr<VramTracker> default_tracker();

  // Counts `bytes` for `purpose`, or throws OutOfMemoryError (nothing counted) if the budget
  // would be exceeded. `device` is named in the message.
  void reserve(const std::string& purpose, size_t bytes, const Device& device);
  // Undoes a reserve. Never throws.
  void release(const std::string& purpose, size_t bytes) noexcept;

  size_t total_bytes() const;
  size_t peak_bytes() const;
  std::optional<size_t> budget_bytes() const;
  void set_budget(std::optional<size_t> budget_bytes);
  std::map<std::string, PurposeStats> report() const;
  // "weights 1,024 B, kv_cache 0 B (total 1,024 B)"
  std::string describe() const;

 private:
  std::string describe_locked() const;

  mutable std::mutex mutex_;
  std::optional<size_t> budget_;
  std::map<std::string, PurposeStats> purposes_;
  size_t total_ = 0;
  size_t peak_ = 0;
};

}  // namespace kvinfer
