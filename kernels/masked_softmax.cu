// Masked softmax over instances, one block per bag: e[B, n] / T -> a[B, n], with the bag's attention
// entropy, top-1 weight and effective instance count (stats[B, 3]) computed in the same pass; backward.
#include <cfloat>

#include "kernels/common.cuh"
#include "kernels/masked_softmax.h"

namespace dsmil::kernels {

namespace {

constexpr int kBagThreads = 128;

__global__ void masked_softmax_kernel(const float* __restrict__ e, const int32_t* __restrict__ mask, int64_t n,
                                      float temperature, float* __restrict__ a, float* __restrict__ stats) {
  __shared__ float scratch[32];
  const float* eb = e + blockIdx.x * n;
  const int32_t* mb = mask + blockIdx.x * n;
  float* ab = a + blockIdx.x * n;

  float local_max = -FLT_MAX;
  float local_count = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    if (mb[i] != 0) {
      local_max = fmaxf(local_max, eb[i] / temperature);
      local_count += 1.0f;
    }
  const float z_max = block_max(local_max, scratch, -FLT_MAX);
  const float present = block_sum(local_count, scratch);

  float local_sum = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    if (mb[i] != 0) local_sum += expf(eb[i] / temperature - z_max);
  const float total = block_sum(local_sum, scratch);
  const float log_total = logf(total);

  // a_i = exp(z_i - z_max) / total, so log a_i = z_i - z_max - log(total): no log of an underflowed 0.
  float local_entropy = 0.0f, local_top = 0.0f, local_sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float weight = 0.0f;
    if (mb[i] != 0) {
      const float shifted = eb[i] / temperature - z_max;
      weight = expf(shifted) / total;
      local_entropy -= weight * (shifted - log_total);
      local_top = fmaxf(local_top, weight);
      local_sum_sq += weight * weight;
    }
    ab[i] = weight;
  }
  const float entropy = block_sum(local_entropy, scratch);
  const float top = block_max(local_top, scratch, 0.0f);
  const float sum_sq = block_sum(local_sum_sq, scratch);
  if (threadIdx.x == 0) {
    float* sb = stats + blockIdx.x * 3;
    const bool empty = present == 0.0f;
    sb[0] = empty ? 0.0f : entropy;
    sb[1] = empty ? 0.0f : top;
    sb[2] = empty ? 0.0f : 1.0f / sum_sq;
  }
}

__global__ void masked_softmax_backward_kernel(const float* __restrict__ da, const float* __restrict__ a, int64_t n,
                                               float temperature, float* __restrict__ de) {
  __shared__ float scratch[32];
  const float* dab = da + blockIdx.x * n;
  const float* ab = a + blockIdx.x * n;
  float* deb = de + blockIdx.x * n;
  float local = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) local += ab[i] * dab[i];
  const float weighted = block_sum(local, scratch);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) deb[i] = ab[i] * (dab[i] - weighted) / temperature;
}

}  // namespace

cudaError_t masked_softmax(const float* e, const int32_t* mask, int64_t bags, int64_t instances, float temperature,
                           float* a, float* stats, cudaStream_t stream) {
  if (bags == 0) return cudaSuccess;
  masked_softmax_kernel<<<static_cast<unsigned>(bags), kBagThreads, 0, stream>>>(e, mask, instances, temperature, a,
                                                                                 stats);
  return cudaGetLastError();
}

cudaError_t masked_softmax_backward(const float* da, const float* a, int64_t bags, int64_t instances, float temperature,
                                    float* de, cudaStream_t stream) {
  if (bags == 0) return cudaSuccess;
  masked_softmax_backward_kernel<<<static_cast<unsigned>(bags), kBagThreads, 0, stream>>>(da, a, instances, temperature,
                                                                                          de);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
