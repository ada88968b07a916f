// 3-D max pooling over channels-last x[N, D, H, W, C] -> y[N, D', H', W', C] with argmax (I32, the flat
// d*H*W + h*W + w index of each window's winner; padding never wins), and its backward dx[N, D, H, W, C].
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/volume.h"

namespace dsmil::kernels {

template <typename T>
cudaError_t maxpool3d_forward(const T* x, Volume in, Volume out, Window3 window, T* y, int32_t* argmax,
                              cudaStream_t stream);

// Backward, fast: dx_accum[N, D, H, W, C] (fp32) = sum of dy over the windows each position won, by
// atomic adds, so the order of the (rare) sums of three or more windows varies between runs.
template <typename T>
cudaError_t maxpool3d_backward_atomic(const T* dy, const int32_t* argmax, Volume in, Volume out, float* dx_accum,
                                      cudaStream_t stream);

// Backward, deterministic: the same sums, each taken in ascending output order (a stable radix sort of
// the outputs by target position, then one sum per target). Needs `scratch` of the size below;
// in.numel() and out.numel() must be below 2^32.
size_t maxpool3d_backward_sorted_scratch_bytes(Volume in, Volume out);
template <typename T>
cudaError_t maxpool3d_backward_sorted(const T* dy, const int32_t* argmax, Volume in, Volume out, void* scratch,
                                      size_t scratch_bytes, T* dx, cudaStream_t stream);

}  // namespace dsmil::kernels
