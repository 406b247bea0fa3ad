// Where memory lives and kernels run: the host CPU or one CUDA device.
#pragma once

#include <string>

namespace kvinfer {

enum class DeviceKind { CPU, CUDA };

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  static Device cpu() { return {DeviceKind::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::CUDA, index}; }
  // "cpu", "cuda", "cuda:N". Throws std::invalid_argument for anything else, for CUDA when the
  // build has no CUDA backend, and for an ordinal that no visible device has.
  static Device parse(const std::string& text);

  bool is_cuda() const { return kind == DeviceKind::CUDA; }
  std::string str() const;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

// Whether this build has the CUDA backend compiled in.
bool cuda_compiled();
// Number of CUDA devices usable right now (0 without the backend, a driver or a GPU).
int cuda_device_count();

// Makes `device` current for the scope when it is a CUDA device; restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(const Device& device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace kvinfer
