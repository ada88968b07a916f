// Plain masked softmax, one thread per bag walking its n instances in three loops (max, sum of
// exponentials, weights and statistics), and the backward in two loops; e, a, de: F32 [B, n].
#include <cfloat>

#include "kernels/plain/masked_softmax_plain.h"

namespace dsmil::kernels::plain {

namespace {

__global__ void masked_softmax_plain_kernel(const float* __restrict__ e, const int32_t* __restrict__ mask, int64_t bags,
                                            int64_t n, float temperature, float* __restrict__ a,
                                            float* __restrict__ stats) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= bags) return;
  const float* eb = e + b * n;
  const int32_t* mb = mask + b * n;
  float* ab = a + b * n;
  float* sb = stats + b * 3;

  float z_max = -FLT_MAX;
  int64_t present = 0;
  for (int64_t i = 0; i < n; ++i)
    if (mb[i] != 0) {
      z_max = fmaxf(z_max, eb[i] / temperature);
      ++present;
    }
  float total = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    if (mb[i] != 0) total += expf(eb[i] / temperature - z_max);
  const float log_total = logf(total);

  // log a_i = z_i - z_max - log(total), so the entropy never takes the log of an underflowed 0.
  float entropy = 0.0f, top = 0.0f, sum_sq = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    float weight = 0.0f;
    if (mb[i] != 0) {
      const float shifted = eb[i] / temperature - z_max;
      weight = expf(shifted) / total;
      entropy -= weight * (shifted - log_total);
      top = fmaxf(top, weight);
      sum_sq += weight * weight;
    }
    ab[i] = weight;
  }
  sb[0] = present == 0 ? 0.0f : entropy;
  sb[1] = present == 0 ? 0.0f : top;
  sb[2] = present == 0 ? 0.0f : 1.0f / sum_sq;
}

__global__ void masked_softmax_backward_plain_kernel(const float* __restrict__ da, const float* __restrict__ a,
                                                     int64_t bags, int64_t n, float temperature,
                                                     float* __restrict__ de) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= bags) return;
  const float* dab = da + b * n;
  const float* ab = a + b * n;
  float* deb = de + b * n;
  float weighted = 0.0f;
  for (int64_t i = 0; i < n; ++i) weighted += ab[i] * dab[i];
  for (int64_t i = 0; i < n; ++i) deb[i] = ab[i] * (dab[i] - weighted) / temperature;
}

unsigned blocks_for(int64_t bags) {
  return static_cast<unsigned>((bags + kBagsPerBlockPlain - 1) / kBagsPerBlockPlain);
}

}  // namespace

cudaError_t masked_softmax_plain(const float* e, const int32_t* mask, int64_t bags, int64_t instances,
                                 float temperature, float* a, float* stats, cudaStream_t stream) {
  if (bags == 0) return cudaSuccess;
  masked_softmax_plain_kernel<<<blocks_for(bags), kBagsPerBlockPlain, 0, stream>>>(e, mask, bags, instances,
                                                                                   temperature, a, stats);
  return cudaGetLastError();
}

cudaError_t masked_softmax_backward_plain(const float* da, const float* a, int64_t bags, int64_t instances,
                                          float temperature, float* de, cudaStream_t stream) {
  if (bags == 0) return cudaSuccess;
  masked_softmax_backward_plain_kernel<<<blocks_for(bags), kBagsPerBlockPlain, 0, stream>>>(da, a, bags, instances,
                                                                                            temperature, de);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels::plain
