// Masked softmax over each bag's instances with temperature: e[B, n] (F32), mask[B, n] (I32, 0 = absent)
// -> a[B, n] and stats[B, 3] = (entropy, top-1 weight, effective instances 1/sum a^2); and its backward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

cudaError_t masked_softmax(const float* e, const int32_t* mask, int64_t bags, int64_t instances, float temperature,
                           float* a, float* stats, cudaStream_t stream);
// de[b, i] = a[b, i] (da[b, i] - sum_j a[b, j] da[b, j]) / T.
cudaError_t masked_softmax_backward(const float* da, const float* a, int64_t bags, int64_t instances, float temperature,
                                    float* de, cudaStream_t stream);

}  // namespace dsmil::kernels
