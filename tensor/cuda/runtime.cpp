// The CUDA runtime services: one non-blocking library stream, memory from the device's stream-ordered
// pool (retained: its release threshold is the maximum, so freed memory is reused, never given back),
// copies, fills and dtype conversion, and the lazily created cuDNN and cuBLAS handles bound to the stream.
#include "tensor/cuda/runtime.h"

#include <cuda_bf16.h>
#include <cuda_profiler_api.h>
#include <fmt/format.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <limits>
#include <unordered_set>
#include <memory>

#include "kernels/convert_fill.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"

namespace dsmil::cuda {

namespace {

// cuBLASLt gets a fixed workspace so that its algorithm choice, and its results, never depend on what
// the pool happens to hold (NVIDIA recommends 32 MiB on Hopper).
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

std::atomic<int> g_allocation_poison{-1};

// While the stream is recorded into a CUDA graph: what the recorded work takes from the pool (graph memory), and
// whether it gave back memory it did not take there (a free the graph would repeat on every launch).
struct CaptureTracking {
  bool active = false;
  std::unordered_set<void*> taken;
  bool frees_other_memory = false;
};

struct Runtime {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaMemPool_t pool = nullptr;
  cudaDeviceProp properties{};
  CaptureTracking capture;
  // Memory a dropped recording took and never freed: it was never allocated, so its tensors' frees are skipped.
  std::unordered_set<void*> never_allocated;
};

Runtime* create_runtime() {
  if (!device_available()) throw DeviceError("CUDA backend: no usable CUDA device (cudaGetDeviceCount found none)");
  auto rt = std::make_unique<Runtime>();
  const std::string context = "CUDA runtime start";
  DSMIL_CUDA_CHECK(cudaGetDevice(&rt->device), context);
  DSMIL_CUDA_CHECK(cudaGetDeviceProperties(&rt->properties, rt->device), context);
  DSMIL_CUDA_CHECK(cudaStreamCreateWithFlags(&rt->stream, cudaStreamNonBlocking), context);
  DSMIL_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&rt->pool, rt->device), context);
  uint64_t keep_everything = std::numeric_limits<uint64_t>::max();
  DSMIL_CUDA_CHECK(cudaMemPoolSetAttribute(rt->pool, cudaMemPoolAttrReleaseThreshold, &keep_everything), context);
  return rt.release();
}

// Never destroyed: tensors released during static destruction still free into the stream.
Runtime& runtime() {
  static Runtime* rt = create_runtime();
  return *rt;
}

}  // namespace

bool device_available() {
  static const bool available = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // clear the error so that it is not reported by a later, unrelated check
      return false;
    }
    return count > 0;
  }();
  return available;
}

cudaStream_t stream() { return runtime().stream; }

const cudaDeviceProp& device_properties() { return runtime().properties; }

cudnnHandle_t cudnn_handle() {
  static const cudnnHandle_t handle = [] {
    cudnnHandle_t h = nullptr;
    DSMIL_CUDNN_CHECK(cudnnCreate(&h), "cuDNN start");
    DSMIL_CUDNN_CHECK(cudnnSetStream(h, stream()), "cuDNN start");
    return h;
  }();
  return handle;
}

const CublasLt& cublaslt() {
  static const CublasLt lt = [] {
    CublasLt created{nullptr, device_alloc(kCublasWorkspaceBytes), kCublasWorkspaceBytes};
    DSMIL_CUBLAS_CHECK(cublasLtCreate(&created.handle), "cuBLASLt start");
    return created;
  }();
  return lt;
}

void* device_alloc(size_t bytes) {
  Runtime& rt = runtime();
  void* ptr = nullptr;
  bytes = bytes == 0 ? 1 : bytes;  // a zero-byte request would give no pointer to free later
  DSMIL_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, rt.stream), fmt::format("device_alloc({} bytes)", bytes));
  if (rt.capture.active) rt.capture.taken.insert(ptr);
  if (const int poison = g_allocation_poison.load(); poison >= 0)
    DSMIL_CUDA_CHECK(cudaMemsetAsync(ptr, poison, bytes, rt.stream), "device_alloc poisoning");
  return ptr;
}

void device_free(void* ptr) {
  if (ptr == nullptr) return;
  Runtime& rt = runtime();
  if (rt.never_allocated.erase(ptr) > 0) return;
  if (rt.capture.active && rt.capture.taken.erase(ptr) == 0) rt.capture.frees_other_memory = true;
  const cudaError_t status = cudaFreeAsync(ptr, rt.stream);
  // Called from destructors, so it cannot throw; at process exit the runtime may already be unloaded. A recording
  // that an error invalidated refuses every call until it is ended: its frees are dropped with it.
  if (status != cudaSuccess && status != cudaErrorCudartUnloading && status != cudaErrorStreamCaptureInvalidated)
    std::fprintf(stderr, "dsmil: cudaFreeAsync(%p) failed: %s\n", ptr, cudaGetErrorString(status));
}

void begin_capture_tracking() {
  CaptureTracking& capture = runtime().capture;
  capture = CaptureTracking{};
  capture.active = true;
}

bool capture_frees_other_memory() { return runtime().capture.frees_other_memory; }

void end_capture_tracking(bool recording_kept) {
  Runtime& rt = runtime();
  if (!recording_kept) rt.never_allocated.insert(rt.capture.taken.begin(), rt.capture.taken.end());
  rt.capture = CaptureTracking{};
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t s = stream();
  const auto context = [&] {
    return fmt::format("copy of {} bytes {} -> {}", bytes, device_name(src_device), device_name(dst_device));
  };
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), context());
  // A device-to-device copy is ordered on the stream like every op: the host need not wait for it.
  if (dst_device == Device::CUDA && src_device == Device::CUDA) return;
  DSMIL_CUDA_CHECK(cudaStreamSynchronize(s), context());
}

void fill(Tensor& t, float value) {
  const int64_t n = t.numel();
  const auto context = [&] { return op_context("fill", {{"t", &t}}); };
  switch (t.dtype()) {
    case DType::F32:
      DSMIL_CUDA_CHECK(kernels::fill(t.data<float>(), value, n, stream()), context());
      break;
    case DType::BF16:
      DSMIL_CUDA_CHECK(kernels::fill(t.data<__nv_bfloat16>(), __float2bfloat16_rn(value), n, stream()), context());
      break;
    case DType::I32:
      DSMIL_CUDA_CHECK(kernels::fill(t.data<int32_t>(), static_cast<int32_t>(value), n, stream()), context());
      break;
    case DType::U8:
      DSMIL_CUDA_CHECK(kernels::fill(t.data<uint8_t>(), static_cast<uint8_t>(value), n, stream()), context());
      break;
  }
}

Tensor convert(const Tensor& t, DType to) {
  if (t.dtype() == to) return t.clone();
  Tensor out = Tensor::empty(t.shape(), to, Device::CUDA);
  const auto context = [&] { return op_context("convert", {{"t", &t}, {"out", &out}}); };
  if (t.dtype() == DType::F32 && to == DType::BF16)
    DSMIL_CUDA_CHECK(kernels::convert_f32_to_bf16(t.data<float>(), out.data<__nv_bfloat16>(), t.numel(), stream()),
                     context());
  else if (t.dtype() == DType::BF16 && to == DType::F32)
    DSMIL_CUDA_CHECK(kernels::convert_bf16_to_f32(t.data<__nv_bfloat16>(), out.data<float>(), t.numel(), stream()),
                     context());
  else
    throw ShapeError(
        fmt::format("convert: {} -> {} is not supported (only f32 <-> bf16)", t.describe(), dtype_name(to)));
  return out;
}

void synchronize() { DSMIL_CUDA_CHECK(cudaStreamSynchronize(stream()), "synchronize"); }
void profiler_start() { DSMIL_CUDA_CHECK(cudaProfilerStart(), "start the profiler's capture range"); }
void profiler_stop() { DSMIL_CUDA_CHECK(cudaProfilerStop(), "end the profiler's capture range"); }

void* allocate_outside_pool(size_t bytes) {
  stream();  // starts the runtime on its device before memory is queried
  size_t free_bytes = 0, total_bytes = 0;
  DSMIL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), "device memory outside the pool: cudaMemGetInfo");
  const auto gib = [](size_t b) { return static_cast<double>(b) / (size_t{1} << 30); };
  const auto short_of_memory = [&] {
    return DeviceError(fmt::format(
        "device memory outside the pool: {} bytes ({:.2f} GiB) wanted; {} bytes ({:.2f} GiB) are free of {:.2f} GiB "
        "(memory the tensor pool keeps for reuse does not count as free)",
        bytes, gib(bytes), free_bytes, gib(free_bytes), gib(total_bytes)));
  };
  if (bytes > free_bytes) throw short_of_memory();
  void* memory = nullptr;
  const cudaError_t status = cudaMalloc(&memory, bytes);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it, so that a later, unrelated check does not report it
    throw short_of_memory();
  }
  DSMIL_CUDA_CHECK(status, fmt::format("device memory outside the pool: cudaMalloc of {} bytes", bytes));
  return memory;
}

void free_outside_pool(void* memory) noexcept {
  const cudaError_t status = cudaFree(memory);
  // At process exit the runtime may already be unloaded; there is nothing left to free then.
  if (status != cudaSuccess && status != cudaErrorCudartUnloading)
    std::fprintf(stderr, "dsmil: cudaFree of device memory outside the pool failed: %s\n", cudaGetErrorString(status));
}

namespace {

// The file a shared library was loaded from, read from /proc/self/maps ("?" where that is not readable).
std::string loaded_library_file(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (const size_t at = line.find('/'); at != std::string::npos && line.find(name, at) != std::string::npos)
      return line.substr(at);
  return "?";
}

}  // namespace

size_t cudnn_version() { return cudnnGetVersion(); }

CudaLibraries loaded_libraries() {
  int runtime_version = 0, cublas_major = 0, cublas_minor = 0, cublas_patch = 0;
  DSMIL_CUDA_CHECK(cudaRuntimeGetVersion(&runtime_version), "loaded_libraries");
  DSMIL_CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &cublas_major), "loaded_libraries");
  DSMIL_CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &cublas_minor), "loaded_libraries");
  DSMIL_CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &cublas_patch), "loaded_libraries");
  const size_t cudnn = cudnn_version();
  return {fmt::format("{}.{}", runtime_version / 1000, runtime_version % 1000 / 10),
          fmt::format("{}.{}.{}", cudnn / 10000, cudnn % 10000 / 100, cudnn % 100),
          fmt::format("{}.{}.{}", cublas_major, cublas_minor, cublas_patch),
          loaded_library_file("/libcudart.so"),
          loaded_library_file("/libcudnn.so"),
          loaded_library_file("/libcublas.so")};
}

CudaHeaderVersions header_versions() {
  return {fmt::format("{}.{}.{}", CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL),
          fmt::format("{}.{}.{}", CUBLAS_VER_MAJOR, CUBLAS_VER_MINOR, CUBLAS_VER_PATCH)};
}

CudaVersions loaded_versions() {
  int driver = 0;
  DSMIL_CUDA_CHECK(cudaDriverGetVersion(&driver), "loaded_versions");
  cudnn_handle();  // loads cuDNN, so that its file shows in the process's maps
  const CudaLibraries libraries = loaded_libraries();
  return {device_properties().name, fmt::format("{}.{}", driver / 1000, driver % 1000 / 10),
          libraries.runtime,        libraries.cudnn,
          libraries.cublas,         libraries.cudnn_file};
}

std::string backend_versions() {
  const cudaDeviceProp& p = device_properties();
  const CudaVersions v = loaded_versions();
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB); driver API {}; CUDA runtime {}; cuDNN {} ({}); cuBLAS {}",
                     v.gpu, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / double(1 << 30), v.driver,
                     v.runtime, v.cudnn, v.cudnn_file, v.cublas);
}

void set_allocation_poison(std::optional<uint8_t> byte) { g_allocation_poison.store(byte ? int{*byte} : -1); }

PoolUsage pool_usage() {
  PoolUsage pool, graphs;
  const Runtime& rt = runtime();
  DSMIL_CUDA_CHECK(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrUsedMemCurrent, &pool.used), "pool_usage");
  DSMIL_CUDA_CHECK(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrReservedMemCurrent, &pool.reserved), "pool_usage");
  DSMIL_CUDA_CHECK(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrUsedMemHigh, &pool.peak_used), "pool_usage");
  DSMIL_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(rt.device, cudaGraphMemAttrUsedMemCurrent, &graphs.used),
                   "pool_usage (graph memory)");
  DSMIL_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(rt.device, cudaGraphMemAttrReservedMemCurrent, &graphs.reserved),
                   "pool_usage (graph memory)");
  DSMIL_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(rt.device, cudaGraphMemAttrUsedMemHigh, &graphs.peak_used),
                   "pool_usage (graph memory)");
  return {pool.used + graphs.used, pool.reserved + graphs.reserved, pool.peak_used + graphs.peak_used};
}

void reset_pool_peak() {
  const Runtime& rt = runtime();
  uint64_t zero = 0;
  DSMIL_CUDA_CHECK(cudaMemPoolSetAttribute(rt.pool, cudaMemPoolAttrUsedMemHigh, &zero), "reset_pool_peak");
  DSMIL_CUDA_CHECK(cudaDeviceSetGraphMemAttribute(rt.device, cudaGraphMemAttrUsedMemHigh, &zero),
                   "reset_pool_peak (graph memory)");
}

}  // namespace dsmil::cuda
