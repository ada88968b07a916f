// The compute devices as code outside tensor/ sees them.
#include "tensor/device.h"

#include <chrono>

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

struct DeviceClock::State {
  Device device;
  std::vector<bool> marked;
  std::vector<std::chrono::steady_clock::time_point> host_points;  // the CPU's points
#ifdef DSMIL_WITH_CUDA
  std::vector<cudaEvent_t> events;  // the CUDA device's points
#endif
};

DeviceClock::DeviceClock(Device device, size_t points) : state_(std::make_unique<State>()) {
  state_->device = device;
  state_->marked.assign(points, false);
  if (device == Device::CPU) {
    state_->host_points.resize(points);
    return;
  }
#ifdef DSMIL_WITH_CUDA
  state_->events.assign(points, nullptr);
  for (cudaEvent_t& event : state_->events)
    DSMIL_CUDA_CHECK(cudaEventCreate(&event), fmt::format("DeviceClock of {} points", points));
#else
  throw DeviceError("DeviceClock on the CUDA device: this build has no CUDA backend");
#endif
}

DeviceClock::~DeviceClock() {
#ifdef DSMIL_WITH_CUDA
  for (cudaEvent_t event : state_->events)
    if (event) cudaEventDestroy(event);
#endif
}

void DeviceClock::mark(size_t point) {
  if (point >= state_->marked.size())
    throw Error(fmt::format("DeviceClock::mark: point {} of a clock of {}", point, state_->marked.size()));
  state_->marked[point] = true;
  if (state_->device == Device::CPU) {
    state_->host_points[point] = std::chrono::steady_clock::now();
    return;
  }
#ifdef DSMIL_WITH_CUDA
  DSMIL_CUDA_CHECK(cudaEventRecord(state_->events[point], cuda::stream()), fmt::format("DeviceClock::mark({})", point));
#endif
}

double DeviceClock::seconds(size_t from, size_t to) const {
  for (size_t point : {from, to})
    if (point >= state_->marked.size() || !state_->marked[point])
      throw Error(fmt::format("DeviceClock::seconds({}, {}): point {} was never marked", from, to, point));
  if (state_->device == Device::CPU)
    return std::chrono::duration<double>(state_->host_points[to] - state_->host_points[from]).count();
#ifdef DSMIL_WITH_CUDA
  float ms = 0.0f;
  DSMIL_CUDA_CHECK(cudaEventElapsedTime(&ms, state_->events[from], state_->events[to]),
                   fmt::format("DeviceClock::seconds({}, {}) (has the host waited for both points?)", from, to));
  return ms / 1000.0;
#else
  return 0.0;
#endif
}

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

struct CudaGraph::State {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t runnable = nullptr;
  cuda::RecordingMemory* memory = nullptr;
};

CudaGraph::CudaGraph() : state_(std::make_unique<State>()) {}

CudaGraph::~CudaGraph() {
  if (state_->runnable) cudaGraphExecDestroy(state_->runnable);
  if (state_->graph) cudaGraphDestroy(state_->graph);
  if (state_->memory) cuda::release_recording_memory(state_->memory);
}

namespace {

// One recording of `work` into `memory`: the graph, or DeviceError (or what `work` threw) with the recording dropped.
cudaGraph_t capture(const std::function<void()>& work, cuda::RecordingMemory* memory) {
  DSMIL_CUDA_CHECK(cudaStreamBeginCapture(cuda::stream(), cudaStreamCaptureModeThreadLocal), "CudaGraph::record");
  cuda::start_recording_into(memory);
  try {
    work();
  } catch (...) {
    cuda::stop_recording_into(memory);
    cudaGraph_t dropped = nullptr;
    cudaStreamEndCapture(cuda::stream(), &dropped);
    if (dropped) cudaGraphDestroy(dropped);
    cudaGetLastError();  // the recording's error is not the next op's
    throw;
  }
  const std::optional<std::string> refused = cuda::stop_recording_into(memory);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(cuda::stream(), &graph);
  if (ended != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw DeviceError(
        fmt::format("CudaGraph::record: cudaStreamEndCapture failed: {} (an op of the recording "
                    "waited for the device or copied from the host)",
                    cudaGetErrorString(ended)));
  }
  if (refused) {
    cudaGraphDestroy(graph);
    throw DeviceError("CudaGraph::record: " + *refused);
  }
  return graph;
}

}  // namespace

void CudaGraph::record(const std::function<void()>& work) {
  if (state_->memory) throw Error("CudaGraph::record: this graph is recorded already");
  cuda::RecordingMemory* memory = cuda::new_recording_memory();
  cudaGraph_t traced = nullptr;
  try {
    traced = capture(work, memory);
    // Kept until the second pass is recorded: an allocation node's address is fixed for its graph's life, so the
    // planned range cannot take the address of a first-pass tensor kept past it (freed, and skipped, as the second
    // pass replaces it), which would count that free against the range.
    cuda::place_recording_memory(memory);
    state_->graph = capture(work, memory);
  } catch (...) {
    if (traced) cudaGraphDestroy(traced);
    cuda::release_recording_memory(memory);
    throw;
  }
  cudaGraphDestroy(traced);
  state_->memory = memory;
  if (const cudaError_t instantiated = cudaGraphInstantiate(&state_->runnable, state_->graph, 0);
      instantiated != cudaSuccess) {
    state_->runnable = nullptr;
    cudaGetLastError();
    throw DeviceError(
        fmt::format("CudaGraph::record: cudaGraphInstantiate failed: {}", cudaGetErrorString(instantiated)));
  }
}

CudaGraph::PlannedMemory CudaGraph::planned_memory() const {
  if (!state_->memory) throw Error("CudaGraph::planned_memory: nothing recorded (record)");
  const MemoryPlan& plan = cuda::recording_plan(state_->memory);
  return {plan.extent, plan.most_alive};
}

void CudaGraph::launch() {
  if (!state_->runnable) throw Error("CudaGraph::launch: nothing recorded (record)");
  DSMIL_CUDA_CHECK(cudaGraphLaunch(state_->runnable, cuda::stream()), "CudaGraph::launch");
}

bool CudaGraph::ready() const { return state_->runnable != nullptr; }

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
// No DeviceMemory, SideStream or CudaGraph exists without the backend (their constructors throw): the members are never
// called.
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
struct CudaGraph::State {};
CudaGraph::CudaGraph() { no_cuda_device("CudaGraph"); }
CudaGraph::~CudaGraph() = default;
void CudaGraph::record(const std::function<void()>&) {}
void CudaGraph::launch() {}
bool CudaGraph::ready() const { return false; }
CudaGraph::PlannedMemory CudaGraph::planned_memory() const { return {}; }

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
