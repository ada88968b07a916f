// Space-to-depth over H and W of a channels-last volume, with leading zero padding folded in:
// x[N, D, H, W, C] -> xs[N, D, Hs, Ws, Cs], and its adjoint (the gather back to x's shape).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/volume.h"

namespace dsmil::kernels {

// xs[n, d, g, j, (bh * block_w + bw) * C + c] = x[n, d, block_h * g + bh - pad_h, block_w * j + bw - pad_w, c],
// zero where that index falls outside x and in the channels from block_h * block_w * C up to Cs. A
// convolution of x with stride (s_d, block_h, block_w) and padding (p_d, pad_h, pad_w) equals a stride
// (s_d, 1, 1), padding (p_d, 0, 0) convolution of xs with the filter folded the same way (pad 0).
struct SpaceToDepth {
  Volume x;  // the unfolded volume [N, D, H, W, C]
  int64_t block_h = 1, block_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t folded_h = 0, folded_w = 0, folded_c = 0;  // Hs, Ws, Cs (Cs >= block_h * block_w * C)
  DSMIL_HOST_DEVICE int64_t folded_numel() const { return x.n * x.d * folded_h * folded_w * folded_c; }
};

// xs from x (every element of xs written).
template <typename T>
cudaError_t space_to_depth(const T* x, T* xs, const SpaceToDepth& fold, cudaStream_t stream);
// x from xs: each element of x appears at most once in xs; elements that xs does not hold (rows and
// columns past the last window) are written as zero. Applied to a gradient of xs it gives the gradient of x.
template <typename T>
cudaError_t depth_to_space(const T* xs, T* x, const SpaceToDepth& fold, cudaStream_t stream);

}  // namespace dsmil::kernels
