// y = conv3d(x, w), stride 1, for bf16 x[N, D, H, W, 16] and w[K, T, R, S, 16] with K a multiple of 64:
// an implicit GEMM on tensor cores (fp32 accumulation) into bf16 y[N, Do, Ho, Wo, K], zero padding per axis;
// x, w and y 16-byte aligned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/volume.h"

namespace dsmil::kernels {

// The channels this kernel takes: one 16-deep step of the tensor-core product per filter tap. The stem's
// space-to-depth fold has this many (tensor/cuda/conv3d.cpp).
constexpr int64_t kConv16Channels = 16;

struct Conv16Forward {
  Volume x;                    // [N, D, H, W, 16]
  int64_t k = 0;               // output channels, a multiple of 64
  int taps[3] = {1, 1, 1};     // T, R, S
  int pad[3] = {0, 0, 0};      // zero padding of D, H, W
  int64_t out[3] = {0, 0, 0};  // Do, Ho, Wo
};

// Whether the kernel takes this problem on the current device (channels, K, and the shared memory that
// the filter and the input tile need); the launcher returns cudaErrorInvalidValue otherwise.
bool conv16_forward_supported(const Conv16Forward& p);

cudaError_t conv16_forward(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, const Conv16Forward& p,
                           cudaStream_t stream);

}  // namespace dsmil::kernels
