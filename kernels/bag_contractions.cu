// Per-bag contractions over a[B, n], v/q[B, n, F], m[B, F]: weighted_sum y[B, F] (thread per (b, f), loop
// over i), dot y[B, n] (warp per (b, i), shuffle sum over f), outer y[B, n, F] (elementwise).
#include "kernels/bag_contractions.h"
#include "kernels/common.cuh"

namespace dsmil::kernels {

namespace {

__global__ void weighted_sum_kernel(const float* __restrict__ a, const float* __restrict__ v, int64_t bags, int64_t n,
                                    int64_t features, float* __restrict__ y) {
  const int64_t total = bags * features;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = t / features, f = t % features;
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += a[b * n + i] * v[(b * n + i) * features + f];
    y[t] = acc;
  }
}

__global__ void dot_kernel(const float* __restrict__ q, const float* __restrict__ m, int64_t bags, int64_t n,
                           int64_t features, float* __restrict__ y) {
  const int64_t warps_total = bags * n;
  const int64_t warp_stride = int64_t(gridDim.x) * blockDim.x / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; row < warps_total; row += warp_stride) {
    const int64_t b = row / n;
    float acc = 0.0f;
    for (int64_t f = lane; f < features; f += 32) acc += q[row * features + f] * m[b * features + f];
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
  }
}

__global__ void outer_kernel(const float* __restrict__ a, const float* __restrict__ m, int64_t n, int64_t features,
                             int64_t total, float* __restrict__ y) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t f = t % features, row = t / features, b = row / n;
    y[t] = a[row] * m[b * features + f];
  }
}

}  // namespace

cudaError_t bag_weighted_sum(const float* a, const float* v, int64_t bags, int64_t instances, int64_t features,
                             float* y, cudaStream_t stream) {
  const int64_t total = bags * features;
  if (total == 0) return cudaSuccess;
  weighted_sum_kernel<<<grid_for(total), kThreads, 0, stream>>>(a, v, bags, instances, features, y);
  return cudaGetLastError();
}

cudaError_t bag_dot(const float* q, const float* m, int64_t bags, int64_t instances, int64_t features, float* y,
                    cudaStream_t stream) {
  const int64_t rows = bags * instances;
  if (rows == 0) return cudaSuccess;
  dot_kernel<<<grid_for(rows * 32), kThreads, 0, stream>>>(q, m, bags, instances, features, y);
  return cudaGetLastError();
}

cudaError_t bag_outer(const float* a, const float* m, int64_t bags, int64_t instances, int64_t features, float* y,
                      cudaStream_t stream) {
  const int64_t total = bags * instances * features;
  if (total == 0) return cudaSuccess;
  outer_kernel<<<grid_for(total), kThreads, 0, stream>>>(a, m, instances, features, total, y);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
