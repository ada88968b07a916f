// Dtype conversion y = dtype(x) (f32 <-> bf16, round to nearest even) and fill y[i] = value, over n
// contiguous elements; grid-stride loops, the conversion 8 elements (16-byte packs) per step.
#include "kernels/common.cuh"
#include "kernels/convert_fill.h"
#include "kernels/vector_access.cuh"

namespace dsmil::kernels {

namespace {

// Elements per conversion step: one 16-byte pack of bf16, two of f32.
constexpr int kConvertStep = kVectorWidth<__nv_bfloat16>;

// W = kConvertStep (x and y 16-byte aligned): n / W steps of 16-byte loads and stores, then the last n % W
// elements one per thread; W = 1: element by element.
template <typename From, typename To, int W>
__global__ void convert_kernel(const From* __restrict__ x, To* __restrict__ y, int64_t n) {
  const int64_t steps = n / W, thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t s = thread; s < steps; s += int64_t(gridDim.x) * blockDim.x) {
    float v[W];
    load_floats<From, W>(x + s * W, v);
    store_floats<To, W>(y + s * W, v);
  }
  if (const int64_t i = steps * W + thread; i < n) y[i] = from_float<To>(to_float(x[i]));
}

template <typename From, typename To>
cudaError_t convert(const From* x, To* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (vector_aligned({x, y}))
    convert_kernel<From, To, kConvertStep><<<grid_for(n / kConvertStep + 1), kThreads, 0, stream>>>(x, y, n);
  else
    convert_kernel<From, To, 1><<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

template <typename T>
__global__ void fill_kernel(T* __restrict__ y, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = value;
}

}  // namespace

cudaError_t convert_f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream) {
  return convert(x, y, n, stream);
}

cudaError_t convert_bf16_to_f32(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t stream) {
  return convert(x, y, n, stream);
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
template cudaError_t fill<uint8_t>(uint8_t*, uint8_t, int64_t, cudaStream_t);

}  // namespace dsmil::kernels
