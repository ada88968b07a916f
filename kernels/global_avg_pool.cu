// Global average pooling of channels-last x[N, R, C] -> y[N, C] (fp32): one 32-channel x 8-row tile per
// (channel group, sample), summed in a fixed order; backward spreads dy[N, C] / R over dx[N, R, C].
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "kernels/global_avg_pool.h"

namespace dsmil::kernels {

namespace {

constexpr int kRowLanes = 8;

// grid (channel tiles, N), block (32, kRowLanes).
template <typename T>
__global__ void global_avg_pool_kernel(const T* __restrict__ x, int64_t rows, int64_t channels, float* __restrict__ y) {
  __shared__ float lane_sums[kRowLanes][32];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const T* sample = x + blockIdx.y * rows * channels;
  float acc = 0.0f;
  if (c < channels)
    for (int64_t r = threadIdx.y; r < rows; r += kRowLanes) acc += to_float(sample[r * channels + c]);
  lane_sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += lane_sums[lane][threadIdx.x];
    y[blockIdx.y * channels + c] = total / static_cast<float>(rows);
  }
}

template <typename T>
__global__ void global_avg_pool_backward_kernel(const float* __restrict__ dy, int64_t rows, int64_t channels,
                                                int64_t total, T* __restrict__ dx) {
  const float inv_rows = 1.0f / static_cast<float>(rows);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    const int64_t n = i / (rows * channels);
    dx[i] = from_float<T>(dy[n * channels + c] * inv_rows);
  }
}

}  // namespace

template <typename T>
cudaError_t global_avg_pool(const T* x, int64_t batch, int64_t rows, int64_t channels, float* y, cudaStream_t stream) {
  if (batch == 0 || channels == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((channels + 31) / 32), static_cast<unsigned>(batch));
  global_avg_pool_kernel<<<grid, dim3(32, kRowLanes), 0, stream>>>(x, rows, channels, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t global_avg_pool_backward(const float* dy, int64_t batch, int64_t rows, int64_t channels, T* dx,
                                     cudaStream_t stream) {
  const int64_t total = batch * rows * channels;
  if (total == 0) return cudaSuccess;
  global_avg_pool_backward_kernel<<<grid_for(total), kThreads, 0, stream>>>(dy, rows, channels, total, dx);
  return cudaGetLastError();
}

template cudaError_t global_avg_pool<float>(const float*, int64_t, int64_t, int64_t, float*, cudaStream_t);
template cudaError_t global_avg_pool<__nv_bfloat16>(const __nv_bfloat16*, int64_t, int64_t, int64_t, float*,
                                                    cudaStream_t);
template cudaError_t global_avg_pool_backward<float>(const float*, int64_t, int64_t, int64_t, float*, cudaStream_t);
template cudaError_t global_avg_pool_backward<__nv_bfloat16>(const float*, int64_t, int64_t, int64_t, __nv_bfloat16*,
                                                             cudaStream_t);

}  // namespace dsmil::kernels
