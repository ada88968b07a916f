// The compute devices as code outside tensor/ sees them, in every build: availability, synchronisation, the
// device memory pool's figures, profiler ranges, the backend's versions and its convolution choices. Without the
// CUDA backend there is no CUDA device: the queries answer "none" (false, zeros, empty) and the rest does nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace dsmil::device {

// A usable CUDA device is present (and the build has the CUDA backend).
bool cuda_available();
// Waits for the work queued on `device` (the CPU's is done when queued).
void synchronize(Device device);

// Device memory the pool holds, in bytes: in use by live allocations, reserved from the driver, and the most in
// use since the peak was last reset.
struct MemoryUsage {
  uint64_t used = 0, reserved = 0, peak_used = 0;
};
MemoryUsage memory_usage();
// Starts peak_used afresh from the memory in use now.
void reset_memory_peak();

// CUDA device memory outside the tensor pool, for data that lives as long as a run (the training set resident on
// the GPU): taken at once, given back by the destructor. DeviceError when the device has too little (naming the
// bytes wanted and free; memory the pool keeps for reuse does not count as free) or there is no CUDA device.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  // Copies `bytes` bytes from host memory to data() + offset; synchronous.
  void upload(size_t offset, const void* host, size_t bytes);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Brackets the work a profiler started with `--profile-from-start off` records (ncu, nsys).
void profiler_start();
void profiler_stop();

// The CUDA device, its architecture and memory and the loaded libraries' versions in one line ("cpu" in a build
// without the CUDA backend).
std::string backend_versions();

// The cuDNN algorithm chosen for each convolution run so far, largest workspace first; `traded`: a slower
// algorithm (by at most 3%) was kept for its smaller workspace.
struct ConvolutionChoice {
  size_t workspace_bytes = 0;
  std::string problem;
  bool traded = false;
};
std::vector<ConvolutionChoice> convolution_choices();
// One line per measured choice of a convolution's way (as it is or space-to-depth folded, cuDNN or the implicit
// GEMM): the pass and shapes, each way's device time and the way kept.
std::vector<std::string> convolution_measurements();

}  // namespace dsmil::device
