// Spin and L2-eviction kernels of the kernel bench, and the launch shape of the grid-stride kernels
// (kernels/common.cuh's grid_for and kThreads, read from the header so that the printout never drifts).
#include <string>

#include "apps/kernel_bench/device_helpers.h"
#include "kernels/common.cuh"

namespace dsmil::kernel_bench {

namespace {

__device__ __forceinline__ uint64_t global_time_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void spin_kernel(int64_t nanoseconds) {
  const uint64_t start = global_time_ns();
  while (global_time_ns() - start < static_cast<uint64_t>(nanoseconds)) {
  }
}

__global__ void evict_kernel(const int4* __restrict__ buffer, int64_t count, int sentinel, int* __restrict__ sink) {
  int acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int4 v = buffer[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // The comparison with a runtime value keeps the loads alive; a rare match writes the unused sink.
  if (acc == sentinel) *sink = acc;
}

}  // namespace

cudaError_t spin(int64_t nanoseconds, cudaStream_t stream) {
  spin_kernel<<<1, 1, 0, stream>>>(nanoseconds);
  return cudaGetLastError();
}

cudaError_t evict_l2(const void* buffer, int64_t bytes, int* sink, cudaStream_t stream) {
  const int64_t count = bytes / static_cast<int64_t>(sizeof(int4));
  evict_kernel<<<kernels::grid_for(count), kernels::kThreads, 0, stream>>>(static_cast<const int4*>(buffer), count,
                                                                           0x5a5a5a5a, sink);
  return cudaGetLastError();
}

int64_t grid_stride_blocks(int64_t n) { return kernels::grid_for(n); }

std::string grid_stride_launch(int64_t n) {
  return std::to_string(kernels::grid_for(n)) + " x " + std::to_string(kernels::kThreads);
}

}  // namespace dsmil::kernel_bench
