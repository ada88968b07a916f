// Elementwise maps over n contiguous elements, computed in fp32 and stored in T (float or bf16):
// unary y = f(x) (scale, relu, tanh, sigmoid), binary y = f(a, b) (add, mul, activation backward), axpy.
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "kernels/elementwise.h"

namespace dsmil::kernels {

namespace {

template <UnaryOp op>
__device__ __forceinline__ float apply_unary(float x, float s) {
  if constexpr (op == UnaryOp::Scale) return s * x;
  if constexpr (op == UnaryOp::Relu) return x > 0.0f ? x : 0.0f;
  if constexpr (op == UnaryOp::Tanh) return tanhf(x);
  if constexpr (op == UnaryOp::Sigmoid) return 1.0f / (1.0f + expf(-x));
}

// For the backward ops a = dy and b = y, the forward's output.
template <BinaryOp op>
__device__ __forceinline__ float apply_binary(float a, float b) {
  if constexpr (op == BinaryOp::Add) return a + b;
  if constexpr (op == BinaryOp::Mul) return a * b;
  if constexpr (op == BinaryOp::ReluBackward) return b > 0.0f ? a : 0.0f;
  if constexpr (op == BinaryOp::TanhBackward) return a * (1.0f - b * b);
  if constexpr (op == BinaryOp::SigmoidBackward) return a * b * (1.0f - b);
}

template <UnaryOp op, typename T>
__global__ void unary_kernel(const T* x, T* y, float s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(apply_unary<op>(to_float(x[i]), s));
}

template <BinaryOp op, typename T>
__global__ void binary_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(apply_binary<op>(to_float(a[i]), to_float(b[i])));
}

__global__ void axpy_kernel(float* __restrict__ y, float alpha, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += alpha * x[i];
}

template <UnaryOp op, typename T>
cudaError_t launch_unary(const T* x, T* y, float s, int64_t n, cudaStream_t stream) {
  unary_kernel<op><<<grid_for(n), kThreads, 0, stream>>>(x, y, s, n);
  return cudaGetLastError();
}

template <BinaryOp op, typename T>
cudaError_t launch_binary(const T* a, const T* b, T* y, int64_t n, cudaStream_t stream) {
  binary_kernel<op><<<grid_for(n), kThreads, 0, stream>>>(a, b, y, n);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t unary(UnaryOp op, const T* x, T* y, float s, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (op) {
    case UnaryOp::Scale:
      return launch_unary<UnaryOp::Scale>(x, y, s, n, stream);
    case UnaryOp::Relu:
      return launch_unary<UnaryOp::Relu>(x, y, s, n, stream);
    case UnaryOp::Tanh:
      return launch_unary<UnaryOp::Tanh>(x, y, s, n, stream);
    case UnaryOp::Sigmoid:
      return launch_unary<UnaryOp::Sigmoid>(x, y, s, n, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t binary(BinaryOp op, const T* a, const T* b, T* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (op) {
    case BinaryOp::Add:
      return launch_binary<BinaryOp::Add>(a, b, y, n, stream);
    case BinaryOp::Mul:
      return launch_binary<BinaryOp::Mul>(a, b, y, n, stream);
    case BinaryOp::ReluBackward:
      return launch_binary<BinaryOp::ReluBackward>(a, b, y, n, stream);
    case BinaryOp::TanhBackward:
      return launch_binary<BinaryOp::TanhBackward>(a, b, y, n, stream);
    case BinaryOp::SigmoidBackward:
      return launch_binary<BinaryOp::SigmoidBackward>(a, b, y, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t axpy(float* y, float alpha, const float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  axpy_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, alpha, x, n);
  return cudaGetLastError();
}

template cudaError_t unary<float>(UnaryOp, const float*, float*, float, int64_t, cudaStream_t);
template cudaError_t unary<__nv_bfloat16>(UnaryOp, const __nv_bfloat16*, __nv_bfloat16*, float, int64_t, cudaStream_t);
template cudaError_t binary<float>(BinaryOp, const float*, const float*, float*, int64_t, cudaStream_t);
template cudaError_t binary<__nv_bfloat16>(BinaryOp, const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*,
                                           int64_t, cudaStream_t);

}  // namespace dsmil::kernels
