// Top-k pooling over bags: idx[B, K] = the K unmasked instances of largest score[B, n] (descending, ties
// to the lower index, -1 past the bag's count); y[B, F] = mean of x[B, n, F] over them; and its backward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

cudaError_t topk_indices(const float* score, const int32_t* mask, int64_t bags, int64_t instances, int64_t k,
                         int32_t* idx, cudaStream_t stream);
cudaError_t gather_mean(const float* x, const int32_t* idx, int64_t bags, int64_t instances, int64_t k,
                        int64_t features, float* y, cudaStream_t stream);
// dx[b, i, f] = dy[b, f] / K_b where i is one of the bag's valid idx, else 0.
cudaError_t gather_mean_backward(const float* dy, const int32_t* idx, int64_t bags, int64_t instances, int64_t k,
                                 int64_t features, float* dx, cudaStream_t stream);

}  // namespace dsmil::kernels
