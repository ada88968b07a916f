// Counter-based dropout masks: element i (dropout) or sample i / per_sample (drop_path) of x[n] keeps
// when uniform(seed, offset + counter) >= p, scaled by 1 / (1 - p); y[n] has x's dtype. The seed is *seed_on_device
// where that is not null.
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "base/counter_rng.h"
#include "kernels/random_masks.h"

namespace dsmil::kernels {

namespace {

// counter_divisor 1: one draw per element (dropout); per_sample: one draw per sample (drop_path).
template <typename T>
__global__ void random_mask_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, int64_t counter_divisor,
                                   float p, float keep_scale, uint64_t seed_value,
                                   const uint64_t* __restrict__ seed_on_device, uint64_t offset) {
  const uint64_t seed = seed_on_device ? *seed_on_device : seed_value;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t counter = offset + static_cast<uint64_t>(i / counter_divisor);
    const bool keep = counter_uniform(seed, counter) >= p;
    y[i] = from_float<T>(keep ? to_float(x[i]) * keep_scale : 0.0f);
  }
}

}  // namespace

template <typename T>
cudaError_t dropout(const T* x, T* y, int64_t n, float p, uint64_t seed, const uint64_t* seed_on_device,
                    uint64_t offset, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  random_mask_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n, 1, p, 1.0f / (1.0f - p), seed, seed_on_device,
                                                           offset);
  return cudaGetLastError();
}

template <typename T>
cudaError_t drop_path(const T* x, T* y, int64_t samples, int64_t per_sample, float p, uint64_t seed,
                      const uint64_t* seed_on_device, uint64_t offset, cudaStream_t stream) {
  const int64_t n = samples * per_sample;
  if (n == 0) return cudaSuccess;
  random_mask_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n, per_sample, p, 1.0f / (1.0f - p), seed,
                                                           seed_on_device, offset);
  return cudaGetLastError();
}

template cudaError_t dropout<float>(const float*, float*, int64_t, float, uint64_t, const uint64_t*, uint64_t,
                                    cudaStream_t);
template cudaError_t dropout<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, int64_t, float, uint64_t,
                                            const uint64_t*, uint64_t, cudaStream_t);
template cudaError_t drop_path<float>(const float*, float*, int64_t, int64_t, float, uint64_t, const uint64_t*,
                                      uint64_t, cudaStream_t);
template cudaError_t drop_path<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, int64_t, int64_t, float, uint64_t,
                                              const uint64_t*, uint64_t, cudaStream_t);

}  // namespace dsmil::kernels
