// Optimizer state updates over n contiguous F32 elements: AdamW (decoupled weight decay, bias-corrected
// moments m, v) on param[n] from grad[n], and the EMA ema[n] = decay ema + (1 - decay) value[n].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2;  // 1 - beta^t, computed on the host
};

cudaError_t adamw(float* param, const float* grad, float* m, float* v, int64_t n, AdamWStep step, cudaStream_t stream);
cudaError_t ema(float* ema_values, const float* value, int64_t n, float decay, cudaStream_t stream);

}  // namespace dsmil::kernels
