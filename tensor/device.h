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
