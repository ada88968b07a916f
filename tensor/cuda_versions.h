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

// The cuDNN and cuBLAS headers the CUDA backend was compiled against ("9.19.0", "13.1.0"); the libraries loaded
// at run time may be others. std::nullopt in a build without the CUDA backend.
struct CudaHeaderVersions {
  std::string cudnn, cublas;
};
std::optional<CudaHeaderVersions> built_cuda_versions();

// The CUDA runtime, cuDNN and cuBLAS loaded into this process, each with the file it was loaded from. Asking
// needs no device and no driver, so that a machine without a GPU shows which libraries a binary picks up (an
// unpacked release archive: its lib/). std::nullopt in a build without the CUDA backend.
struct CudaLibraries {
  std::string runtime, cudnn, cublas;
  std::string runtime_file, cudnn_file, cublas_file;
};
std::optional<CudaLibraries> loaded_cuda_libraries();

}  // namespace dsmil
