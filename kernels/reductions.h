// Whole-tensor reductions over n contiguous elements of T (float or bf16): the sum of squares in fp64
// and the flag for non-finite elements, one launch each.
//
// The sum's order is fixed by n and x's 16-byte alignment (per-block partial sums, then the last block to
// finish sums them in block order), so reruns are bit-identical. Launches of one op must not overlap (they
// share a device-side count of finished blocks), which the single stream of tensor/cuda guarantees.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// The most blocks either reduction launches: the size of the fp64 `partial` scratch sum_squares needs, in
// elements. 512 blocks of 256 stay resident together on an H100 (132 SMs x 4), so there is no tail wave.
constexpr int kSumSquaresBlocks = 512;

// *result (device memory) = sum of x[i]^2.
template <typename T>
cudaError_t sum_squares(const T* x, int64_t n, double* partial, double* result, cudaStream_t stream);
// *result (device memory) = 1 if some x[i] is NaN or infinite, else 0.
template <typename T>
cudaError_t any_nonfinite(const T* x, int64_t n, int32_t* result, cudaStream_t stream);

}  // namespace dsmil::kernels
