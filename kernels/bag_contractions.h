// Per-bag contractions (F32) with a[B, n], v/q[B, n, F], m[B, F]: weighted_sum y[b, f] = sum_i a v,
// dot y[b, i] = sum_f q m, outer y[b, i, f] = a[b, i] m[b, f]. Each is the others' gradient.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

cudaError_t bag_weighted_sum(const float* a, const float* v, int64_t bags, int64_t instances, int64_t features,
                             float* y, cudaStream_t stream);
cudaError_t bag_dot(const float* q, const float* m, int64_t bags, int64_t instances, int64_t features, float* y,
                    cudaStream_t stream);
cudaError_t bag_outer(const float* a, const float* m, int64_t bags, int64_t instances, int64_t features, float* y,
                      cudaStream_t stream);

}  // namespace dsmil::kernels
