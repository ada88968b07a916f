// Bias over the columns of a row-major matrix: y[M, N] = x[M, N] + bias[N], and its gradient
// db[N] = sum over rows of dy[M, N] (fp32, fixed order). x, y, dy: float or bf16; bias, db: float.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

template <typename T>
cudaError_t add_bias(const T* x, const float* bias, T* y, int64_t rows, int64_t cols, cudaStream_t stream);
template <typename T>
cudaError_t bias_backward(const T* dy, float* db, int64_t rows, int64_t cols, cudaStream_t stream);

}  // namespace dsmil::kernels
