// CPU optimizer state updates over flat F32 parameter tensors: AdamW with decoupled weight decay (one tensor,
// or a list with the global-norm gradient clip), and the exponential moving average of weights.
#include <cmath>

#include "tensor/cpu/common.h"
#include "tensor/cpu/ops_cpu.h"

namespace dsmil::cpu {

namespace {

// AdamW on n elements with gradient g * grad_scale (scale 1: the gradient as it is).
void adamw_elements(float* p, const float* g, float* m, float* v, int64_t n, const AdamWHyper& h, float grad_scale) {
  const float bias1 = 1.0f - std::pow(h.beta1, static_cast<float>(h.step));
  const float bias2 = 1.0f - std::pow(h.beta2, static_cast<float>(h.step));
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * grad_scale;
    m[i] = h.beta1 * m[i] + (1.0f - h.beta1) * gi;
    v[i] = h.beta2 * v[i] + (1.0f - h.beta2) * gi * gi;
    const float update = (m[i] / bias1) / (std::sqrt(v[i] / bias2) + h.eps);
    p[i] -= h.lr * (update + h.weight_decay * p[i]);
  }
}

void ema_elements(float* e, const float* x, int64_t n, float decay) {
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) e[i] = decay * e[i] + (1.0f - decay) * x[i];
}

}  // namespace

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  adamw_elements(param.f32(), grad.f32(), m.f32(), v.f32(), param.numel(), h, 1.0f);
}

void ema_update(Tensor& ema, const Tensor& value, float decay) {
  ema_elements(ema.f32(), value.f32(), ema.numel(), decay);
}

void multi_tensor_adamw(AdamWTensors& tensors, const std::vector<Tensor>& grads, const AdamWHyper& h,
                        float max_grad_norm, Tensor& grad_norm, const Tensor& /*constants_on_device: CUDA's*/) {
  const size_t count = tensors.params.size();
  // The norm as nn::grad_norm computes it: per-tensor sum_squares added in double.
  float grad_scale = 1.0f;
  if (max_grad_norm > 0.0f) {
    double total = 0.0;
    for (const Tensor& g : grads)
      if (g.defined()) total += sum_squares(g);
    const float norm = static_cast<float>(std::sqrt(total));
    grad_norm.f32()[0] = norm;
    if (norm > max_grad_norm) grad_scale = max_grad_norm / (norm + 1e-6f);
  }
  for (size_t i = 0; i < count; ++i) {
    if (!grads[i].defined()) continue;
    AdamWHyper group = h;
    if (!tensors.decayed[i]) group.weight_decay = 0.0f;
    adamw_elements(tensors.params[i]->f32(), grads[i].f32(), tensors.m[i]->f32(), tensors.v[i]->f32(),
                   tensors.params[i]->numel(), group, grad_scale);
  }
}

void multi_tensor_ema(EmaTensors& tensors, float decay, const Tensor& /*decay_on_device: CUDA's*/) {
  for (size_t i = 0; i < tensors.ema.size(); ++i)
    ema_elements(tensors.ema[i]->f32(), tensors.values[i]->f32(), tensors.ema[i]->numel(), decay);
}

}  // namespace dsmil::cpu
