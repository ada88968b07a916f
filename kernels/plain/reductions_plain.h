// Plain sum of squares, written like the math: *result (device, fp64) = sum over i of x[i]^2 for n
// contiguous elements of T (float or bf16). Bench and GPU tests only; training uses kernels/reductions.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels::plain {

constexpr int kSumSquaresPlainThreads = 256;

// One thread per element adds its square into *result with an fp64 atomicAdd (result zeroed first).
// Every addition lands on one address, so they run one after another: this is what the block
// reduction of kernels/reductions.cu avoids. The order of the additions varies between runs.
template <typename T>
cudaError_t sum_squares_plain(const T* x, int64_t n, double* result, cudaStream_t stream);

}  // namespace dsmil::kernels::plain
