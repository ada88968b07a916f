// CPU optimizer state updates over flat parameter tensors: AdamW with decoupled weight decay, and the
// exponential moving average of weights.
#include <cmath>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  check_same_shape("adamw_step", param, grad);
  check_same_shape("adamw_step", param, m);
  check_same_shape("adamw_step", param, v);
  const float bias1 = 1.0f - std::pow(h.beta1, static_cast<float>(h.step));
  const float bias2 = 1.0f - std::pow(h.beta2, static_cast<float>(h.step));
  float* p = param.f32();
  const float* g = grad.f32();
  float* mp = m.f32();
  float* vp = v.f32();
  const int64_t n = param.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    mp[i] = h.beta1 * mp[i] + (1.0f - h.beta1) * g[i];
    vp[i] = h.beta2 * vp[i] + (1.0f - h.beta2) * g[i] * g[i];
    const float update = (mp[i] / bias1) / (std::sqrt(vp[i] / bias2) + h.eps);
    p[i] -= h.lr * (update + h.weight_decay * p[i]);
  }
}

void ema_update(Tensor& ema, const Tensor& value, float decay) {
  check_same_shape("ema_update", ema, value);
  float* e = ema.f32();
  const float* x = value.f32();
  const int64_t n = ema.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) e[i] = decay * e[i] + (1.0f - decay) * x[i];
}

}  // namespace dsmil::cpu
