// Global average pooling of channels-last x[N, R, C] (R = D*H*W): y[N, C] (fp32) = mean over R, and its
// backward dx[N, R, C] = dy[N, C] / R. x, dx: float or bf16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

template <typename T>
cudaError_t global_avg_pool(const T* x, int64_t batch, int64_t rows, int64_t channels, float* y, cudaStream_t stream);
template <typename T>
cudaError_t global_avg_pool_backward(const float* dy, int64_t batch, int64_t rows, int64_t channels, T* dx,
                                     cudaStream_t stream);

}  // namespace dsmil::kernels
