// The CUDA backend's process-wide state: the one library stream every op runs on, the cuDNN and cuBLASLt
// handles, scratch buffers from the stream-ordered pool, and a test hook that poisons memory.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tensor/cuda_versions.h"
#include "tensor/device.h"
#include "tensor/tensor.h"

namespace dsmil::cuda {

// Created on first use (the device must be available); every op and copy is ordered on it.
cudaStream_t stream();
cudnnHandle_t cudnn_handle();
// cuBLASLt's handle and the fixed workspace every matrix product gets.
struct CublasLt {
  cublasLtHandle_t handle;
  void* workspace;
  size_t workspace_bytes;
};
const CublasLt& cublaslt();
const cudaDeviceProp& device_properties();

// Scratch memory (workspaces, partial sums) from the pool, released in stream order at scope exit.
struct DeviceBuffer : device::DeviceMemory {
  explicit DeviceBuffer(size_t bytes) : DeviceMemory(bytes, device::MemorySource::pool) {}
};

// The device and the versions actually loaded (driver, CUDA runtime, cuDNN with its file, cuBLAS).
CudaVersions loaded_versions();
// The libraries alone, with their files; needs no device.
CudaLibraries loaded_libraries();
// The versions of the cuDNN and cuBLAS headers this backend was compiled with.
CudaHeaderVersions header_versions();
// The same with the device's architecture, SMs and memory in one line, for logs and benchmark tables.
std::string backend_versions();
// cudnnGetVersion() of the loaded library (9.19.0 -> 91900).
size_t cudnn_version();

// Test hook: while set, every new device allocation is filled with this byte before it is handed out,
// so that an op that leaves part of its output unwritten shows poison there (0xFF: NaN in f32 and bf16;
// 0x7F: a huge finite value). std::nullopt turns it off (the default).
void set_allocation_poison(std::optional<uint8_t> byte);

// Device memory the pool holds, in bytes: in use by live allocations, and reserved from the driver; with the memory
// of recorded CUDA graphs added (device::CudaGraph: a replayed step's tensors are the graph's, not the pool's). The
// peak is the pool's peak and the graphs' largest memory since the reset added, which bounds their joint peak.
struct PoolUsage {
  uint64_t used = 0, reserved = 0, peak_used = 0;
};
PoolUsage pool_usage();
// The cuDNN engine chosen for each convolution run so far, largest workspace first: the workspace is
// allocated for the call and returned to the pool after it. `problem`: the pass and shapes, the engine and
// its measured time; `traded`: a slower engine (by at most 3%) was kept for its smaller workspace, and
// `problem` names the fastest.
struct ConvAlgorithmChoice {
  size_t workspace_bytes;
  std::string problem;
  bool traded;
};
std::vector<ConvAlgorithmChoice> conv_algorithm_choices();

// One line per measured choice of a convolution's way (tensor/cuda/conv3d.cpp): on its input as it is or
// as its space-to-depth fold (MathMode::conv_space_to_depth), on cuDNN or the implicit GEMM
// (MathMode::conv16_forward); the pass and shapes, each way's device time and the way kept.
std::vector<std::string> conv_measured_choices();
// Convolutions run on the implicit GEMM so far (the GPU tests check that forcing it took it).
int64_t conv16_forward_launches();

// Starts peak_used afresh from the memory in use now (e.g. after a benchmark's warm-up, whose algorithm
// searches borrow large workspaces).
void reset_pool_peak();

}  // namespace dsmil::cuda
