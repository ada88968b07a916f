// Dtype conversion y = dtype(x) (f32 <-> bf16, round to nearest even) and fill y[i] = value, over n
// contiguous elements. Each launcher returns the launch's error (cudaGetLastError).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

cudaError_t convert_f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream);
cudaError_t convert_bf16_to_f32(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t stream);
// T: float, __nv_bfloat16, int32_t.
template <typename T>
cudaError_t fill(T* y, T value, int64_t n, cudaStream_t stream);

}  // namespace dsmil::kernels
