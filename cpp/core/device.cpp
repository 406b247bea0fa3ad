#include "core/device.h"

#include <cstdlib>

#include "core/cuda_check.h"
#include "core/errors.h"

namespace kvinfer {

std::string Device::str() const {
  return kind == DeviceKind::CPU ? std::string("cpu") : "cuda:" + std::to_string(index);
}

bool cuda_compiled() {
#if KVINFER_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#if KVINFER_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not sticky, but leave no error behind
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  int index = 0;
  if (text == "cuda") {
    index = 0;
  } else if (text.rfind("cuda:", 0) == 0 && text.size() > 5 &&
             text.find_first_not_of("0123456789", 5) == std::string::npos && text.size() < 12) {
    index = std::atoi(text.c_str() + 5);
  } else {
    throw std::invalid_argument(kvinfer::str("device='", text, "' is not one of 'cpu', 'cuda', 'cuda:N'"));
  }
  if (!cuda_compiled())
    throw std::invalid_argument(
        kvinfer::str("device='", text, "': this kvinfer was built without the CUDA backend"));
  int count = cuda_device_count();
  if (index >= count)
    throw std::invalid_argument(
        kvinfer::str("device='", text, "': ", count, " CUDA device(s) are visible"));
  return cuda(index);
}

DeviceGuard::DeviceGuard(const Device& device) {
#if KVINFER_WITH_CUDA
  if (!device.is_cuda()) return;
  KVINFER_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device.index) KVINFER_CUDA_CHECK(cudaSetDevice(device.index));
  else previous_ = -1;
#endif
}

DeviceGuard::~DeviceGuard() {
#if KVINFER_WITH_CUDA
  if (previous_ >= 0) cudaSetDevice(previous_);  // destructors never throw
#endif
}

}  // namespace kvinfer
