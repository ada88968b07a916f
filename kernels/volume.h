// Plain shape records passed by value to the kernels: a channels-last volume x[N, D, H, W, C] and a 3-D
// window (kernel, stride, zero padding per axis D, H, W). Shared by host launchers and device code.
#pragma once

#include <cstdint>

#ifndef DSMIL_HOST_DEVICE
#if defined(__CUDACC__)
#define DSMIL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DSMIL_HOST_DEVICE inline
#endif
#endif

namespace dsmil::kernels {

struct Volume {
  int64_t n = 0, d = 0, h = 0, w = 0, c = 0;
  DSMIL_HOST_DEVICE int64_t spatial() const { return d * h * w; }
  DSMIL_HOST_DEVICE int64_t numel() const { return n * d * h * w * c; }
};

struct Window3 {
  int kernel[3] = {1, 1, 1};
  int stride[3] = {1, 1, 1};
  int pad[3] = {0, 0, 0};
};

}  // namespace dsmil::kernels
