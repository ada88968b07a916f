// Counter-based dropout masks (base/counter_rng.h), identical to the CPU backend's bit for bit:
// dropout keeps x[i] when uniform(seed, offset + i) >= p; drop_path keeps sample n of x[N, ...] when
// uniform(seed, offset + n) >= p. Kept values are scaled by 1 / (1 - p), p in [0, 1). x, y: float or bf16.
// seed_on_device (may be null): the seed is the u64 there when the kernel runs, not `seed`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

template <typename T>
cudaError_t dropout(const T* x, T* y, int64_t n, float p, uint64_t seed, const uint64_t* seed_on_device,
                    uint64_t offset, cudaStream_t stream);
template <typename T>
cudaError_t drop_path(const T* x, T* y, int64_t samples, int64_t per_sample, float p, uint64_t seed,
                      const uint64_t* seed_on_device, uint64_t offset, cudaStream_t stream);

}  // namespace dsmil::kernels
