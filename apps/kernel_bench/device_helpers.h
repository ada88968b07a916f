// Device-side helpers of the kernel bench (CUDA builds only): a spin kernel that holds the stream while
// the host queues a timed call (so host overhead never shows between the timing events), a read-only
// pass that evicts a buffer's worth of lines from L2, and the grid of the kernels' grid-stride loops.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace dsmil::kernel_bench {

// Keeps one thread busy for `nanoseconds` (by the GPU's global timer) on `stream`.
cudaError_t spin(int64_t nanoseconds, cudaStream_t stream);
// Reads `bytes` of `buffer` (16-byte aligned) and writes nothing that is used: what was in L2 before is
// evicted by clean lines, so no later kernel pays for writing them back.
cudaError_t evict_l2(const void* buffer, int64_t bytes, int* sink, cudaStream_t stream);
// The blocks of kernels/common.cuh's grid_for(n) launches (the grid-stride loops), and "blocks x threads".
int64_t grid_stride_blocks(int64_t n);
std::string grid_stride_launch(int64_t n);

}  // namespace dsmil::kernel_bench
