// The CUDA device and libraries this process runs on, for the provenance of its results. Declared in every
// build: without the CUDA backend there are none.
#pragma once

#include <optional>
#include <string>

namespace dsmil {

// Versions as the loaded libraries report them ("13.0", "9.19.0"), not those of the headers built against.
struct CudaVersions {
  std::string gpu;  // the device's name
  std::string driver, runtime, cudnn, cublas;
  std::string cudnn_file;  // the libcudnn file loaded: several may be installed side by side
};

// std::nullopt in a build without the CUDA backend or on a machine without a usable CUDA device.
std::optional<CudaVersions> loaded_cuda_versions();

}  // namespace dsmil
