// Whole-tensor reductions over n contiguous elements of T (float or bf16): the sum of squares in fp64
// (fixed order: per-block partial sums, then one block sums them) and the count of non-finite elements.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// Size of the fp64 `partial` scratch sum_squares needs, in elements.
constexpr int kSumSquaresBlocks = 1024;

// *result (device memory) = sum of x[i]^2.
template <typename T>
cudaError_t sum_squares(const T* x, int64_t n, double* partial, double* result, cudaStream_t stream);
// *result (device memory) = 1 if some x[i] is NaN or infinite, else 0.
template <typename T>
cudaError_t any_nonfinite(const T* x, int64_t n, int32_t* result, cudaStream_t stream);

}  // namespace dsmil::kernels
