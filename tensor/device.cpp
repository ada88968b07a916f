// The compute devices as code outside tensor/ sees them.
#include "tensor/device.h"

#include <fmt/format.h>

#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/context.h"
#include "tensor/cuda/runtime.h"
#endif

namespace dsmil::device {

void DeviceMemory::upload(size_t offset, const void* host, size_t bytes) {
  if (offset > bytes_ || bytes > bytes_ - offset)
    throw ShapeError(fmt::format("DeviceMemory::upload: {} bytes at offset {} of {}", bytes, offset, bytes_));
#ifdef DSMIL_WITH_CUDA
  cuda::copy_bytes(static_cast<uint8_t*>(data_) + offset, Device::CUDA, host, Device::CPU, bytes);
#endif
}

#ifdef DSMIL_WITH_CUDA

DeviceMemory::DeviceMemory(size_t bytes) : data_(cuda::allocate_outside_pool(bytes)), bytes_(bytes) {}
DeviceMemory::~DeviceMemory() { cuda::free_outside_pool(data_); }

bool cuda_available() { return cuda::device_available(); }

void synchronize(Device device) {
  if (device == Device::CUDA) cuda::synchronize();
}

MemoryUsage memory_usage() {
  const cuda::PoolUsage usage = cuda::pool_usage();
  return {usage.used, usage.reserved, usage.peak_used};
}

void reset_memory_peak() { cuda::reset_pool_peak(); }
void profiler_start() { cuda::profiler_start(); }
void profiler_stop() { cuda::profiler_stop(); }

std::string backend_versions() { return cuda::backend_versions(); }

std::vector<ConvolutionChoice> convolution_choices() {
  std::vector<ConvolutionChoice> choices;
  for (const cuda::ConvAlgorithmChoice& c : cuda::conv_algorithm_choices())
    choices.push_back({c.workspace_bytes, c.problem, c.traded});
  return choices;
}

std::vector<std::string> convolution_measurements() { return cuda::conv_measured_choices(); }

#else

DeviceMemory::DeviceMemory(size_t bytes) {
  throw DeviceError(
      fmt::format("DeviceMemory: {} bytes of CUDA memory asked of a build without the CUDA backend", bytes));
}
DeviceMemory::~DeviceMemory() = default;

bool cuda_available() { return false; }
void synchronize(Device) {}
MemoryUsage memory_usage() { return {}; }
void reset_memory_peak() {}
void profiler_start() {}
void profiler_stop() {}
std::string backend_versions() { return "cpu"; }
std::vector<ConvolutionChoice> convolution_choices() { return {}; }
std::vector<std::string> convolution_measurements() { return {}; }

#endif

}  // namespace dsmil::device
