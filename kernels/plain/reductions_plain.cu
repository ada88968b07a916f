// Plain sum of squares over x[n] (float or bf16) into one fp64 value: one thread per element, each
// squaring its element and adding it to the result with atomicAdd (the contended reference version).
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "kernels/plain/reductions_plain.h"

namespace dsmil::kernels::plain {

namespace {

template <typename T>
__global__ void sum_squares_plain_kernel(const T* __restrict__ x, int64_t n, double* __restrict__ result) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const double v = to_float(x[i]);
  atomicAdd(result, v * v);
}

}  // namespace

template <typename T>
cudaError_t sum_squares_plain(const T* x, int64_t n, double* result, cudaStream_t stream) {
  if (const cudaError_t e = cudaMemsetAsync(result, 0, sizeof(double), stream); e != cudaSuccess) return e;
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + kSumSquaresPlainThreads - 1) / kSumSquaresPlainThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  sum_squares_plain_kernel<<<static_cast<unsigned>(blocks), kSumSquaresPlainThreads, 0, stream>>>(x, n, result);
  return cudaGetLastError();
}

template cudaError_t sum_squares_plain<float>(const float*, int64_t, double*, cudaStream_t);
template cudaError_t sum_squares_plain<__nv_bfloat16>(const __nv_bfloat16*, int64_t, double*, cudaStream_t);

}  // namespace dsmil::kernels::plain
