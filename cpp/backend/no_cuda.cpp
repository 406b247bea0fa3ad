// The CUDA backend's entry point in a build without it.
#include "core/errors.h"
#include "runtime/backend.h"

namespace kvinfer {

std::unique_ptr<Backend> make_cuda_backend(const BackendInit&) {
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
}

}  // namespace kvinfer
