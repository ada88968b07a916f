// Whole-tensor reductions over n contiguous elements (float or bf16): sum of squares accumulated in fp64
// in a fixed order (bit-identical between runs), and a flag for any NaN / infinite element.
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "kernels/reductions.h"

namespace dsmil::kernels {

namespace {

template <typename T>
__global__ void sum_squares_partial_kernel(const T* __restrict__ x, int64_t n, double* __restrict__ partial) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double v = to_float(x[i]);
    acc += v * v;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(const double* __restrict__ partial, int count, double* __restrict__ result) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *result = acc;
}

template <typename T>
__global__ void any_nonfinite_kernel(const T* __restrict__ x, int64_t n, int32_t* __restrict__ result) {
  bool bad = false;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    bad |= !isfinite(to_float(x[i]));
  // Every writer stores the same 1, so the unordered stores need no atomics.
  if (__syncthreads_or(bad) && threadIdx.x == 0) *result = 1;
}

}  // namespace

template <typename T>
cudaError_t sum_squares(const T* x, int64_t n, double* partial, double* result, cudaStream_t stream) {
  const int blocks = static_cast<int>(n == 0 ? 1 : (grid_for(n) < kSumSquaresBlocks ? grid_for(n) : kSumSquaresBlocks));
  sum_squares_partial_kernel<<<blocks, kThreads, 0, stream>>>(x, n, partial);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  sum_partials_kernel<<<1, 1024, 0, stream>>>(partial, blocks, result);
  return cudaGetLastError();
}

template <typename T>
cudaError_t any_nonfinite(const T* x, int64_t n, int32_t* result, cudaStream_t stream) {
  if (const cudaError_t e = cudaMemsetAsync(result, 0, sizeof(int32_t), stream); e != cudaSuccess) return e;
  if (n == 0) return cudaSuccess;
  any_nonfinite_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, result);
  return cudaGetLastError();
}

template cudaError_t sum_squares<float>(const float*, int64_t, double*, double*, cudaStream_t);
template cudaError_t sum_squares<__nv_bfloat16>(const __nv_bfloat16*, int64_t, double*, double*, cudaStream_t);
template cudaError_t any_nonfinite<float>(const float*, int64_t, int32_t*, cudaStream_t);
template cudaError_t any_nonfinite<__nv_bfloat16>(const __nv_bfloat16*, int64_t, int32_t*, cudaStream_t);

}  // namespace dsmil::kernels
