// The compute devices as code outside tensor/ sees them.
#include "tensor/device.h"

#include <fmt/format.h>

#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/cuda/runtime.h"
#endif

namespace dsmil::device {

namespace {
MemoryUsage host_memory_usage() { return {host_bytes_in_use(), 0, host_bytes_peak()}; }
}  // namespace

#ifdef DSMIL_WITH_CUDA

namespace {

void check_range(const char* op, size_t offset, size_t bytes, size_t size) {
  if (offset > size || bytes > size - offset)
    throw ShapeError(fmt::format("DeviceMemory::{}: {} bytes at offset {} of {}", op, bytes, offset, size));
}

}  // namespace

DeviceMemory::DeviceMemory(size_t bytes, MemorySource source)
    : data_(source == MemorySource::pool ? cuda::device_alloc(bytes) : cuda::allocate_outside_pool(bytes)),
      bytes_(bytes),
      source_(source) {}

DeviceMemory::~DeviceMemory() {
  if (source_ == MemorySource::pool)
    cuda::device_free(data_);
  else
    cuda::free_outside_pool(data_);
}

void DeviceMemory::upload(size_t offset, const void* host, size_t bytes) {
  check_range("upload", offset, bytes, bytes_);
  cuda::copy_bytes(static_cast<uint8_t*>(data_) + offset, Device::CUDA, host, Device::CPU, bytes);
}

void DeviceMemory::download(size_t offset, void* host, size_t bytes) const {
  check_range("download", offset, bytes, bytes_);
  cuda::copy_bytes(host, Device::CPU, static_cast<const uint8_t*>(data_) + offset, Device::CUDA, bytes);
}

void select_cuda_device(int index) {
  const std::string context = fmt::format("select CUDA device {}", index);
  int devices = 0;
  DSMIL_CUDA_CHECK(cudaGetDeviceCount(&devices), context);
  if (devices < 1) throw DeviceError(context + ": no CUDA device is visible");
  DSMIL_CUDA_CHECK(cudaSetDevice(index % devices), context);
}

void* cuda_compute_stream() { return cuda::stream(); }

struct SideStream::State {
  cudaStream_t stream = nullptr;
  cudaEvent_t compute_done = nullptr, side_done = nullptr;
};

SideStream::SideStream() : state_(std::make_unique<State>()) {
  const char* context = "side stream start";
  DSMIL_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), context);
  DSMIL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->compute_done, cudaEventDisableTiming), context);
  DSMIL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->side_done, cudaEventDisableTiming), context);
}

SideStream::~SideStream() {
  cudaStreamSynchronize(state_->stream);
  cudaEventDestroy(state_->compute_done);
  cudaEventDestroy(state_->side_done);
  cudaStreamDestroy(state_->stream);
}

void SideStream::wait_for_compute() {
  const char* context = "side stream waits for the ops";
  DSMIL_CUDA_CHECK(cudaEventRecord(state_->compute_done, cuda::stream()), context);
  DSMIL_CUDA_CHECK(cudaStreamWaitEvent(state_->stream, state_->compute_done), context);
}

void SideStream::join_compute() {
  const char* context = "the ops wait for the side stream";
  DSMIL_CUDA_CHECK(cudaEventRecord(state_->side_done, state_->stream), context);
  DSMIL_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), state_->side_done), context);
}

void* SideStream::native() const { return state_->stream; }

bool cuda_available() { return cuda::device_available(); }

void synchronize(Device device) {
  if (device == Device::CUDA) cuda::synchronize();
}

MemoryUsage memory_usage(Device device) {
  if (device == Device::CPU) return host_memory_usage();
  const cuda::PoolUsage usage = cuda::pool_usage();
  return {usage.used, usage.reserved, usage.peak_used};
}

void reset_memory_peak(Device device) {
  if (device == Device::CPU) return reset_host_peak();
  cuda::reset_pool_peak();
}
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

namespace {

[[noreturn]] void no_cuda_device(const std::string& what) {
  throw DeviceError(what + ": this build has no CUDA backend");
}

}  // namespace

DeviceMemory::DeviceMemory(size_t bytes, MemorySource) {
  no_cuda_device(fmt::format("DeviceMemory of {} bytes", bytes));
}
// No DeviceMemory or SideStream exists without the backend (their constructors throw): the members are never called.
DeviceMemory::~DeviceMemory() = default;
void DeviceMemory::upload(size_t, const void*, size_t) {}
void DeviceMemory::download(size_t, void*, size_t) const {}
void select_cuda_device(int index) { no_cuda_device(fmt::format("select CUDA device {}", index)); }
void* cuda_compute_stream() { no_cuda_device("the CUDA compute stream"); }
struct SideStream::State {};
SideStream::SideStream() { no_cuda_device("SideStream"); }
SideStream::~SideStream() = default;
void SideStream::wait_for_compute() {}
void SideStream::join_compute() {}
void* SideStream::native() const { return nullptr; }

bool cuda_available() { return false; }
void synchronize(Device) {}
MemoryUsage memory_usage(Device device) {
  if (device == Device::CPU) return host_memory_usage();
  no_cuda_device("the CUDA pool's memory figures");
}
void reset_memory_peak(Device device) {
  if (device == Device::CPU) return reset_host_peak();
  no_cuda_device("the CUDA pool's memory peak");
}
void profiler_start() {}
void profiler_stop() {}
std::string backend_versions() { return "cpu"; }
std::vector<ConvolutionChoice> convolution_choices() { return {}; }
std::vector<std::string> convolution_measurements() { return {}; }

#endif

std::string choice_line(const ConvolutionChoice& choice) {
  return fmt::format("cuDNN workspace {:.1f} MiB{}: {}", choice.workspace_bytes / double(1 << 20),
                     choice.traded ? " (traded for time)" : "", choice.problem);
}

std::vector<std::string> convolution_report() {
  std::vector<std::string> lines;
  for (const ConvolutionChoice& choice : convolution_choices()) lines.push_back(choice_line(choice));
  for (std::string& line : convolution_measurements()) lines.push_back(std::move(line));
  return lines;
}

}  // namespace dsmil::device
