// What the kernels' launch helpers need to know of the device (common.cuh).
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/cuda/common.cuh"

namespace kvinfer::cuda {

// KVINFER_PDL=0 in the environment turns dependent launches off (to measure what they give).
bool pdl_supported() {
  static const bool wanted = [] {
    const char* v = std::getenv("KVINFER_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  if (!wanted) return false;
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
