// Host time of the CUDA runtime, cuDNN and cuBLASLt calls a process makes: an LD_PRELOAD library that wraps each
// listed function (calls, total and mean host microseconds), printed to stderr when the process exits.
// Why: on the lent GPU machines no host profiler runs (no perf, no Nsight Systems: .library/device/KINDS.md), and the
// training step waits for its host (notes/PERF.md); this says how much of a step's queuing each library call costs.
// Usage: LD_PRELOAD=libhost_time.so dsmil bench ...   (DSMIL_HOST_TIME_STEPS=N adds each function's calls and
// microseconds per step, for a run of N steps in all)
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" cudaError_t CUDARTAPI __cudaLaunchKernel(cudaKernel_t kernel, dim3 gridDim, dim3 blockDim, void** args,
                                                    size_t sharedMem, cudaStream_t stream);

namespace {

struct Counter {
  const char* name = nullptr;
  std::atomic<long long> calls{0}, nanoseconds{0};
};

constexpr int kMaxCounters = 64;
std::array<Counter, kMaxCounters> counters;
std::atomic<int> counter_count{0};

int register_counter(const char* name) {
  const int index = counter_count.fetch_add(1);
  if (index >= kMaxCounters) std::abort();
  counters[index].name = name;
  return index;
}

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void* next_symbol(const char* name) {
  void* symbol = dlsym(RTLD_NEXT, name);
  if (symbol == nullptr) {
    std::fprintf(stderr, "host_time: %s not found after this library (%s)\n", name, dlerror());
    std::abort();
  }
  return symbol;
}

// Times one call of `real`, counted under `index`.
template <typename Function, typename... Args>
auto timed_call(int index, Function* real, Args... args) {
  const long long start = now_ns();
  auto result = real(args...);
  counters[index].nanoseconds += now_ns() - start;
  ++counters[index].calls;
  return result;
}

struct Report {
  ~Report() {
    std::vector<const Counter*> used;
    for (int i = 0; i < std::min(counter_count.load(), kMaxCounters); ++i) used.push_back(&counters[i]);
    std::sort(used.begin(), used.end(),
              [](const Counter* a, const Counter* b) { return a->nanoseconds > b->nanoseconds; });
    const char* steps_text = std::getenv("DSMIL_HOST_TIME_STEPS");
    const double steps = steps_text ? std::atof(steps_text) : 0.0;
    std::fprintf(stderr, "host_time: %-44s %10s %12s %10s%s\n", "function", "calls", "total ms", "mean us",
                 steps > 0 ? "  calls/step  us/step" : "");
    for (const Counter* c : used) {
      const double total_us = c->nanoseconds / 1e3;
      std::fprintf(stderr, "host_time: %-44s %10lld %12.2f %10.2f", c->name, c->calls.load(), total_us / 1e3,
                   c->calls ? total_us / c->calls : 0.0);
      if (steps > 0) std::fprintf(stderr, "  %10.1f %8.1f", c->calls / steps, total_us / steps);
      std::fprintf(stderr, "\n");
    }
  }
} report;

}  // namespace

// Each wrapper finds the function it stands in for, and registers its counter, on its first call (function-local
// statics: initialised once, whichever thread calls first).
#define HOST_TIMED(ret, name, params, args)                                       \
  extern "C" ret name params {                                                    \
    static const auto real = reinterpret_cast<ret(*) params>(next_symbol(#name)); \
    static const int index = register_counter(#name);                             \
    return timed_call(index, real, args);                                         \
  }
#define ARGS(...) __VA_ARGS__

HOST_TIMED(cudaError_t, __cudaLaunchKernel,
           (cudaKernel_t kernel, dim3 grid, dim3 block, void** args, size_t shared, cudaStream_t stream),
           ARGS(kernel, grid, block, args, shared, stream))
HOST_TIMED(cudaError_t, cudaMallocAsync, (void** ptr, size_t size, cudaStream_t stream), ARGS(ptr, size, stream))
HOST_TIMED(cudaError_t, cudaFreeAsync, (void* ptr, cudaStream_t stream), ARGS(ptr, stream))
HOST_TIMED(cudaError_t, cudaMemcpyAsync,
           (void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream),
           ARGS(dst, src, count, kind, stream))
HOST_TIMED(cudaError_t, cudaMemcpy2DAsync,
           (void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height, cudaMemcpyKind kind,
            cudaStream_t stream),
           ARGS(dst, dpitch, src, spitch, width, height, kind, stream))
HOST_TIMED(cudaError_t, cudaMemsetAsync, (void* ptr, int value, size_t count, cudaStream_t stream),
           ARGS(ptr, value, count, stream))
HOST_TIMED(cudaError_t, cudaStreamSynchronize, (cudaStream_t stream), ARGS(stream))
HOST_TIMED(cudaError_t, cudaEventRecord, (cudaEvent_t event, cudaStream_t stream), ARGS(event, stream))
HOST_TIMED(cudaError_t, cudaStreamWaitEvent, (cudaStream_t stream, cudaEvent_t event, unsigned int flags),
           ARGS(stream, event, flags))
HOST_TIMED(cudaError_t, cudaMemPoolGetAttribute, (cudaMemPool_t pool, cudaMemPoolAttr attr, void* value),
           ARGS(pool, attr, value))
HOST_TIMED(cudaError_t, cudaMemGetInfo, (size_t * free, size_t* total), ARGS(free, total))
HOST_TIMED(cudaError_t, cudaFuncSetAttribute, (const void* func, cudaFuncAttribute attr, int value),
           ARGS(func, attr, value))

HOST_TIMED(cudnnStatus_t, cudnnBackendExecute,
           (cudnnHandle_t h, cudnnBackendDescriptor_t plan, cudnnBackendDescriptor_t pack), ARGS(h, plan, pack))
HOST_TIMED(cudnnStatus_t, cudnnBackendCreateDescriptor,
           (cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t* d), ARGS(type, d))
HOST_TIMED(cudnnStatus_t, cudnnBackendDestroyDescriptor, (cudnnBackendDescriptor_t d), ARGS(d))
HOST_TIMED(cudnnStatus_t, cudnnBackendSetAttribute,
           (cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
            int64_t count, const void* values),
           ARGS(d, name, type, count, values))
HOST_TIMED(cudnnStatus_t, cudnnBackendFinalize, (cudnnBackendDescriptor_t d), ARGS(d))

HOST_TIMED(cublasStatus_t, cublasLtMatmul,
           (cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void* alpha, const void* a, cublasLtMatrixLayout_t al,
            const void* b, cublasLtMatrixLayout_t bl, const void* beta, const void* c, cublasLtMatrixLayout_t cl,
            void* d, cublasLtMatrixLayout_t dl, const cublasLtMatmulAlgo_t* algo, void* ws, size_t wsb,
            cudaStream_t stream),
           ARGS(h, desc, alpha, a, al, b, bl, beta, c, cl, d, dl, algo, ws, wsb, stream))
