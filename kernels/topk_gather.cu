// Top-k selection over each bag's unmasked instances by rank counting (one block per bag, O(n^2) compares,
// n is a bag size), gather_mean y[B, F] over the selected rows of x[B, n, F], and its backward dx[B, n, F].
#include "kernels/common.cuh"
#include "kernels/topk_gather.h"

namespace dsmil::kernels {

namespace {

constexpr int kBagThreads = 128;

// Instance i's rank is the number of unmasked j that come before it (larger score, or equal and lower
// index); ranks are distinct, so each rank < K fills exactly one slot.
__global__ void topk_kernel(const float* __restrict__ score, const int32_t* __restrict__ mask, int64_t n, int64_t k,
                            int32_t* __restrict__ idx) {
  const float* sb = score + blockIdx.x * n;
  const int32_t* mb = mask + blockIdx.x * n;
  int32_t* ib = idx + blockIdx.x * k;
  for (int64_t slot = threadIdx.x; slot < k; slot += blockDim.x) ib[slot] = -1;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (mb[i] == 0) continue;
    const float s = sb[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < n && rank < k; ++j)
      if (mb[j] != 0 && (sb[j] > s || (sb[j] == s && j < i))) ++rank;
    if (rank < k) ib[rank] = static_cast<int32_t>(i);
  }
}

__device__ __forceinline__ int64_t valid_count(const int32_t* ib, int64_t k) {
  int64_t count = 0;
  for (int64_t j = 0; j < k; ++j) count += ib[j] >= 0;
  return count;
}

__global__ void gather_mean_kernel(const float* __restrict__ x, const int32_t* __restrict__ idx, int64_t bags,
                                   int64_t n, int64_t k, int64_t features, float* __restrict__ y) {
  const int64_t total = bags * features;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = t / features, f = t % features;
    const int32_t* ib = idx + b * k;
    const int64_t count = valid_count(ib, k);
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j)
      if (ib[j] >= 0) acc += x[(b * n + ib[j]) * features + f];
    y[t] = count > 0 ? acc / static_cast<float>(count) : 0.0f;
  }
}

__global__ void gather_mean_backward_kernel(const float* __restrict__ dy, const int32_t* __restrict__ idx, int64_t bags,
                                            int64_t n, int64_t k, int64_t features, float* __restrict__ dx) {
  const int64_t total = bags * n * features;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t f = t % features, i = (t / features) % n, b = t / (features * n);
    const int32_t* ib = idx + b * k;
    bool selected = false;
    for (int64_t j = 0; j < k; ++j) selected |= ib[j] == i;
    dx[t] = selected ? dy[b * features + f] / static_cast<float>(valid_count(ib, k)) : 0.0f;
  }
}

}  // namespace

cudaError_t topk_indices(const float* score, const int32_t* mask, int64_t bags, int64_t instances, int64_t k,
                         int32_t* idx, cudaStream_t stream) {
  if (bags == 0 || k == 0) return cudaSuccess;
  topk_kernel<<<static_cast<unsigned>(bags), kBagThreads, 0, stream>>>(score, mask, instances, k, idx);
  return cudaGetLastError();
}

cudaError_t gather_mean(const float* x, const int32_t* idx, int64_t bags, int64_t instances, int64_t k,
                        int64_t features, float* y, cudaStream_t stream) {
  const int64_t total = bags * features;
  if (total == 0) return cudaSuccess;
  gather_mean_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, idx, bags, instances, k, features, y);
  return cudaGetLastError();
}

cudaError_t gather_mean_backward(const float* dy, const int32_t* idx, int64_t bags, int64_t instances, int64_t k,
                                 int64_t features, float* dx, cudaStream_t stream) {
  const int64_t total = bags * instances * features;
  if (total == 0) return cudaSuccess;
  gather_mean_backward_kernel<<<grid_for(total), kThreads, 0, stream>>>(dy, idx, bags, instances, k, features, dx);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
