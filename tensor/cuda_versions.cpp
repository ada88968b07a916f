// The device-independent gate to the CUDA backend's version query (tensor/cuda/runtime.cpp).
#include "tensor/cuda_versions.h"

#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/context.h"
#include "tensor/cuda/runtime.h"
#endif

namespace dsmil {

std::optional<CudaVersions> loaded_cuda_versions() {
#ifdef DSMIL_WITH_CUDA
  if (cuda::device_available()) return cuda::loaded_versions();
#endif
  return std::nullopt;
}

}  // namespace dsmil
