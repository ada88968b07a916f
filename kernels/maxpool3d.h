// 3-D max pooling over channels-last x[N, D, H, W, C] -> y[N, D', H', W', C] with argmax (u8, each window's
// winner as (t * kernel_h + r) * kernel_w + q inside its window; padding never wins), and its backward dx.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/volume.h"

namespace dsmil::kernels {

// One thread per output position and group of channels (16-byte loads when C and the pointers allow).
template <typename T>
cudaError_t maxpool3d_forward(const T* x, Volume in, Volume out, Window3 window, T* y, uint8_t* argmax,
                              cudaStream_t stream);

// dx = sum of dy over the outputs each position won. Gathered: each input position reads the outputs whose
// window covers it and sums, in ascending output order, the dy of those whose argmax names its position in their
// window; so the result is deterministic, written once (no memset, no atomics) and summed in fp32 whatever T is.
template <typename T>
cudaError_t maxpool3d_backward(const T* dy, const uint8_t* argmax, Volume in, Volume out, Window3 window, T* dx,
                               cudaStream_t stream);

}  // namespace dsmil::kernels
