// CPU fused batch norm + ReLU, the reference: y = relu(s[n] BN(x) + residual) over x[N, ..., C], written as
// the composition of this backend's batch norm, add and ReLU that it replaces (s: F32 [N], optional).
#include "tensor/cpu/common.h"
#include "tensor/cpu/ops_cpu.h"

namespace dsmil::cpu {

namespace {

// t[n, ...] * s[n] (drop-path's product); t itself when s is undefined.
Tensor scaled_per_sample(const Tensor& t, const Tensor& sample_factor) {
  if (!sample_factor.defined()) return t;
  const int64_t samples = t.size(0);
  const int64_t per_sample = t.numel() / samples;
  Tensor out = empty_like(t);
  const float* in = t.f32();
  const float* factor = sample_factor.f32();
  float* o = out.f32();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < samples; ++n)
    for (int64_t i = 0; i < per_sample; ++i) o[n * per_sample + i] = in[n * per_sample + i] * factor[n];
  return out;
}

Tensor add_residual_relu(const Tensor& branch, const Tensor& residual) {
  return relu(residual.defined() ? add(branch, residual) : branch);
}

}  // namespace

BatchNormTrainOut batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               Tensor& running_mean, Tensor& running_var, float momentum, float eps,
                                               const Tensor& residual, const Tensor& sample_factor) {
  BatchNormTrainOut out = batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps);
  out.y = add_residual_relu(scaled_per_sample(out.y, sample_factor), residual);
  return out;
}

Tensor batchnorm_relu_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                   const Tensor& running_var, float eps, const Tensor& residual,
                                   const Tensor& sample_factor) {
  const Tensor normalised = batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps);
  return add_residual_relu(scaled_per_sample(normalised, sample_factor), residual);
}

// The training forward's y without residual or sample factor: relu of the same batchnorm_normalise.
Tensor batchnorm_relu_apply(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                            const Tensor& save_invstd) {
  return relu(batchnorm_normalise(x, gamma, beta, save_mean, save_invstd));
}

BatchNormReluGrads batchnorm_relu_backward(const Tensor& dy, const Tensor& y, const Tensor& x, const Tensor& gamma,
                                           const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                           const Tensor& sample_factor, bool residual_grad) {
  // Without y (and so without a residual), BN's output has y's sign where s[n] > 0; where s[n] = 0 the
  // gradient s[n] g is zero whatever the mask.
  const Tensor g = relu_backward(dy, y.defined() ? y : batchnorm_normalise(x, gamma, beta, save_mean, save_invstd));
  BatchNormGrads grads = batchnorm_backward(scaled_per_sample(g, sample_factor), x, gamma, save_mean, save_invstd);
  return {grads.dx, grads.dgamma, grads.dbeta, residual_grad ? g : Tensor()};
}

}  // namespace dsmil::cpu
