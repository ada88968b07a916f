// AdamW and EMA updates over n contiguous F32 elements, in place: m, v, param (AdamW) and ema[n];
// one thread per element in a grid-stride loop.
#include "kernels/common.cuh"
#include "kernels/optimizer_updates.h"

namespace dsmil::kernels {

namespace {

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamWStep s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    const float m_new = s.beta1 * m[i] + (1.0f - s.beta1) * g;
    const float v_new = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
    m[i] = m_new;
    v[i] = v_new;
    const float m_hat = m_new / s.bias_correction1;
    const float v_hat = v_new / s.bias_correction2;
    const float p = param[i];
    param[i] = p - s.lr * (m_hat / (sqrtf(v_hat) + s.eps) + s.weight_decay * p);
  }
}

__global__ void ema_kernel(float* __restrict__ ema, const float* __restrict__ value, int64_t n, float decay) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    ema[i] = decay * ema[i] + (1.0f - decay) * value[i];
}

}  // namespace

cudaError_t adamw(float* param, const float* grad, float* m, float* v, int64_t n, AdamWStep step, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(param, grad, m, v, n, step);
  return cudaGetLastError();
}

cudaError_t ema(float* ema_values, const float* value, int64_t n, float decay, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ema_kernel<<<grid_for(n), kThreads, 0, stream>>>(ema_values, value, n, decay);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
