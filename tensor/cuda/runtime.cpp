// The CUDA runtime services: one non-blocking library stream, memory from the device's stream-ordered
// pool (retained: its release threshold is the maximum, so freed memory is reused, never given back),
// copies, fills and dtype conversion, and the lazily created cuDNN and cuBLAS handles bound to the stream.
#include "tensor/cuda/runtime.h"

#include <cuda_bf16.h>
#include <cudaTypedefs.h>
#include <cuda_profiler_api.h>
#include <fmt/format.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include "kernels/convert_fill.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/memory_plan.h"

namespace dsmil::cuda {

namespace {

// cuBLASLt gets a fixed workspace so that its algorithm choice, and its results, never depend on what
// the pool happens to hold (NVIDIA recommends 32 MiB on Hopper).
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

std::atomic<int> g_allocation_poison{-1};

// The driver's virtual memory functions, reached through the runtime so that the binary does not link libcuda (a
// machine without the driver lacks it).
struct VirtualMemoryApi {
  PFN_cuMemAddressReserve_v10020 address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 address_free = nullptr;
  PFN_cuMemCreate_v10020 create = nullptr;
  PFN_cuMemRelease_v10020 release = nullptr;
  PFN_cuMemMap_v10020 map = nullptr;
  PFN_cuMemUnmap_v10020 unmap = nullptr;
  PFN_cuMemSetAccess_v10020 set_access = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 granularity = nullptr;
};

}  // namespace

// A recording's memory, in two passes over the same work. The first takes memory from the pool as the work asks (the
// graph would hold allocation nodes) and traces each allocation's bytes and lifetime; that graph is dropped. The trace
// is then planned offline (plan_memory) into one address range backed by exactly the plan's extent, and the second
// pass hands each allocation its planned place: the graph holds no allocation nodes, and its memory comes close to
// the most the step has alive at once (with allocation nodes the DESIGN shape's replayed step held 0.12 GiB more than
// the same step queued). Every op of the second pass refers to memory already backed (copies and fills look their
// addresses up when recorded). Given back once the graph is released and its last tensor freed.
struct RecordingMemory {
  AllocationTrace first_pass, second_pass;
  MemoryPlan plan;
  bool placed = false;  // the plan is made: the second pass
  CUdeviceptr base = 0;
  size_t mapped = 0;      // the range, backed in full
  size_t alive = 0;       // tensors in the range not freed yet
  bool released = false;  // the graph is gone
};

namespace {

// While the stream is recorded into a CUDA graph: where the recorded work's memory comes from, and whether it gave
// back memory from elsewhere (a free the graph would repeat on every launch).
struct CaptureTracking {
  RecordingMemory* memory = nullptr;
  bool frees_other_memory = false;
};

struct Runtime {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaMemPool_t pool = nullptr;
  cudaDeviceProp properties{};
  CaptureTracking capture;
  std::vector<std::unique_ptr<RecordingMemory>> recordings;
  // Memory a first pass took and kept past it: it was never allocated, so the frees of its tensors are skipped.
  std::unordered_set<void*> never_allocated;
  size_t recording_mapped = 0, recording_mapped_peak = 0;
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

namespace {

const VirtualMemoryApi& virtual_memory() {
  static const VirtualMemoryApi api = [] {
    VirtualMemoryApi found;
    const auto load = [](const char* symbol, auto& function) {
      void* address = nullptr;
      cudaDriverEntryPointQueryResult result{};
      DSMIL_CUDA_CHECK(cudaGetDriverEntryPointByVersion(symbol, &address, 12000, cudaEnableDefault, &result),
                       fmt::format("the driver's {}", symbol));
      if (result != cudaDriverEntryPointSuccess)
        throw DeviceError(fmt::format("the driver's {}: not found (query result {})", symbol, int(result)));
      function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(address);
    };
    load("cuMemAddressReserve", found.address_reserve);
    load("cuMemAddressFree", found.address_free);
    load("cuMemCreate", found.create);
    load("cuMemRelease", found.release);
    load("cuMemMap", found.map);
    load("cuMemUnmap", found.unmap);
    load("cuMemSetAccess", found.set_access);
    load("cuMemGetAllocationGranularity", found.granularity);
    return found;
  }();
  return api;
}

CUmemAllocationProp device_memory_properties() {
  CUmemAllocationProp properties{};
  properties.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  properties.location = {CU_MEM_LOCATION_TYPE_DEVICE, runtime().device};
  return properties;
}

size_t mapping_granularity() {
  static const size_t granularity = [] {
    size_t bytes = 0;
    const CUmemAllocationProp properties = device_memory_properties();
    DSMIL_DRIVER_CHECK(virtual_memory().granularity(&bytes, &properties, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
                       "recording memory");
    return bytes;
  }();
  return granularity;
}

size_t round_up(size_t bytes, size_t multiple) { return (bytes + multiple - 1) / multiple * multiple; }

RecordingMemory* recording_holding(Runtime& rt, void* ptr) {
  const auto address = reinterpret_cast<CUdeviceptr>(ptr);
  for (const auto& memory : rt.recordings)
    if (address >= memory->base && address < memory->base + memory->mapped) return memory.get();
  return nullptr;
}

// Gives the range and its physical memory back once the graph is released and the last of its tensors freed. Runs in
// destructors: reports failures instead of throwing.
void give_back_if_unused(Runtime& rt, RecordingMemory* memory) noexcept {
  if (!memory->released || memory->alive > 0) return;
  // Waiting for the stream would end a recording in progress: given back when it stops (stop_recording_into).
  if (memory->mapped > 0 && rt.capture.memory != nullptr) return;
  if (memory->mapped > 0) {
    const VirtualMemoryApi& vm = virtual_memory();
    // The graph's last launch may still be running on the stream.
    bool failed = cudaStreamSynchronize(rt.stream) != cudaSuccess;
    failed |= vm.unmap(memory->base, memory->mapped) != CUDA_SUCCESS;
    failed |= vm.address_free(memory->base, memory->mapped) != CUDA_SUCCESS;
    if (failed) std::fprintf(stderr, "dsmil: giving back a CUDA graph's recording memory failed\n");
    rt.recording_mapped -= memory->mapped;
  }
  std::erase_if(rt.recordings, [memory](const auto& kept) { return kept.get() == memory; });
}

// The second pass's next allocation: its planned place, where the work asks for what the first pass took.
void* place(RecordingMemory& memory, size_t bytes) {
  const size_t index = memory.second_pass.buffers().size();
  const std::vector<BufferLifetime>& planned = memory.first_pass.buffers();
  if (index >= planned.size() || planned[index].bytes != planned_bytes(bytes))
    throw DeviceError(fmt::format(
        "device_alloc({} bytes) while recording a CUDA graph: allocation {} of the second pass differs from the "
        "first pass's ({}): the recorded work must ask for the same memory in the same order both times",
        bytes, index, index < planned.size() ? fmt::format("{} bytes", planned[index].bytes) : "none"));
  void* ptr = reinterpret_cast<void*>(memory.base + memory.plan.offsets[index]);
  memory.second_pass.take(bytes, reinterpret_cast<uintptr_t>(ptr));
  ++memory.alive;
  return ptr;
}

}  // namespace

void* device_alloc(size_t bytes) {
  Runtime& rt = runtime();
  void* ptr = nullptr;
  bytes = bytes == 0 ? 1 : bytes;  // a zero-byte request would give no pointer to free later
  RecordingMemory* recording = rt.capture.memory;
  if (recording && recording->placed) {
    ptr = place(*recording, bytes);
  } else {
    DSMIL_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, rt.stream), fmt::format("device_alloc({} bytes)", bytes));
    if (recording) recording->first_pass.take(bytes, reinterpret_cast<uintptr_t>(ptr));
  }
  if (const int poison = g_allocation_poison.load(); poison >= 0)
    DSMIL_CUDA_CHECK(cudaMemsetAsync(ptr, poison, bytes, rt.stream), "device_alloc poisoning");
  return ptr;
}

void device_free(void* ptr) {
  if (ptr == nullptr) return;
  Runtime& rt = runtime();
  if (RecordingMemory* recording = recording_holding(rt, ptr)) {
    if (rt.capture.memory == recording) recording->second_pass.give_back(reinterpret_cast<uintptr_t>(ptr));
    --recording->alive;
    give_back_if_unused(rt, recording);
    return;
  }
  if (rt.never_allocated.erase(ptr) > 0) return;
  if (RecordingMemory* recording = rt.capture.memory;
      recording && (recording->placed || !recording->first_pass.give_back(reinterpret_cast<uintptr_t>(ptr))))
    rt.capture.frees_other_memory = true;
  const cudaError_t status = cudaFreeAsync(ptr, rt.stream);
  // Called from destructors, so it cannot throw; at process exit the runtime may already be unloaded. A recording
  // that an error invalidated refuses every call until it is ended: its frees are dropped with it.
  if (status != cudaSuccess && status != cudaErrorCudartUnloading && status != cudaErrorStreamCaptureInvalidated)
    std::fprintf(stderr, "dsmil: cudaFreeAsync(%p) failed: %s\n", ptr, cudaGetErrorString(status));
}

RecordingMemory* new_recording_memory() {
  return runtime().recordings.emplace_back(std::make_unique<RecordingMemory>()).get();
}

void start_recording_into(RecordingMemory* memory) { runtime().capture = CaptureTracking{memory, false}; }

std::optional<std::string> stop_recording_into(RecordingMemory* memory) {
  Runtime& rt = runtime();
  std::optional<std::string> refused;
  if (rt.capture.memory == memory && rt.capture.frees_other_memory)
    refused =
        "the recorded work gives back pool memory it did not take (a tensor made before the recording and released "
        "in it): every launch would free it again";
  else if (memory->placed && memory->second_pass.buffers() != memory->first_pass.buffers())
    refused = "the second pass took or gave back its memory in another order than the first: its plan does not hold";
  rt.capture = CaptureTracking{};
  if (!memory->placed)
    for (const uintptr_t kept : memory->first_pass.alive()) rt.never_allocated.insert(reinterpret_cast<void*>(kept));
  std::vector<RecordingMemory*> waiting;
  for (const auto& kept : rt.recordings) waiting.push_back(kept.get());
  for (RecordingMemory* other : waiting) give_back_if_unused(rt, other);
  return refused;
}

void place_recording_memory(RecordingMemory* memory) {
  Runtime& rt = runtime();
  memory->plan = plan_memory(memory->first_pass.buffers());
  memory->placed = true;
  if (memory->plan.extent == 0) return;
  const VirtualMemoryApi& vm = virtual_memory();
  const size_t granularity = mapping_granularity();
  const size_t bytes = round_up(memory->plan.extent, granularity);
  const std::string context =
      fmt::format("backing a CUDA graph's recording with {} bytes (planned {}, {} alive at most)", bytes,
                  memory->plan.extent, memory->plan.most_alive);
  DSMIL_DRIVER_CHECK(vm.address_reserve(&memory->base, bytes, granularity, 0, 0), context);
  const CUmemAllocationProp properties = device_memory_properties();
  CUmemGenericAllocationHandle physical = 0;
  CUresult status = vm.create(&physical, bytes, &properties, 0);
  if (status == CUDA_SUCCESS) {
    status = vm.map(memory->base, bytes, 0, physical, 0);
    vm.release(physical);  // a mapping keeps its memory until it is unmapped
  }
  if (status == CUDA_SUCCESS) {
    CUmemAccessDesc access{};
    access.location = properties.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    status = vm.set_access(memory->base, bytes, &access, 1);
    if (status != CUDA_SUCCESS) vm.unmap(memory->base, bytes);
  }
  if (status != CUDA_SUCCESS) {
    vm.address_free(memory->base, bytes);
    memory->base = 0;
    DSMIL_DRIVER_CHECK(status, context);
  }
  memory->mapped = bytes;
  rt.recording_mapped += bytes;
  rt.recording_mapped_peak = std::max(rt.recording_mapped_peak, rt.recording_mapped);
}

const MemoryPlan& recording_plan(const RecordingMemory* memory) { return memory->plan; }

void release_recording_memory(RecordingMemory* memory) noexcept {
  Runtime& rt = runtime();
  memory->released = true;
  give_back_if_unused(rt, memory);
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
  PoolUsage pool;
  const Runtime& rt = runtime();
  DSMIL_CUDA_CHECK(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrUsedMemCurrent, &pool.used), "pool_usage");
  DSMIL_CUDA_CHECK(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrReservedMemCurrent, &pool.reserved), "pool_usage");
  DSMIL_CUDA_CHECK(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrUsedMemHigh, &pool.peak_used), "pool_usage");
  return {pool.used + rt.recording_mapped, pool.reserved + rt.recording_mapped,
          pool.peak_used + rt.recording_mapped_peak};
}

void reset_pool_peak() {
  Runtime& rt = runtime();
  uint64_t zero = 0;
  DSMIL_CUDA_CHECK(cudaMemPoolSetAttribute(rt.pool, cudaMemPoolAttrUsedMemHigh, &zero), "reset_pool_peak");
  rt.recording_mapped_peak = rt.recording_mapped;
}

}  // namespace dsmil::cuda
