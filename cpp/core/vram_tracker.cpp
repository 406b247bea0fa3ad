#include "core/vram_tracker.h"

#include <algorithm>

#include "core/errors.h"

namespace kvinfer {

std::shared_ptr<VramTracker> VramTracker::default_tracker() {
  static std::shared_ptr<VramTracker> tracker = std::make_shared<VramTracker>();
  return tracker;
}

void VramTracker::reserve(const std::string& purpose, size_t bytes, const Device& device) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (budget_ && (bytes > *budget_ || total_ > *budget_ - bytes)) {
    throw OutOfMemoryError(
        str("out of memory: ", format_bytes(bytes), " requested for '", purpose, "' on ",
            device.str(), " would exceed the budget of ", format_bytes(*budget_), "; in use: ",
            describe_locked()),
        bytes, purpose);
  }
  PurposeStats& s = purposes_[purpose];
  s.bytes += bytes;
  s.peak_bytes = std::max(s.peak_bytes, s.bytes);
  s.allocations += 1;
  s.total_allocations += 1;
  total_ += bytes;
  peak_ = std::max(peak_, total_);
}

void VramTracker::release(const std::string& purpose, size_t bytes) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = purposes_.find(purpose);
  if (it == purposes_.end()) return;
  PurposeStats& s = it->second;
  s.bytes -= std::min(s.bytes, bytes);
  s.allocations -= std::min<size_t>(s.allocations, 1);
  total_ -= std::min(total_, bytes);
}

size_t VramTracker::total_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return total_;
}

size_t VramTracker::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}

std::optional<size_t> VramTracker::budget_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return budget_;
}

void VramTracker::set_budget(std::optional<size_t> budget_bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  budget_ = budget_bytes;
}

std::map<std::string, PurposeStats> VramTracker::report() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return purposes_;
}

std::string VramTracker::describe() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return describe_locked();
}

std::string VramTracker::describe_locked() const {
  std::string out;
  for (const auto& [purpose, s] : purposes_) {
    if (!out.empty()) out += ", ";
    out += purpose + " " + format_bytes(s.bytes);
  }
  if (out.empty()) out = "nothing";
  return out + " (total " + format_bytes(total_) + ")";
}

}  // namespace kvinfer
