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

std::optional<CudaHeaderVersions> built_cuda_versions() {
#ifdef DSMIL_WITH_CUDA
  return cuda::header_versions();
#else
  return std::nullopt;
#endif
}

std::optional<CudaLibraries> loaded_cuda_libraries() {
#ifdef DSMIL_WITH_CUDA
  return cuda::loaded_libraries();
#else
  return std::nullopt;
#endif
}

}  // namespace dsmil
