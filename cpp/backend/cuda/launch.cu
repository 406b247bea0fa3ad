// What the kernels' launch helpers need to know of the device (common.cuh).
#include <mutex>

#include "backend/cuda/common.cuh"

namespace kvinfer::cuda {

bool pdl_supported() {
  constexpr int kMaxDevices = 64;
  static int major[kMaxDevices] = {};
  static std::once_flag once[kMaxDevices];
  int device = 0;
  KVINFER_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kMaxDevices) return false;
  std::call_once(once[device], [device] {
    if (cudaDeviceGetAttribute(&major[device], cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
      major[device] = 0;
  });
  return major[device] >= 9;
}

}  // namespace kvinfer::cuda
