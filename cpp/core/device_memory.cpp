#include "core/device_memory.h"

#include <sys/mman.h>

#include <cstring>
#include <utility>

#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer {

namespace {

void* allocate_host(size_t bytes) {
  // Anonymous pages arrive zeroed and are only touched on first use, so a 512 MiB zero-initialised
  // cache costs a system call, not a memset.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

[[noreturn]] void throw_oom(size_t bytes, const std::string& purpose, const Device& device,
                            const VramTracker& tracker, const std::string& cause) {
  throw OutOfMemoryError(str("out of memory: ", format_bytes(bytes), " requested for '", purpose,
                             "' on ", device.str(), " (", cause, "); in use: ", tracker.describe()),
                         bytes, purpose);
}

}  // namespace

DeviceMemory::DeviceMemory(size_t bytes, const Device& device, std::string purpose,
                           std::shared_ptr<VramTracker> tracker, bool zero)
    : bytes_(bytes), device_(device), purpose_(std::move(purpose)),
      tracker_(tracker ? std::move(tracker) : VramTracker::default_tracker()) {
  tracker_->reserve(purpose_, bytes_, device_);
  if (bytes_ == 0) return;
  if (!device_.is_cuda()) {
    data_ = allocate_host(bytes_);
    if (!data_) {
      tracker_->release(purpose_, bytes_);
      throw_oom(bytes_, purpose_, device_, *tracker_, "the host could not map the pages");
    }
    return;
  }
#if KVINFER_WITH_CUDA
  try {
    DeviceGuard guard(device_);
    cudaError_t err = cudaMalloc(&data_, bytes_);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: the next call must not report our failure
      data_ = nullptr;
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      throw_oom(bytes_, purpose_, device_, *tracker_,
                str("device has ", format_bytes(free_bytes), " free of ",
                    format_bytes(total_bytes)));
    }
    KVINFER_CUDA_CHECK(err);
    if (zero) {
      // Synchronous, so the memory is zero for every stream of any kind once this returns.
      KVINFER_CUDA_CHECK(cudaMemset(data_, 0, bytes_));
      KVINFER_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    }
  } catch (...) {
    if (data_) cudaFree(data_);
    data_ = nullptr;
    tracker_->release(purpose_, bytes_);
    throw;
  }
#else
  tracker_->release(purpose_, bytes_);
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
#endif
}

DeviceMemory::~DeviceMemory() { reset(); }

DeviceMemory::DeviceMemory(DeviceMemory&& other) noexcept { *this = std::move(other); }

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
    purpose_ = std::move(other.purpose_);
    tracker_ = std::move(other.tracker_);
  }
  return *this;
}

void DeviceMemory::reset() noexcept {
  if (data_) {
    if (device_.is_cuda()) {
#if KVINFER_WITH_CUDA
      int previous = -1;
      cudaGetDevice(&previous);
      cudaSetDevice(device_.index);
      cudaFree(data_);  // an error here (e.g. a dead context at exit) must not throw
      if (previous >= 0) cudaSetDevice(previous);
#endif
    } else {
      munmap(data_, bytes_);
    }
    data_ = nullptr;
  }
  if (tracker_) {
    tracker_->release(purpose_, bytes_);
    tracker_.reset();
  }
  bytes_ = 0;
}

void copy_bytes(void* dst, const Device& dst_device, const void* src, const Device& src_device,
                size_t bytes) {
  if (bytes == 0) return;
  if (!dst_device.is_cuda() && !src_device.is_cuda()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if KVINFER_WITH_CUDA
  KVINFER_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
#else
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
#endif
}

}  // namespace kvinfer
