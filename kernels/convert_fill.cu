// Dtype conversion y = dtype(x) (f32 <-> bf16, round to nearest even) and fill y[i] = value, over n
// contiguous elements; grid-stride loops.
#include "kernels/common.cuh"
#include "kernels/convert_fill.h"

namespace dsmil::kernels {

namespace {

template <typename From, typename To>
__global__ void convert_kernel(const From* __restrict__ x, To* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<To>(to_float(x[i]));
}

template <typename T>
__global__ void fill_kernel(T* __restrict__ y, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = value;
}

}  // namespace

cudaError_t convert_f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t convert_bf16_to_f32(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t fill(T* y, T value, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, value, n);
  return cudaGetLastError();
}

template cudaError_t fill<float>(float*, float, int64_t, cudaStream_t);
template cudaError_t fill<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16, int64_t, cudaStream_t);
template cudaError_t fill<int32_t>(int32_t*, int32_t, int64_t, cudaStream_t);

}  // namespace dsmil::kernels
