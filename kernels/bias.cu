// Bias over the columns of a row-major matrix: y[M, N] = x[M, N] + bias[N], and db[N] = column sums of
// dy[M, N], each column summed by one 32x8 thread tile in a fixed order (deterministic).
#include <cuda_bf16.h>

#include "kernels/bias.h"
#include "kernels/common.cuh"

namespace dsmil::kernels {

namespace {

template <typename T>
__global__ void add_bias_kernel(const T* __restrict__ x, const float* __restrict__ bias, T* __restrict__ y, int64_t n,
                                int64_t cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(to_float(x[i]) + bias[i % cols]);
}

constexpr int kRowLanes = 8;

// blockDim (32, kRowLanes): threadIdx.x picks the column, threadIdx.y strides over the rows.
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ dy, float* __restrict__ db, int64_t rows, int64_t cols) {
  __shared__ float partial[kRowLanes][32];
  const int64_t col = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (col < cols)
    for (int64_t r = threadIdx.y; r < rows; r += kRowLanes) acc += to_float(dy[r * cols + col]);
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    db[col] = total;
  }
}

}  // namespace

template <typename T>
cudaError_t add_bias(const T* x, const float* bias, T* y, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  add_bias_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, bias, y, n, cols);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bias_backward(const T* dy, float* db, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  const dim3 block(32, kRowLanes);
  column_sum_kernel<<<static_cast<unsigned>((cols + 31) / 32), block, 0, stream>>>(dy, db, rows, cols);
  return cudaGetLastError();
}

template cudaError_t add_bias<float>(const float*, const float*, float*, int64_t, int64_t, cudaStream_t);
template cudaError_t add_bias<__nv_bfloat16>(const __nv_bfloat16*, const float*, __nv_bfloat16*, int64_t, int64_t,
                                             cudaStream_t);
template cudaError_t bias_backward<float>(const float*, float*, int64_t, int64_t, cudaStream_t);
template cudaError_t bias_backward<__nv_bfloat16>(const __nv_bfloat16*, float*, int64_t, int64_t, cudaStream_t);

}  // namespace dsmil::kernels
